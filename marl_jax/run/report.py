"""The end of a run: the test-split report, its plots, and the ``.pt`` export.

:func:`test_split_report` and :func:`export_pt` work on any trained state (a run's, a sweep
member's, a checkpoint's); :func:`write_report` is a run's use of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

from marl_jax import metrics
from marl_jax.agents import AGENT_NAMES
from marl_jax.config import Config
from marl_jax.env import evaluate, market
from marl_jax.env.features import FeatureNorm
from marl_jax.files import atomic_write_text
from marl_jax.mappo import MAPPO, TrainState
from marl_jax.run.metrics_log import read_metrics_log, tenth_mean
from marl_jax.run.plots import plot_equity_curves, plot_learning_curve
from marl_jax.run.setup import Instrument, Run, env_params_for
from marl_jax.run.steps import Normalisations, model_metadata

__all__ = [
    "REPORT_METRICS",
    "metrics_table",
    "capture_line",
    "export_pt",
    "format_report",
    "greedy_policy",
    "instruments_report",
    "run_arrays",
    "stitched_summary",
    "test_split_report",
    "with_capture",
    "write_report",
]

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


def test_split_report(
    cfg: Config,
    algo: MAPPO,
    state: TrainState,
    test_params: market.EnvParams,
    linear: evaluate.LinearBaseline | None = None,
    oracle: np.ndarray | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """The greedy policy of ``state`` and the baselines (``linear`` among them when given, and
    ``oracle`` with the planted signal) on the test split: the report's ``split``, ``policy``
    and ``baselines`` entries (every metric of :func:`marl_jax.metrics.summary`), ``capture``
    where there is an oracle, and the equity curves by name."""
    policy_metrics, baselines, curves = evaluate.evaluate_split(
        greedy_policy(algo, state),
        test_params,
        "test",
        seed=cfg.seed,
        batch_size=2048,
        linear=linear,
        oracle=oracle,
    )
    report = {
        "split": "test",
        "policy": policy_metrics,
        "baselines": baselines,
        **with_capture(policy_metrics, baselines),
    }
    return report, curves


def with_capture(policy: Mapping, baselines: Mapping[str, Mapping]) -> dict:
    """``{"capture": ...}`` (:func:`marl_jax.env.evaluate.capture`) where the baselines hold
    the oracle, else nothing."""
    if evaluate.ORACLE not in baselines:
        return {}
    return {"capture": evaluate.capture({"policy": policy, **baselines})}


def capture_line(capture: float | None, label: str = "") -> str:
    """The capture as printed: the policy's net active IR over the oracle's (``n/a`` where the
    oracle's is 0)."""
    value = "n/a" if capture is None else f"{capture:.4f}"
    return f"{label}capture (policy active IR / oracle active IR): {value}"


def stitched_summary(
    parts: Sequence[Mapping[str, Mapping[str, np.ndarray]]],
    periods_per_year: float,
    cost_bps: float,
    trial_sharpes: Sequence[float] | None = None,
) -> dict[str, dict]:
    """Every metric of :func:`marl_jax.metrics.summary` (against buy-and-hold) of the per-bar
    arrays ``{name: {rewards, positions, pnl}}`` of ``parts`` (test folds, instruments)
    concatenated, for each name that every part holds (``buy_and_hold`` among them; ``policy``
    first; ``oracle`` only where every part was planted). The policy's DSR deflates for
    ``trial_sharpes`` (the trials it was chosen among), when given."""

    def stitched(name: str, field: str) -> np.ndarray:
        return np.concatenate([np.asarray(part[name][field]) for part in parts])

    benchmark = stitched("buy_and_hold", "rewards")
    benchmark_gross = stitched("buy_and_hold", "pnl")
    return {
        name: metrics.summary(
            stitched(name, "rewards"),
            stitched(name, "positions"),
            benchmark,
            periods_per_year,
            gross=stitched(name, "pnl"),
            benchmark_gross=benchmark_gross,
            cost_bps=cost_bps,
            trial_sharpes=trial_sharpes if name == "policy" else None,
        )
        for name in sorted(
            (k for k in parts[0] if k != "bar_index" and all(k in part for part in parts)),
            key=lambda k: k != "policy",
        )
    }


def run_arrays(r: evaluate.EvalRun) -> dict[str, np.ndarray]:
    """The per-bar arrays of an evaluation that :func:`stitched_summary` pools."""
    return {"rewards": r.rewards, "positions": r.positions, "pnl": r.pnl}


POOLED = (
    "every instrument's test-split bars one after the other (each starts flat), scored as one "
    "series: the per-bar net returns concatenated, annualised at the instruments' mean "
    "bars per year"
)


def instruments_report(
    cfg: Config, algo: MAPPO, state: TrainState, instruments: Mapping[str, Instrument]
) -> tuple[dict, dict[str, np.ndarray]]:
    """The test-split report of a multi-instrument run: each instrument's ``policy`` and
    ``baselines`` (the linear one fitted on its own train split) under ``instruments``, and the
    pooled ones (:data:`POOLED`) as the report's ``policy`` and ``baselines``; the pooled
    equity curves by name."""
    greedy = greedy_policy(algo, state)
    per, arrays, per_year = {}, [], []
    for name, inst in instruments.items():
        test = env_params_for(cfg, inst.bars, "test", inst.norm, where=name)
        runs = {"policy": evaluate.run_policy(greedy, test, batch_size=2048)}
        linear = evaluate.LinearBaseline.fit(inst.train_params)
        runs.update(
            evaluate.evaluate_baselines(test, seed=cfg.seed, linear=linear, oracle=inst.oracle)
        )
        baselines = {k: r.metrics for k, r in runs.items() if k != "policy"}
        per[name] = {
            "policy": runs["policy"].metrics,
            "baselines": baselines,
            **with_capture(runs["policy"].metrics, baselines),
        }
        arrays.append({k: run_arrays(r) for k, r in runs.items()})
        per_year.append(test.periods_per_year)
    pooled = stitched_summary(arrays, float(np.mean(per_year)), cfg.env.cost_bps)
    policy = pooled.pop("policy")
    report = {
        "split": "test",
        "policy": policy,
        "baselines": pooled,
        **with_capture(policy, pooled),
        "pooled": POOLED,
        "instruments": per,
    }
    curves = {
        name: np.exp(np.r_[0.0, np.cumsum(np.concatenate([a[name]["rewards"] for a in arrays]))])
        for name in arrays[0]
    }
    return report, curves


def write_report(run: Run, state: TrainState) -> dict:
    """Evaluates the greedy policy and the baselines (the linear one fitted on the train split)
    on the test split (of each instrument, and pooled, for several); writes ``report.json``,
    ``equity_curve.png`` and ``learning_curve.png`` of the run."""
    cfg = run.cfg
    if run.instruments is None:
        test_params = env_params_for(cfg, run.bars, "test", run.norm)
        linear = evaluate.LinearBaseline.fit(run.train_params)
        report, curves = test_split_report(
            cfg, run.algo, state, test_params, linear, oracle=run.oracle
        )
        title = "test split: trained policy (greedy) vs baselines"
    else:
        report, curves = instruments_report(cfg, run.algo, state, run.instruments)
        title = f"test splits of {len(run.instruments)} instruments pooled: greedy vs baselines"
    plot_equity_curves(curves, run.dir.equity_curve, title=title)
    rows = read_metrics_log(run.dir.metrics)
    rewards = [r["average_reward"] for r in rows]
    updates = int(state.update_step)
    report["training"] = {
        "updates": updates,
        "env_steps": updates * cfg.training.batch_size,
        "first_10pct_reward": tenth_mean(rewards, first=True) if rows else None,
        "last_10pct_reward": tenth_mean(rewards) if rows else None,
    }
    norms = run.norms
    if isinstance(norms, FeatureNorm):
        report["normalisation"] = norms.to_dict()
    else:
        report["normalisation"] = {name: n.to_dict() for name, n in norms.items()}
    atomic_write_text(run.dir.report, json.dumps(report, indent=2) + "\n")
    if rows:
        plot_learning_curve(rows, run.dir.learning_curve)
    return report


# Column headings of the metrics tables (the full names are in their legend line).
SHORT_NAMES = {"buy_and_hold": "buy&hold"}
TABLE_COLUMN = 10  # 7 columns of 10 after a 19-character label fit 100 columns


def metrics_table(by_name: Mapping[str, Mapping[str, float]], title: str) -> list[str]:
    """One block of a console table, transposed to fit 100 columns: a row per metric of
    :data:`REPORT_METRICS` and a column per agent (the policy first, then the baselines)."""
    label = max(map(len, REPORT_METRICS)) + 2
    names = list(by_name)
    heads = [SHORT_NAMES.get(n, n.split(" ")[0])[: TABLE_COLUMN - 1] for n in names]
    lines = [
        f"{title}: {', '.join(names)}",
        f"{'':{label}s}" + "".join(f"{h:>{TABLE_COLUMN}s}" for h in heads),
    ]
    for k in REPORT_METRICS:
        cells = "".join(f"{by_name[n][k]:>{TABLE_COLUMN}.4f}" for n in names)
        lines.append(f"{k:{label}s}" + cells)
    return lines


def format_report(report: Mapping) -> str:
    """The report as a text table (a block per instrument, then the pooled one, for several),
    metrics down and agents across."""
    blocks = [(f"{name}:", part) for name, part in report.get("instruments", {}).items()]
    if blocks:
        blocks.append(("pooled:", report))
    lines: list[str] = []
    for title, part in blocks or [(None, report)]:
        if title is not None:
            lines.append(title)
        by_name = {"policy (greedy)": part["policy"], **part["baselines"]}
        lines += metrics_table(by_name, "test split")
        if "capture" in part:
            lines.append(capture_line(part["capture"]))
    return "\n".join(lines)


def export_pt(path: Path, algo: MAPPO, state: TrainState, norm: Normalisations) -> Path | None:
    """Writes the models of ``state`` to ``path`` as a ``.pt`` file in the original format,
    with the feature normalisation (one per instrument for several) in its metadata. Needs
    torch (through the bridge): without it, prints a warning and returns None."""
    try:
        from bridge.convert import new_checkpoint, save_pt_checkpoint
    except ImportError as err:
        print(f"warning: {path} not written: the bridge needs torch ({err})")
        return None
    variables = jax.tree.map(np.asarray, algo.model_variables(state))
    ckpt = new_checkpoint(
        {name: variables["agents"][name] for name in AGENT_NAMES},
        variables["critic"],
        algo.modules,
        metadata=model_metadata(state, norm),
    )
    save_pt_checkpoint(ckpt, path)
    return path
