"""``returns.csv``, every command's per-bar record: one row per evaluated bar.

Columns: ``timestamp`` (the bar the position is set at; its return is earned over the next
bar), ``fold`` (0 for a single split), ``instrument`` (the bar file's name, or ``synthetic``),
``position`` (the policy's), then the net return (log, after costs) of ``policy`` and of each
baseline at that bar (``oracle`` among them where the bar file was planted: ``python -m
marl_jax.plant``; empty for the rows of an instrument that was not).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from marl_jax.env import evaluate
from marl_jax.files import atomic_write_text
from marl_jax.run.setup import SYNTHETIC

__all__ = [
    "RETURNS_CSV",
    "agent_names",
    "eval_arrays",
    "instrument_name",
    "returns_frame",
    "write_returns_csv",
]

RETURNS_CSV = "returns.csv"


def agent_names(arrays: Mapping) -> list[str]:
    """``policy`` first, then the baselines in the order the evaluator gave them."""
    names = [k for k in arrays if k != "bar_index"]
    return ["policy"] + [k for k in names if k != "policy"]


def instrument_name(data: str | None) -> str:
    """The instrument name of a bar file (its file name), or of the synthetic market."""
    return Path(data).name if data else SYNTHETIC


def eval_arrays(runs: Mapping[str, evaluate.EvalRun]) -> dict:
    """The per-bar arrays of evaluations by name (``policy`` among them): ``bar_index`` and
    ``{name: {rewards, positions, pnl}}``, as the walk-forward keeps a fold's."""
    out: dict = {"bar_index": runs["policy"].bar_index}
    for name, r in runs.items():
        out[name] = {"rewards": r.rewards, "positions": r.positions, "pnl": r.pnl}
    return out


def returns_frame(
    folds: Sequence[tuple[int, Mapping]], timestamps: np.ndarray, instrument: str = SYNTHETIC
) -> pd.DataFrame:
    """The rows (see the module docstring) of ``folds``: ``(fold number, arrays)`` pairs of
    :func:`eval_arrays`' shape, one instrument's, whose bars' timestamps are ``timestamps``."""
    frames = []
    for fold, arrays in folds:
        idx = arrays["bar_index"]
        cols = {
            "timestamp": pd.to_datetime(timestamps[idx]),
            "fold": np.full(len(idx), int(fold)),
            "instrument": instrument,
            "position": arrays["policy"]["positions"],
        }
        cols.update({name: arrays[name]["rewards"] for name in agent_names(arrays)})
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def write_returns_csv(path: Path, frame: pd.DataFrame) -> Path:
    """Writes ``frame`` as ``returns.csv`` at ``path`` (atomically)."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.10g")
    atomic_write_text(path, buffer.getvalue())
    return path
