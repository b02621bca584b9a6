"""The sweep's leaderboard: every member's seed, hyperparameters, training score, the greedy
policy's test-split metrics and the baselines', ranked; as JSON, CSV and a text summary.

Members are ranked by the sweep's metric averaged over the last tenth of training (the test
split is reported, never used to choose); failed members rank last.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from marl_jax.env import evaluate, market
from marl_jax.hparams import HPARAM_NAMES
from marl_jax.mappo import TrainState
from marl_jax.run.metrics_log import tenth_mean
from marl_jax.run.report import REPORT_METRICS, greedy_policy
from marl_jax.run.setup import env_params_for
from marl_jax.sweep.group import GroupResult
from marl_jax.sweep.members import plain

__all__ = ["Entry", "leaderboard", "leaderboard_csv", "leaderboard_json", "summary"]


@dataclasses.dataclass
class Entry:
    """What a member's exports need: its state, its group, its test-split run, the baselines'."""

    state: TrainState
    result: GroupResult
    run: Any  # evaluate's policy run on the test split; None for a failed member
    baselines: dict[str, Any]


def _json_safe(x: Any) -> Any:
    """``x`` with non-finite floats as None (strict JSON)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def leaderboard(
    results: Sequence[GroupResult], bars: Any, metric: str, mode: str
) -> tuple[list[dict], dict[int, Entry]]:
    """Rows ranked best first, and each member's :class:`Entry` for the exports."""
    rows, where = [], {}
    for result in results:
        cfg = result.program.config
        test = env_params_for(cfg, bars, "test", market.get_normalisation(result.train_params))
        linear = evaluate.LinearBaseline.fit(result.train_params)
        baselines = evaluate.evaluate_baselines(test, seed=cfg.seed, linear=linear)
        for pos, member in enumerate(result.members):
            hp = {k: float(np.asarray(getattr(result.state.hparams, k))[pos]) for k in HPARAM_NAMES}
            history = result.rows[member.index]
            row: dict[str, Any] = {
                "member": member.index,
                "group": result.group,
                "seed": member.seed,
                "status": "ok" if member.index not in result.failed else "failed",
                "cause": result.failed.get(member.index, {}).get("cause", ""),
                "failed_at": result.failed.get(member.index, {}).get("update"),
                "values": {k: plain(v) for k, v in member.values.items()},
                "hparams": hp,
                "updates": history[-1]["update"] if history else 0,
                "final_reward": tenth_mean([r["average_reward"] for r in history]),
                "score": tenth_mean([r[metric] for r in history]),
                "lineage": result.lineage.of(member.index),
                "ancestry": result.lineage.ancestry(member.index),
            }
            state = result.member_state(pos)
            run = None
            if row["status"] == "ok":
                run = evaluate.run_policy(greedy_policy(result.program.algo, state), test)
                row["test"] = {k: float(run.metrics[k]) for k in REPORT_METRICS}
            else:
                row["test"] = {k: None for k in REPORT_METRICS}
            row["baselines"] = {
                name: {k: float(b.metrics[k]) for k in REPORT_METRICS}
                for name, b in baselines.items()
            }
            rows.append(row)
            where[member.index] = Entry(state, result, run, baselines)
    sign = -1.0 if mode == "max" else 1.0

    def key(r: dict) -> tuple:
        ok = r["status"] == "ok" and math.isfinite(r["score"])
        return (0 if ok else 1, sign * r["score"] if ok else 0.0, r["member"])

    rows.sort(key=key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows, where


def leaderboard_json(rows: Sequence[dict]) -> str:
    """``leaderboard.json``: the rows, non-finite numbers as null."""
    return json.dumps(_json_safe(list(rows)), indent=2) + "\n"


def leaderboard_csv(rows: Sequence[dict]) -> str:
    """``leaderboard.csv``: one line per member, best first."""
    hp_names = list(HPARAM_NAMES)
    value_names = sorted({k for r in rows for k in r["values"]})
    baseline_names = sorted({k for r in rows for k in r["baselines"]})
    header = [
        "rank",
        "member",
        "group",
        "seed",
        "status",
        "cause",
        "updates",
        "score",
        "final_reward",
        *[f"test_{k}" for k in REPORT_METRICS],
        *[f"{b}_sharpe" for b in baseline_names],
        *value_names,
        *[f"final_{k}" for k in hp_names],
        "ancestry",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow(
            [
                r["rank"],
                r["member"],
                r["group"],
                r["seed"],
                r["status"],
                r["cause"],
                r["updates"],
                r["score"],
                r["final_reward"],
                *[r["test"][k] for k in REPORT_METRICS],
                *[r["baselines"][b]["sharpe"] for b in baseline_names],
                *[json.dumps(r["values"].get(k)) for k in value_names],
                *[r["hparams"][k] for k in hp_names],
                " <- ".join(str(m) for m in r["ancestry"]),
            ]
        )
    return buffer.getvalue()


def summary(rows: Sequence[dict], top: int = 10) -> str:
    """The ``top`` rows as a text table."""
    head = f"{'rank':>4} {'member':>6} {'status':>7} {'score':>12} {'test sharpe':>12}  values"
    lines = [head, "-" * len(head)]
    for r in rows[:top]:
        sharpe = r["test"]["sharpe"]
        values = " ".join(f"{k}={v}" for k, v in r["values"].items())
        lines.append(
            f"{r['rank']:>4} {r['member']:>6} {r['status']:>7} {r['score']:>12.4g} "
            f"{(f'{sharpe:.3f}' if sharpe is not None else '-'):>12}  {values}"
        )
    return "\n".join(lines)
