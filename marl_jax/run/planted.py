"""Planted bar files on disk: writing one with its sidecar, and reading the oracle back.

A bar file ``OUT`` written by ``python -m marl_jax.plant`` has a sidecar ``OUT.plant.json``
beside it (the file's full name plus ``.plant.json``, e.g. ``bars.csv.plant.json``)::

    {
      "format": "marl-jax plant 1",
      "version": package version,
      "recipe": {"signal", "strength", "span", "sigma_span", "warmup_bars", "formula",
                 "z", "sigma", "planted"},
      "input": {"file": IN's name, "sha256": ...},
      "output": {"file": OUT's name, "sha256": ...},
      "oracle": {"cost_bps", "position", and every metric of marl_jax.metrics.summary over
                 the whole file, plus gross_sharpe},
      "timestamp": [ISO time of each bar],
      "s": [s[t] of each bar]
    }

Where a run's bar file has a sidecar, :func:`read_oracle` gives its ``s`` aligned with the bars
the run loaded, and the reports add the ``oracle`` baseline (``sign(s)``) and the policy's
``capture``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from marl_jax import __version__
from marl_jax.env.data import Bars, BarTable
from marl_jax.env.plant import FORMULAS, SIGMA_SPAN, Planted, oracle_summary, warmup_bars
from marl_jax.errors import MarlJaxError
from marl_jax.files import atomic_write_text, atomic_write_with, sha256_of

__all__ = [
    "FORMAT",
    "SIDECAR_SUFFIX",
    "PlantError",
    "check_output",
    "read_oracle",
    "sidecar_path",
    "write_planted",
]

FORMAT = "marl-jax plant 1"
SIDECAR_SUFFIX = ".plant.json"
_CSV = (".csv", ".txt", ".tsv")
_PARQUET = (".parquet", ".pq")
_PER_BAR = ("timestamp", "s")


class PlantError(MarlJaxError):
    """A problem with a plant's input, output or sidecar (one line)."""


def sidecar_path(data: str | Path) -> Path:
    """The sidecar of the bar file ``data``: ``data`` + ``.plant.json``."""
    data = Path(data)
    return data.with_name(data.name + SIDECAR_SUFFIX)


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _CSV + _PARQUET:
        raise PlantError(f"{path}: unsupported file type {path.suffix!r}; name it .csv or .parquet")
    return suffix


def check_output(out: str | Path) -> Path:
    """``out`` when it can be written: a known suffix, its folder exists, not a folder itself."""
    out = Path(out)
    _suffix(out)
    if not out.parent.is_dir():
        raise PlantError(f"{out}: folder {out.parent} does not exist; create it or choose another")
    if out.is_dir():
        raise PlantError(f"{out}: is a folder; name a file")
    return out


def _planted_frame(table: BarTable, planted: Bars) -> pd.DataFrame:
    """The file's table with the open, high, low and close columns replaced."""
    frame = table.frame.copy()
    for field in ("open", "high", "low", "close"):
        frame[table.columns[field]] = getattr(planted, field)
    if table.index is not None:
        frame = frame.set_index(table.index)
    return frame


def _write_frame(frame: pd.DataFrame, out: Path, keep_index: bool) -> None:
    """Writes ``frame`` as CSV or Parquet by ``out``'s suffix, atomically."""
    if _suffix(out) in _PARQUET:
        atomic_write_with(out, lambda fh: frame.to_parquet(fh, index=keep_index))
        return
    buffer = io.StringIO()
    frame.to_csv(buffer, index=keep_index, sep="\t" if out.suffix.lower() == ".tsv" else ",")
    atomic_write_text(out, buffer.getvalue())


def write_planted(
    table: BarTable,
    planted: Planted,
    recipe: Mapping,
    source: str | Path,
    out: str | Path,
    cost_bps: float,
) -> dict:
    """Writes the planted bars to ``out`` (the input's columns and format by ``out``'s suffix)
    and then its sidecar (each atomically); returns the sidecar's record. ``recipe``: signal,
    strength and span."""
    out = check_output(out)
    if out.resolve() == Path(source).resolve():
        raise PlantError(f"{out}: is the input file; write the planted bars to another file")
    source_sha256 = sha256_of(source)
    _write_frame(_planted_frame(table, planted.bars), out, table.index is not None)
    signal = recipe["signal"]
    oracle = oracle_summary(planted.bars, planted.signal, cost_bps)
    record = {
        "format": FORMAT,
        "version": __version__,
        "recipe": {
            **recipe,
            "sigma_span": SIGMA_SPAN,
            "warmup_bars": warmup_bars(recipe["span"]),
            "formula": FORMULAS[signal],
            "z": "(log c'[t] - log c'[t - span]) / (sigma[t] * sqrt(span))",
            "sigma": f"EWMA of r'^2, alpha = 2 / ({SIGMA_SPAN} + 1), started at r'[1]^2",
            "planted": "r'[t+1] = r[t+1] + strength * sigma[t] * s[t]",
        },
        "input": {"file": Path(source).name, "sha256": source_sha256},
        "output": {"file": out.name, "sha256": sha256_of(out)},
        "oracle": {"cost_bps": cost_bps, "position": "sign(s[t]) held to bar t + 1", **oracle},
        "timestamp": [str(t) for t in np.datetime_as_string(planted.bars.timestamp, unit="ns")],
        "s": [float(x) for x in planted.signal],
    }
    atomic_write_text(sidecar_path(out), _sidecar_text(record))
    return record


def _sidecar_text(record: Mapping) -> str:
    """The sidecar as JSON: the recipe indented, each per-bar list on one line."""
    head = {k: v for k, v in record.items() if k not in _PER_BAR}
    lines = json.dumps(head, indent=2)[:-2]
    tail = "".join(f',\n  "{k}": {json.dumps(record[k])}' for k in _PER_BAR)
    return lines + tail + "\n}\n"


def read_oracle(data: str | Path, bars: Bars) -> np.ndarray | None:
    """``s[t]`` of the plant behind the bar file ``data``, one per bar of ``bars`` (the bars
    loaded from it), or None where ``data`` has no sidecar. Raises a one-line
    :class:`PlantError` when the sidecar is not the file's (the file changed since) or its bars
    are not those loaded (resampled to another interval)."""
    side = sidecar_path(data)
    if not side.is_file():
        return None
    try:
        record = json.loads(side.read_text())
        expected = record["output"]["sha256"]
        stamps = np.array(record["timestamp"], dtype="datetime64[ns]")
        s = np.asarray(record["s"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as err:
        raise PlantError(
            f"{side}: not a plant's sidecar ({err}); remove it or plant again"
        ) from None
    if record.get("format") != FORMAT or s.shape != stamps.shape:
        raise PlantError(f"{side}: not a {FORMAT!r} sidecar; remove it or plant again")
    if sha256_of(data) != expected:
        raise PlantError(
            f"{side}: {Path(data).name} changed since it was planted; plant it again or remove "
            "the sidecar"
        )
    if len(stamps) != len(bars) or not np.array_equal(stamps, bars.timestamp):
        raise PlantError(
            f"{side}: its {len(stamps)} bars are not the {len(bars)} loaded from "
            f"{Path(data).name} (resampled to another interval?); plant at the run's interval"
        )
    if not np.all(np.isfinite(s)) or np.any(np.abs(s) > 1):
        raise PlantError(f"{side}: s holds values outside [-1, 1]; plant again")
    return s
