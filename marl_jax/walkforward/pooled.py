"""The walk-forward's pooled outputs: ``returns.csv``, ``report.json``, ``equity_curve.png`` and
the printed table, all from the finished folds' per-bar test arrays.

``returns.csv`` has one row per test bar: ``fold``, ``instrument`` (the bar file's name, or
``synthetic``), ``timestamp`` (the bar the position is set at; its return is earned over the
next bar), ``position`` (the policy's), then the net return
(log, after costs) of ``policy`` and of each baseline at that bar (``oracle`` among them where
the bar file was planted: ``python -m marl_jax.plant``; empty for the rows of an instrument
that was not). The pooled metrics are those of the stitched rows; each fold starts flat, as the
environment does. With an oracle, ``report.json`` holds the policy's ``capture`` (its net active
IR over the oracle's), pooled and per fold, and the printed table a capture line under each.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from marl_jax.env.evaluate import ORACLE
from marl_jax.files import atomic_write_text
from marl_jax.run.plots import plot_equity_curves
from marl_jax.run.report import capture_line, metrics_table, stitched_summary, with_capture
from marl_jax.run.setup import SYNTHETIC

__all__ = [
    "RETURNS_CSV",
    "format_table",
    "gate_record",
    "position_checks",
    "instrument_name",
    "pooled_metrics",
    "returns_frame",
    "write_outputs",
]

RETURNS_CSV = "returns.csv"
REPORT_JSON = "report.json"
EQUITY_PNG = "equity_curve.png"


def _names(arrays: Mapping) -> list[str]:
    """``policy`` first, then the baselines in the order the evaluator gave them."""
    names = [k for k in arrays if k != "bar_index"]
    return ["policy"] + [k for k in names if k != "policy"]


def instrument_name(data: str | None) -> str:
    """The instrument name of a bar file (its file name), or of the synthetic market."""
    return Path(data).name if data else SYNTHETIC


def returns_frame(
    folds: Sequence[tuple[dict, dict]], timestamps: np.ndarray, instrument: str = SYNTHETIC
) -> pd.DataFrame:
    """One row per test bar of every fold (see the module docstring) of ``instrument``."""
    frames = []
    for summary, arrays in folds:
        idx = arrays["bar_index"]
        cols = {
            "fold": np.full(len(idx), summary["fold"]),
            "instrument": instrument,
            "timestamp": pd.to_datetime(timestamps[idx]),
            "position": arrays["policy"]["positions"],
        }
        cols.update({name: arrays[name]["rewards"] for name in _names(arrays)})
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def pooled_metrics(
    folds: Sequence[tuple[dict, dict]],
    periods_per_year: float,
    cost_bps: float,
    trial_sharpes: Sequence[float] | None = None,
) -> dict:
    """The report's metrics (:func:`marl_jax.metrics.summary`, against buy-and-hold) of the
    stitched test folds, for the policy and each baseline; the policy's DSR deflates for
    ``trial_sharpes`` (the trials it was chosen among)."""
    return stitched_summary(
        [arrays for _, arrays in folds], periods_per_year, cost_bps, trial_sharpes
    )


def position_checks(folds: Sequence[tuple[dict, dict]]) -> dict:
    """The honesty checks of a policy's test positions: ``one_sign_folds`` (the folds in which
    the position never changes sign, counting flat as a sign: buy-and-hold scaled, or its
    short, there; a positive pooled IR from such folds is which sign each held, not timing),
    and where the oracle ran, ``oracle_correlation``: the correlation of the stitched positions
    with the oracle's (``sign(s)`` of the planted signal; None where either is constant).
    ``benchmarks/planted.py``'s "timing" correlates them with ``s`` itself instead."""
    one_sign = [
        int(f["fold"])
        for f, arrays in folds
        if np.unique(np.sign(arrays["policy"]["positions"])).size == 1
    ]
    out: dict = {"one_sign_folds": {"count": len(one_sign), "of": len(folds), "folds": one_sign}}
    if all(ORACLE in arrays for _, arrays in folds):
        policy = np.concatenate([a["policy"]["positions"] for _, a in folds]).astype(np.float64)
        oracle = np.concatenate([a[ORACLE]["positions"] for _, a in folds]).astype(np.float64)
        varies = policy.std() > 0 and oracle.std() > 0
        out["oracle_correlation"] = float(np.corrcoef(policy, oracle)[0, 1]) if varies else None
    return out


def gate_record(folds: Sequence[Mapping]) -> dict:
    """``{"gate_held": [what each fold held]}`` where the folds were gated (``--gate``: a
    baseline's name, or ``"checkpoint"``), else ``{}``."""
    if not any("gate" in f["selection"] for f in folds):
        return {}
    return {"gate_held": [f["selection"].get("gate", {}).get("held") for f in folds]}


def format_table(report: Mapping) -> str:
    """Each fold's and the pooled test metrics as a text table (with several instruments, each
    instrument's folds stitched too, before the pooled rows)."""
    blocks = [(f"fold {f['fold']}", f["test"]) for f in report["folds"]]
    blocks += list(report.get("instruments", {}).items())
    blocks.append(("pooled", report["pooled"]))
    lines: list[str] = []
    for label, by_name in blocks:
        lines += [*([""] if lines else []), *metrics_table(by_name, label)]
        capture = with_capture(by_name["policy"], by_name)
        if capture:
            lines.append(capture_line(capture["capture"]))
    if "one_sign_folds" in report:
        one = report["one_sign_folds"]
        lines.append(
            f"one-sign test folds: {one['count']} of {one['of']} (the position never changes "
            "sign there: no timing)"
        )
    if report.get("oracle_correlation") is not None:
        corr = report["oracle_correlation"]
        lines.append(f"correlation of the position with the oracle's: {corr:.4f}")
    if "gate_held" in report:
        lines.append("gate: the folds held " + ", ".join(map(str, report["gate_held"])))
    return "\n".join(lines)


def write_outputs(
    out: Path,
    folds: Sequence[tuple[dict, dict]],
    timestamps: np.ndarray,
    periods_per_year: float,
    header: Mapping,
    cost_bps: float,
    trial_sharpes: Sequence[float] | None = None,
) -> dict:
    """Writes ``returns.csv``, ``equity_curve.png`` and ``report.json`` under ``out``
    (atomically); returns the report."""
    frame = returns_frame(folds, timestamps, instrument_name(header.get("data")))
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.10g")
    atomic_write_text(out / RETURNS_CSV, buffer.getvalue())
    names = _names(folds[0][1])
    curves = {
        name: np.exp(np.r_[0.0, np.cumsum(frame[name].to_numpy(np.float64))]) for name in names
    }
    plot_equity_curves(
        curves,
        out / EQUITY_PNG,
        title=f"walk-forward: {len(folds)} test folds stitched, greedy policy vs baselines",
    )
    pooled = pooled_metrics(folds, periods_per_year, cost_bps, trial_sharpes)
    report = {
        **header,
        "folds": [summary for summary, _ in folds],
        "pooled": pooled,
        **with_capture(pooled["policy"], pooled),
        **position_checks(folds),
        **gate_record([summary for summary, _ in folds]),
        "returns_csv": RETURNS_CSV,
    }
    atomic_write_text(out / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    return report
