"""What a finished sweep writes (process 0): the leaderboard files, the members' curves, and
the best members' report, equity curve and ``.pt`` export."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from marl_jax.env import market
from marl_jax.files import atomic_write_text
from marl_jax.run.plots import plot_equity_curves, plot_sweep_curves
from marl_jax.run.report import export_pt
from marl_jax.sweep.coordination import write
from marl_jax.sweep.group import GroupResult
from marl_jax.sweep.leaderboard import (
    Entry,
    leaderboard,
    leaderboard_csv,
    leaderboard_json,
    summary,
)
from marl_jax.sweep.options import SweepOptions
from marl_jax.sweep.spec import SweepSpec

__all__ = ["export_member", "write_outputs"]


def export_member(folder: Path, row: dict, entry: Entry) -> None:
    """``report.json``, ``equity_curve.png`` and ``strategic_marl.pt`` of one member."""
    norm = market.get_normalisation(entry.result.train_params)
    curves = {"policy": entry.run.equity, **{k: v.equity for k, v in entry.baselines.items()}}
    folder.mkdir(parents=True, exist_ok=True)
    plot_equity_curves(
        curves, folder / "equity_curve.png", title=f"test split: member {row['member']} (greedy)"
    )
    report = {
        "split": "test",
        "member": {k: row[k] for k in ("member", "group", "seed", "rank", "values", "hparams")},
        "policy": row["test"],
        "baselines": row["baselines"],
        "training": {"updates": row["updates"], "final_reward": row["final_reward"]},
        "lineage": row["lineage"],
        "normalisation": norm.to_dict(),
    }
    atomic_write_text(folder / "report.json", json.dumps(report, indent=2) + "\n")
    export_pt(folder / "strategic_marl.pt", entry.result.program.algo, entry.state, norm)


def write_outputs(
    results: Sequence[GroupResult], bars: Any, spec: SweepSpec, options: SweepOptions
) -> list[dict]:
    """The leaderboard, the curves, the best members' exports and the summary (process 0)."""
    out = options.out
    metric = spec.pbt.metric if spec.pbt is not None else "average_reward"
    mode = spec.pbt.mode if spec.pbt is not None else "max"
    rows, where = leaderboard(results, bars, metric, mode)
    done = "training is complete"
    write(out / "leaderboard.json", leaderboard_json(rows), done)
    write(out / "leaderboard.csv", leaderboard_csv(rows), done)
    history = {m: records for res in results for m, records in res.rows.items()}
    plot_sweep_curves(history, rows[0]["member"] if rows else None, out / "sweep_curves.png")
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        export_member(out / "best", ok[0], where[ok[0]["member"]])
        if options.export_top > 1:
            for r in ok[: options.export_top]:
                folder = out / "top" / f"{r['rank']:02d}-m{r['member']}"
                export_member(folder, r, where[r["member"]])
    print(summary(rows), flush=True)
    return rows
