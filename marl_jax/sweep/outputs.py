"""What a finished sweep writes (process 0): the leaderboard files, the members' curves, and
the best members' report (every command's, with ``returns.csv``), equity curve and ``.pt``
export."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from marl_jax.env import market
from marl_jax.env.data import Bars
from marl_jax.run.plots import plot_sweep_curves
from marl_jax.run.provenance import bar_calendar
from marl_jax.run.report import SplitPart, config_data, export_pt, write_split_report
from marl_jax.run.setup import SYNTHETIC
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


def export_member(folder: Path, row: dict, entry: Entry, bars: Bars, config: str) -> None:
    """``report.json`` (the report of every command, :mod:`marl_jax.run.report`),
    ``returns.csv``, ``equity_curve.png`` and ``strategic_marl.pt`` of one member.
    ``config``: the config's name or path as given."""
    cfg = entry.result.program.config
    norm = market.get_normalisation(entry.result.train_params)
    runs = {"policy": entry.run, **entry.baselines}
    folder.mkdir(parents=True, exist_ok=True)
    name = Path(cfg.env.data_path).name if cfg.env.data_path else SYNTHETIC
    write_split_report(
        folder,
        "sweep",
        [SplitPart(name, bars.timestamp, bar_calendar(cfg, bars), runs)],
        cfg=cfg,
        config=config,
        data=config_data(cfg),
        cost_bps=cfg.env.cost_bps,
        title=f"test split: member {row['member']} (greedy) vs baselines",
        split="test",
        member={k: row[k] for k in ("member", "group", "seed", "rank", "values", "hparams")},
        training={"updates": row["updates"], "final_reward": row["final_reward"]},
        lineage=row["lineage"],
        normalisation=norm.to_dict(),
    )
    export_pt(folder / "strategic_marl.pt", entry.result.program.algo, entry.state, norm)


def write_outputs(
    results: Sequence[GroupResult],
    bars: Bars,
    spec: SweepSpec,
    options: SweepOptions,
    config: str = "<dict>",
) -> list[dict]:
    """The leaderboard, the curves, the best members' exports and the summary (process 0).
    ``config``: the config's name or path as given."""
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
        export_member(out / "best", ok[0], where[ok[0]["member"]], bars, config)
        if options.export_top > 1:
            for r in ok[: options.export_top]:
                folder = out / "top" / f"{r['rank']:02d}-m{r['member']}"
                export_member(folder, r, where[r["member"]], bars, config)
    print(summary(rows), flush=True)
    return rows
