"""The walk-forward's pooled outputs: ``returns.csv``, ``report.json``, ``equity_curve.png`` and
the printed table, all from the finished folds' per-bar test arrays.

``returns.csv`` has one row per test bar (:mod:`marl_jax.run.returns`): ``timestamp``,
``fold``, ``instrument``, ``position``, then the net return of ``policy`` and of each baseline
(``oracle`` among them where the bar file was planted: ``python -m marl_jax.plant``). The
report (:func:`marl_jax.run.report.build_report`) holds as ``metrics`` those of the stitched
rows (each fold starts flat, as the environment does), as ``folds`` each fold's test metrics
with its choice, and as ``checks`` the one-sign test folds and, with an oracle, the policy's
``capture`` (its net active IR over the oracle's) and the correlation of its position with the
oracle's. Its extras: the resolved ``config``, ``sidecar_sha256``, ``n_bars``, ``options``,
``selection`` (and ``sweep``, ``gate_held`` where they apply), as ``walkforward.json``
records them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from marl_jax.config import Config
from marl_jax.env.data import Bars
from marl_jax.run.plots import plot_returns
from marl_jax.run.provenance import BarCalendar, bar_calendar, provenance
from marl_jax.run.report import (
    build_report,
    fold_entry,
    metrics_block,
    one_sign_line,
    report_checks,
    stitched_summary,
    write_report_json,
)
from marl_jax.run.returns import (
    RETURNS_CSV,
    instrument_name,
    returns_frame,
    write_returns_csv,
)
from marl_jax.run.tearsheet import write_tearsheet

__all__ = [
    "EQUITY_PNG",
    "REPORT_JSON",
    "fold_report_entry",
    "format_table",
    "gate_record",
    "header_extras",
    "pooled_metrics",
    "write_outputs",
    "write_report_files",
]

REPORT_JSON = "report.json"
EQUITY_PNG = "equity_curve.png"
# What walkforward.json records that the report's provenance holds instead.
IN_PROVENANCE = ("data", "data_sha256", "config_name")


def pooled_metrics(
    folds: Sequence[tuple[dict | None, dict]],
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


def gate_record(folds: Sequence[Mapping]) -> dict:
    """``{"gate_held": [what each fold held]}`` where the folds were gated (``--gate``: a
    baseline's name, or ``"checkpoint"``), else ``{}``."""
    if not any("gate" in f["selection"] for f in folds):
        return {}
    return {"gate_held": [f["selection"].get("gate", {}).get("held") for f in folds]}


def fold_report_entry(summary: Mapping, stamps: np.ndarray) -> dict:
    """A fold's entry in the report: its number, the first and last timestamp of its test
    bars, its test ``metrics``, then the rest of its ``fold.json`` (its spans, dates and
    choice)."""
    rest = {k: v for k, v in summary.items() if k not in ("fold", "test")}
    return fold_entry(summary["fold"], stamps, summary["test"], **rest)


def header_extras(header: Mapping) -> dict:
    """The report's extras from the walk-forward's header (what ``walkforward.json``
    records, less what the provenance holds)."""
    return {k: v for k, v in header.items() if k not in IN_PROVENANCE}


def format_table(report: Mapping) -> str:
    """Each fold's and the pooled test metrics as a text table (with several instruments, each
    instrument's folds stitched too, before the pooled rows), then the checks."""
    blocks = [(f"fold {f['fold']}", f["metrics"]) for f in report["folds"]]
    blocks += [(name, part["metrics"]) for name, part in report.get("instruments", {}).items()]
    blocks.append(("pooled", report["metrics"]))
    lines: list[str] = []
    for label, by_name in blocks:
        lines += [*([""] if lines else []), *metrics_block(by_name, label)]
    checks = report["checks"]
    lines.append(one_sign_line(checks))
    if checks.get("oracle_correlation") is not None:
        corr = checks["oracle_correlation"]
        lines.append(f"correlation of the position with the oracle's: {corr:.4f}")
    if "gate_held" in report:
        lines.append("gate: the folds held " + ", ".join(map(str, report["gate_held"])))
    return "\n".join(lines)


def write_report_files(
    out: Path,
    frame: pd.DataFrame,
    title: str,
    command_report: dict,
) -> dict:
    """Writes ``returns.csv`` (``frame``), ``equity_curve.png`` (of the agents with a return
    at every row), ``report.json`` and ``report.html`` (the tearsheet) under ``out``
    (atomically); returns the report."""
    write_returns_csv(out / RETURNS_CSV, frame)
    plot_returns(frame, out / EQUITY_PNG, title)
    write_report_json(out / REPORT_JSON, command_report)
    write_tearsheet(out)
    return command_report


def write_outputs(
    out: Path,
    folds: Sequence[tuple[dict, dict]],
    bars: Bars,
    header: Mapping,
    cfg: Config,
    config: str,
    trial_sharpes: Sequence[float] | None = None,
    calendar: BarCalendar | None = None,
) -> dict:
    """Writes ``returns.csv``, ``equity_curve.png`` and ``report.json`` of the finished
    ``folds`` (``(fold.json, arrays)`` pairs) of ``bars`` under ``out``; returns the report.
    ``config``: the config's name or path as given; ``calendar``: the bars' (default
    :func:`~marl_jax.run.provenance.bar_calendar`)."""
    calendar = calendar or bar_calendar(cfg, bars)
    data = header.get("data")
    frame = returns_frame([(s["fold"], a) for s, a in folds], bars.timestamp, instrument_name(data))
    pooled = pooled_metrics(folds, calendar.periods_per_year, cfg.env.cost_bps, trial_sharpes)
    stamps = [bars.timestamp[a["bar_index"]] for _, a in folds]
    prov = provenance(
        cfg=cfg,
        config=config,
        data=data,
        stamps=np.concatenate(stamps),
        calendar=calendar,
        cost_bps=cfg.env.cost_bps,
    )
    summaries = [s for s, _ in folds]
    report = build_report(
        "walkforward",
        prov,
        pooled,
        report_checks([(s["fold"], [a]) for s, a in folds], pooled),
        [fold_report_entry(s, t) for s, t in zip(summaries, stamps, strict=True)],
        **header_extras(header),
        **gate_record(summaries),
    )
    title = f"walk-forward: {len(folds)} test folds stitched, greedy policy vs baselines"
    return write_report_files(out, frame, title, report)
