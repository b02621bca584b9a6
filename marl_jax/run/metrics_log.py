"""``metrics.jsonl``, the one-line-per-update log of a run or a sweep: reading it, trimming it
back to a checkpoint on resume, and the summary both report (the reward over the last tenth)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from marl_jax.files import atomic_write_text

__all__ = ["metrics_lines", "read_metrics_log", "tenth_mean", "to_floats", "trim_metrics_log"]


def read_metrics_log(path: Path, up_to: int | None = None) -> list[dict]:
    """Records of ``metrics.jsonl`` (those with ``update <= up_to`` when given), up to the
    first line cut by a kill."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill: everything after it is unreliable
        if up_to is None or row.get("update", 0) <= up_to:
            rows.append(row)
    return rows


def metrics_lines(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` as lines of ``metrics.jsonl``."""
    return "".join(json.dumps(row) + "\n" for row in rows)


def trim_metrics_log(
    path: Path,
    keep: Callable[[dict], bool],
    write: Callable[[Path, str], Any] | None = atomic_write_text,
) -> list[dict]:
    """The records of ``path`` that ``keep`` accepts; ``write(path, text)`` rewrites the file
    to hold just those when it differs (a resume drops what was logged after its checkpoint).
    ``write=None`` only reads (a process that does not own the file)."""
    rows = [row for row in read_metrics_log(path) if keep(row)]
    text = metrics_lines(rows)
    if write is not None and (not path.is_file() or path.read_text() != text):
        write(path, text)
    return rows


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """One update's metrics as Python floats."""
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


def tenth_mean(values: Sequence[float], first: bool = False) -> float:
    """The mean of the last (``first``: the first) tenth of ``values``, at least one value;
    NaN when there are none. Runs report and sweeps rank their reward this way."""
    if not values:
        return math.nan
    k = max(1, len(values) // 10)
    return float(np.mean(values[:k] if first else values[-k:]))
