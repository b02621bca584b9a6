"""How to run a sweep (where, resume or not, progress, exports, devices): the options every part
of a sweep reads; what to sweep is the config and the sweep spec."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax

__all__ = ["SweepOptions"]


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep (not what: that is the config and the sweep spec)."""

    out: Path
    resume: bool = False
    progress: bool = True
    export_top: int = 1
    members_per_device: int | None = None
    devices: Sequence[jax.Device] | None = None
