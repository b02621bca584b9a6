"""JAX's persistent compilation cache for the command lines, on by default.

The cache lives in ``$JAX_COMPILATION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/marl-jax/xla``
(``~/.cache/marl-jax/xla``). Set ``MARL_JAX_NO_COMPILATION_CACHE=1`` to turn it off.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "enable_compilation_cache"]


def cache_dir() -> Path | None:
    """The folder the command lines cache compiled programs in, or None when turned off."""
    if os.environ.get("MARL_JAX_NO_COMPILATION_CACHE", "").strip() not in ("", "0"):
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "marl-jax" / "xla"


def enable_compilation_cache() -> Path | None:
    """Points JAX's persistent compilation cache at :func:`cache_dir`; returns the folder."""
    import jax

    path = cache_dir()
    if path is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path
