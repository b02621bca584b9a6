"""The processes of a multi-host sweep acting as one: process 0 alone writes the shared files,
every process takes process 0's decisions, and a failed write there stops them all.

On one process every helper here is a plain write or a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from marl_jax.errors import MarlJaxError
from marl_jax.files import atomic_write_text

__all__ = [
    "SweepRunError",
    "disk_error",
    "first_line",
    "is_writer",
    "process_0_value",
    "process_0_writes",
    "write",
]


class SweepRunError(MarlJaxError, RuntimeError):
    """A sweep that cannot start, continue or write its outputs."""


def is_writer() -> bool:
    """Whether this process writes the sweep's shared files (process 0)."""
    return jax.process_index() == 0


def process_0_value(value: Any) -> Any:
    """Process 0's ``value`` on every process (the same decision everywhere)."""
    if jax.process_count() == 1:
        return value
    return multihost_utils.broadcast_one_to_all(value)


def first_line(err: BaseException) -> str:
    """The first line of what went wrong."""
    text = getattr(err, "strerror", None) or str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def disk_error(where: Path, what: str, last_good: str) -> SweepRunError:
    """The one-line stop for a write that failed: what, where, and where a resume starts."""
    return SweepRunError(
        f"{where}: {what}; free space or fix permissions, then --resume ({last_good})"
    )


def write(path: Path, text: str, last_good: str) -> None:
    """Atomic write by process 0; a full or unwritable disk stops the sweep in one line."""
    if not is_writer():
        return
    try:
        atomic_write_text(path, text)
    except OSError as err:
        raise disk_error(path, f"cannot write ({err.strerror or err})", last_good) from None


def _stop_together(failed: bool) -> None:
    """Every process learns whether process 0's writes failed, and the others stop too
    (else they would wait for it in their next collective)."""
    if jax.process_count() > 1 and bool(process_0_value(np.int32(failed))) and not is_writer():
        raise SweepRunError(
            "process 0 could not write the sweep's outputs (its own error says why); fix "
            "that, then rerun every process with --resume"
        )


@contextlib.contextmanager
def process_0_writes() -> Iterator[None]:
    """Wraps the writes only process 0 makes: a failure there stops every process."""
    try:
        yield
    except BaseException:
        _stop_together(True)
        raise
    _stop_together(False)
