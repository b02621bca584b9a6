"""Bridge between the original PyTorch Strategic MARL checkpoints and marl-jax (needs torch).

PyTorch is an optional extra (``pip install 'marl-jax[torch]'``). ``import bridge`` itself
imports neither torch nor JAX: the names below are loaded on first use, and without torch that
use raises an ``ImportError`` whose one-line message names the extra.
"""

from __future__ import annotations

import importlib
from typing import Any

from marl_jax.errors import MarlJaxError

TORCH_MISSING = "the bridge needs PyTorch: pip install 'marl-jax[torch]'"


class BridgeError(MarlJaxError, ValueError):
    """A checkpoint or state dict that cannot be converted; the message is one line."""


_LAZY = {
    "StrategicCheckpoint": "bridge.convert",
    "flax_to_torch": "bridge.convert",
    "load_pt_checkpoint": "bridge.convert",
    "new_checkpoint": "bridge.convert",
    "save_pt_checkpoint": "bridge.convert",
    "torch_to_flax": "bridge.convert",
    "read_pt": "bridge.pt_file",
}

__all__ = ["TORCH_MISSING", "BridgeError", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
