"""The end of a run: the test-split report, its plots, and the ``.pt`` export."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

from marl_jax.agents import AGENT_NAMES
from marl_jax.env import evaluate
from marl_jax.mappo import MAPPO, TrainState
from marl_jax.run.files import atomic_write_text
from marl_jax.run.loop import read_metrics_log
from marl_jax.run.plots import plot_equity_curves, plot_learning_curve
from marl_jax.run.setup import Run, env_params_for
from marl_jax.run.steps import model_metadata

__all__ = ["REPORT_METRICS", "export_pt", "format_report", "greedy_policy", "write_report"]

# The printed table's columns; report.json holds every key of marl_jax.metrics.summary.
REPORT_METRICS = (
    "sharpe",
    "total_log_return",
    "max_drawdown",
    "hit_rate",
    "turnover",
    "beta",
    "alpha_t",
    "active_ir",
    "psr",
    "active_ir_0x_cost",
    "active_ir_2x_cost",
)


def greedy_policy(algo: MAPPO, state: TrainState):
    """A NumPy policy for the evaluator: greedy actions ``(N, 3)`` of the trained actors.

    The state is an argument of the jitted function, not a constant baked into it, so the
    program is the same for every run of a config and the compilation cache serves it.
    """
    act = jax.jit(lambda s, obs: algo.act(s, obs)[0])
    return lambda obs: np.asarray(act(state, obs))


def _tail_mean(rows: Sequence[Mapping], first: bool) -> float | None:
    if not rows:
        return None
    k = max(1, len(rows) // 10)
    part = rows[:k] if first else rows[-k:]
    return float(np.mean([r["average_reward"] for r in part]))


def write_report(run: Run, state: TrainState) -> dict:
    """Evaluates the greedy policy and the baselines (the linear one fitted on the train
    split) on the test split; writes ``report.json``, ``equity_curve.png`` and
    ``learning_curve.png``."""
    cfg = run.cfg
    test_params = env_params_for(cfg, run.bars, "test", run.norm)
    linear = evaluate.LinearBaseline.fit(env_params_for(cfg, run.bars, "train", run.norm))
    policy_metrics, baselines, curves = evaluate.evaluate_split(
        greedy_policy(run.algo, state),
        test_params,
        "test",
        seed=cfg.seed,
        batch_size=2048,
        linear=linear,
    )
    plot_equity_curves(
        curves, run.dir.equity_curve, title="test split: trained policy (greedy) vs baselines"
    )
    rows = read_metrics_log(run.dir.metrics)
    updates = int(state.update_step)
    report = {
        "split": "test",
        "policy": policy_metrics,
        "baselines": baselines,
        "training": {
            "updates": updates,
            "env_steps": updates * cfg.training.num_envs * cfg.training.rollout_len,
            "first_10pct_reward": _tail_mean(rows, first=True),
            "last_10pct_reward": _tail_mean(rows, first=False),
        },
        "normalisation": run.norm.to_dict(),
    }
    atomic_write_text(run.dir.report, json.dumps(report, indent=2) + "\n")
    if rows:
        plot_learning_curve(rows, run.dir.learning_curve)
    return report


def format_report(report: Mapping) -> str:
    """The report as a text table."""
    width = {k: max(11, len(k) + 2) for k in REPORT_METRICS}
    header = f"{'test split':16s}" + "".join(f"{k:>{width[k]}s}" for k in REPORT_METRICS)
    lines = [header, "-" * len(header)]
    entries = [("policy (greedy)", report["policy"]), *report["baselines"].items()]
    for name, metrics in entries:
        cells = "".join(f"{metrics[k]:>{width[k]}.4f}" for k in REPORT_METRICS)
        lines.append(f"{name:16s}" + cells)
    return "\n".join(lines)


def export_pt(run: Run, state: TrainState) -> Path | None:
    """Writes ``strategic_marl.pt`` in the original format (needs torch through the bridge)."""
    try:
        from bridge.convert import new_checkpoint, save_pt_checkpoint
    except ImportError as err:
        print(f"warning: {run.dir.export_pt.name} not written: the bridge needs torch ({err})")
        return None
    variables = jax.tree.map(np.asarray, run.algo.model_variables(state))
    ckpt = new_checkpoint(
        {name: variables["agents"][name] for name in AGENT_NAMES},
        variables["critic"],
        run.algo.modules,
        metadata=model_metadata(state, run.norm),
    )
    save_pt_checkpoint(ckpt, run.dir.export_pt)
    return run.dir.export_pt
