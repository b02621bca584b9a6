"""Why a walk-forward's policy learns or not: one table a quant can read.

    python -m marl_jax.diagnose DIR [DIR ...] [--out FOLDER]     (or: marl-jax diagnose ...)

``DIR`` is a walk-forward's ``--out`` (``python -m marl_jax.walkforward``). For each finished
fold, with the fold's own config, bars and normalisation (:func:`marl_jax.walkforward.fold_run.
fold_envs`) and the walk-forward's evaluator (:func:`marl_jax.env.evaluate.run_policy`):

1. every kept checkpoint's greedy net log return, turnover and share of bars at its most common
   signal on the train and validation splits (overfitting: train up, validation down; not
   learning: both flat, or one constant position), and its validation score by the metric the
   walk-forward chose by (``--select-by``; the chosen one is marked with the recorded score);
2. each actor's entropy over training (``metrics.jsonl``): first and last tenth, min; ln 3 is
   uniform;
3. the share of validation bars at each signal (position before volatility sizing) of the
   chosen checkpoint, greedy and sampled from the actors' (eval-mode) probabilities;
4. on the validation split (chosen checkpoint), the Pearson and Spearman correlation with the
   next bar's log return of the critic's value (denormalised with the checkpoint's ValueNorm),
   of the one-step advantage ``r + gamma V' - V`` (``r`` the environment's reward: net, minus
   ``position * mu`` for ``excess``; none for ``differential_sharpe``), and the rank IC of each
   actor's ``P(bullish) - P(bearish)`` and of the linear baseline's prediction.

A walk-forward of an ensemble (``ensemble`` K > 1) is diagnosed member by member: each fold's
members are rows ``F.I`` (``"member": I`` in the JSON), each with its own checkpoints.

Prints the tables; ``--out`` also writes them as ``diagnosis.json`` (atomically). One compiled
forward pass serves every checkpoint (the variables are its arguments).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging
from scipy import stats

from marl_jax.agents import AGENT_NAMES
from marl_jax.config import Config, load_config
from marl_jax.env import evaluate, market
from marl_jax.env.data import Bars
from marl_jax.errors import MarlJaxError, cli_main
from marl_jax.files import atomic_write_text
from marl_jax.mappo import MAPPO
from marl_jax.ppo import ValueNormState, valuenorm_denormalise, valuenorm_mean_var
from marl_jax.run.checkpointer import TrainCheckpointer
from marl_jax.run.metrics_log import read_metrics_log
from marl_jax.run.rundir import CONFIG, MEMBER_DIR
from marl_jax.run.setup import load_markets
from marl_jax.run.sources import load_models_from
from marl_jax.walkforward.driver import MANIFEST
from marl_jax.walkforward.fold_run import (
    EVAL_BATCH,
    FOLD_RESULT,
    SELECT_METRIC,
    FoldEnvs,
    fold_envs,
)
from marl_jax.walkforward.folds import Fold

LN3 = math.log(3.0)
DIAGNOSIS = "diagnosis.json"


class DiagnosisError(MarlJaxError, ValueError):
    """A folder that cannot be diagnosed; the message is one line."""


def forward_program(algo: MAPPO) -> Callable:
    """``f(variables, obs) -> (actions (N, 3), probs (N, 3, 3), value (N,))``: the trainer's
    greedy acting (:meth:`MAPPO.act` without a key) and its critic, jitted once for every
    checkpoint of the same models."""

    def forward(variables, obs):
        outs = [
            algo.team.apply(n, variables[n], obs[n], deterministic=True, attention_weights=False)
            for n in AGENT_NAMES
        ]
        actions = jnp.stack([o["action"] for o in outs], -1)
        probs = jnp.stack([o["action_probs"] for o in outs], 1)
        value = algo.team.apply("critic", variables["critic"], obs["critic"])["value"]
        return actions, probs, value

    return jax.jit(forward)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """``x`` with ``rows`` zero rows appended."""
    return np.pad(x, [(0, rows)] + [(0, 0)] * (x.ndim - 1))


def run_checkpoint(program: Callable, variables: dict, params: market.EnvParams) -> dict:
    """The walk-forward's greedy evaluation of one checkpoint on ``params`` (``run``, an
    :class:`~marl_jax.env.evaluate.EvalRun`) and the actors' ``probs`` and critic's ``value`` at
    the same bars."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    # Padded to EVAL_BATCH rows: one program for every split. A model that observes its
    # position is called bar after bar, one row at a time: not padded.
    rows = 1 if params.observe_position else EVAL_BATCH

    def policy(obs):
        n = len(obs["critic"])
        obs = jax.tree.map(lambda x: _pad_rows(np.asarray(x), -n % rows), obs)
        actions, probs, value = program(variables, obs)
        seen.append((np.asarray(probs)[:n], np.asarray(value)[:n]))
        return np.asarray(actions)[:n]

    run = evaluate.run_policy(policy, params, batch_size=EVAL_BATCH)
    n = len(run.positions)  # only the last chunk is padded
    probs, value = (np.concatenate(x)[:n] for x in zip(*seen, strict=True))
    return {"run": run, "probs": probs, "value": value.astype(np.float64)}


def correlation(x: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Pearson and Spearman correlation (None when either side is constant)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": None, "spearman": None}
    return {
        "pearson": float(np.corrcoef(x, y)[0, 1]),
        "spearman": float(stats.spearmanr(x, y).statistic),
    }


def training_summary(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Each actor's entropy (and the training ``mean_abs_position`` and ``value_loss``): the
    mean of the first and the last tenth of the updates, and the min."""
    out = {}
    for key in [f"{a}/entropy" for a in AGENT_NAMES] + ["mean_abs_position", "value_loss"]:
        vals = np.array([r[key] for r in rows if key in r], dtype=np.float64)
        if len(vals):
            k = max(1, len(vals) // 10)
            out[key] = {"first": vals[:k].mean(), "last": vals[-k:].mean(), "min": vals.min()}
    return {k: {s: float(v) for s, v in d.items()} for k, d in out.items()}


def signal_shares(signals: np.ndarray) -> dict[str, float]:
    """The share of bars at each distinct signal, keyed by the signal to 3 decimals."""
    values, counts = np.unique(np.round(signals, 3) + 0.0, return_counts=True)
    return {f"{v:+.3f}": float(c / len(signals)) for v, c in zip(values, counts, strict=True)}


def signals(positions: np.ndarray, params: market.EnvParams) -> np.ndarray:
    """The signals (positions before volatility sizing) of positions set at every evaluation
    bar of ``params``."""
    ts = np.arange(int(params.start_lo), int(params.last_bar))
    return positions / np.asarray(params.vol_scale, np.float64)[ts]


def _value_norm(root: Path, step: int) -> tuple[ValueNormState, float, dict[str, float]]:
    """Checkpoint ``step``'s ValueNorm statistics, discount, and the std ValueNorm divides the
    value targets by (its variance floored at 1e-2) next to their running std."""
    with TrainCheckpointer(root / "checkpoints", read_only=True, async_save=False) as ckpt:
        state, _ = ckpt.restore(step)
    vn = ValueNormState(**state["value_norm"])
    mean, var = (float(x) for x in valuenorm_mean_var(vn))
    mean_sq = float(vn.running_mean_sq / max(float(vn.debiasing_term), 1e-5))
    scales = {"divided_by": math.sqrt(var), "target_std": math.sqrt(max(mean_sq - mean**2, 0.0))}
    return vn, float(state["hparams"]["gamma"]), scales


def critic_and_signals(
    cfg: Config, root: Path, step: int, out: dict, envs: FoldEnvs, seed: int
) -> dict:
    """Item 3 and 4 of the module docstring for the chosen checkpoint's validation ``out``."""
    val, run = envs.val, out["run"]
    ts = run.bar_index
    next_r = np.asarray(val.log_returns, np.float64)[ts + 1]
    vn, gamma, scales = _value_norm(root, step)
    value = out["value"]
    if cfg.training.use_valuenorm:
        value = np.asarray(valuenorm_denormalise(vn, jnp.asarray(value)), np.float64)
    corr = {"critic_value": correlation(value, next_r)}
    if cfg.env.reward != "differential_sharpe":
        reward = run.rewards.astype(np.float64)
        if cfg.env.reward == "excess":
            reward = reward - run.positions * market.get_return_stats(val)[0]
        adv = reward[:-1] + gamma * value[1:] - value[:-1]
        corr["advantage"] = correlation(adv, next_r[:-1])
    td = gamma * value[1:] - value[:-1]  # the critic's part of the advantage
    probs = out["probs"]
    for k, name in enumerate(AGENT_NAMES):
        corr[f"{name}_bull_minus_bear"] = correlation(probs[:, k, 2] - probs[:, k, 0], next_r)
    linear = evaluate.LinearBaseline.fit(envs.train)
    corr["linear_prediction"] = correlation(linear.predict(np.asarray(val.features)[ts]), next_r)
    rng = np.random.default_rng(seed)
    u = rng.random(probs.shape[:2])[..., None]
    sampled = np.minimum((u > np.cumsum(probs, -1)).sum(-1), 2)
    sampled_pos = evaluate.positions_for(sampled, val)
    return {
        "signal_shares": {
            "greedy": signal_shares(signals(run.positions, val)),
            "sampled": signal_shares(signals(sampled_pos, val)),
        },
        "correlation_with_next_return": corr,
        "critic_td_std_over_return_std": float(np.std(td) / max(np.std(next_r), 1e-12)),
        "gamma": gamma,
        "valuenorm_std": scales,
    }


def selection_metric(selection: dict) -> str:
    """The metric a fold chose its checkpoint by, from ``fold.json``'s ``selection``
    (``"validation NAME"``)."""
    return selection["metric"].split()[1].rstrip(",")


def diagnose_fold(
    cfg: Config, bars: Bars, fold: Fold, summary: dict, root: Path, program: Callable
) -> dict:
    """Everything of the module docstring for one finished fold."""
    envs = fold_envs(cfg, bars, fold)
    chosen = int(summary["selection"]["step"])
    metric = selection_metric(summary["selection"])
    with TrainCheckpointer(root / "checkpoints", read_only=True, async_save=False) as ckpt:
        steps = ckpt.all_steps()
    curve, chosen_val = [], None
    for step in steps:
        _, bundle = load_models_from(f"{root}:{step}")
        variables = {**bundle.agents, "critic": bundle.critic}
        train = run_checkpoint(program, variables, envs.train)
        val = run_checkpoint(program, variables, envs.val)
        row = {"step": step}
        for split, r, p in (("train", train["run"], envs.train), ("val", val["run"], envs.val)):
            row[f"{split}_return"] = float(r.metrics[SELECT_METRIC])
            row[f"{split}_turnover"] = float(r.metrics["turnover"])
            row[f"{split}_modal_share"] = max(signal_shares(signals(r.positions, p)).values())
        row["val_score"] = float(val["run"].metrics[metric])
        curve.append(row)
        if step == chosen:
            chosen_val = val
    if chosen_val is None:
        raise DiagnosisError(f"{root}: the chosen checkpoint {chosen} is no longer kept")
    return {
        "fold": fold.index,
        "train": list(fold.train),
        "val": list(fold.val),
        "chosen_step": chosen,
        "selection_metric": metric,
        "recorded_val_score": float(summary["selection"]["scores"][str(chosen)]),
        "curve": curve,
        "training_metrics": training_summary(read_metrics_log(root / "metrics.jsonl")),
        **critic_and_signals(cfg, root, chosen, chosen_val, envs, cfg.seed),
    }


def _mean(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def pooled(folds: Sequence[dict]) -> dict:
    """Over folds: how the curves move, the mean entropies and correlations, and the signal
    shares weighted by each fold's validation bars."""
    first, last = ([f["curve"][i] for f in folds] for i in (0, -1))
    d_train = [b["train_return"] - a["train_return"] for a, b in zip(first, last, strict=True)]
    d_val = [b["val_return"] - a["val_return"] for a, b in zip(first, last, strict=True)]
    flat = [len({round(r["val_return"], 12) for r in f["curve"]}) == 1 for f in folds]
    shares: dict[str, dict[str, float]] = {"greedy": {}, "sampled": {}}
    bars = sum(f["val"][1] - f["val"][0] for f in folds)
    for f in folds:
        w = (f["val"][1] - f["val"][0]) / bars
        for kind, table in f["signal_shares"].items():
            for s, v in table.items():
                shares[kind][s] = shares[kind].get(s, 0.0) + w * v
    corr = {
        key: {m: _mean([f["correlation_with_next_return"][key][m] for f in folds]) for m in cs}
        for key, cs in folds[0]["correlation_with_next_return"].items()
    }
    training = {
        key: {
            s: _mean([f["training_metrics"][key][s] for f in folds])
            for s in ("first", "last", "min")
        }
        for key in folds[0]["training_metrics"]
    }
    return {
        "folds": len(folds),
        "train_up_val_down": int(sum(t > 0 > v for t, v in zip(d_train, d_val, strict=True))),
        "val_flat_over_checkpoints": int(sum(flat)),
        "mean_train_change": _mean(d_train),
        "mean_val_change": _mean(d_val),
        "training_metrics": training,
        "signal_shares": {
            k: dict(sorted(v.items(), key=lambda x: float(x[0]))) for k, v in shares.items()
        },
        "correlation_with_next_return": corr,
    }


def diagnose(root: str | Path) -> dict:
    """The diagnosis of one walk-forward folder (errors: :class:`DiagnosisError`)."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise DiagnosisError(
            f"{root}: not a walk-forward folder (no {MANIFEST}); give the --out of "
            "python -m marl_jax.walkforward"
        )
    manifest = json.loads((root / MANIFEST).read_text())
    if isinstance(manifest["folds"], dict) or manifest.get("sweep"):
        raise DiagnosisError(f"{root}: a multi-instrument or --sweep walk-forward; not supported")
    folds, program, cfg, bars = [], None, None, None
    size = int(manifest["config"].get("ensemble", 1))
    for spec in manifest["folds"]:
        fold_root = root / f"fold_{spec['fold']}"
        if not (fold_root / FOLD_RESULT).is_file():
            continue  # not finished
        fold = Fold(spec["fold"], tuple(spec["train"]), tuple(spec["val"]), tuple(spec["test"]))
        runs = [fold_root] if size == 1 else [fold_root / MEMBER_DIR.format(i) for i in range(size)]
        for i, run_root in enumerate(runs):
            cfg = load_config(run_root / CONFIG)
            if bars is None:
                bars = next(iter(load_markets(cfg).values()))
                program = forward_program(MAPPO(cfg, market.MARKET))
            summary = json.loads((run_root / FOLD_RESULT).read_text())
            diagnosed = diagnose_fold(cfg, bars, fold, summary, run_root, program)
            folds.append(diagnosed if size == 1 else {**diagnosed, "member": i})
    if not folds:
        raise DiagnosisError(f"{root}: no finished fold ({FOLD_RESULT}) yet")
    return {"folds": folds, "pooled": pooled(folds)}


def _f(x: float | None, spec: str = "+.4f") -> str:
    return "   n/a" if x is None else format(x, spec)


def _label(f: dict) -> str:
    """A diagnosed run's row label: its fold, and ``.I`` for an ensemble's member ``I``."""
    return f"{f['fold']}.{f['member']}" if "member" in f else str(f["fold"])


def format_report(name: str, d: dict) -> str:
    """The tables of one walk-forward's diagnosis."""
    lines = [
        f"== {name}",
        "1. greedy net log return, turnover, share of bars at the modal signal, per checkpoint",
    ]
    lines.append(
        "fold  step   train_ret  turnover  modal   val_ret  turnover  modal  (* chosen, recorded)"
    )
    for f in d["folds"]:
        for r in f["curve"]:
            mark = f"* {f['recorded_val_score']:+.4f}" if r["step"] == f["chosen_step"] else ""
            train, val = (
                f"{r[f'{s}_return']:+.5f}   {r[f'{s}_turnover']:.5f}  {r[f'{s}_modal_share']:.3f}"
                for s in ("train", "val")
            )
            lines.append(f"{_label(f):>4} {r['step']:>5}  {train}  {val}  {mark}")
    p = d["pooled"]
    lines.append(
        f"pooled: train up & val down in {p['train_up_val_down']}/{p['folds']} folds; val flat "
        f"over checkpoints in {p['val_flat_over_checkpoints']}/{p['folds']}; mean change "
        f"train {_f(p['mean_train_change'])}, val {_f(p['mean_val_change'])}"
    )
    lines.append(
        f"2. entropy (uniform ln 3 = {LN3:.4f}), training mean |position|, value loss: "
        "first/last tenth, min"
    )
    keys = list(p["training_metrics"])
    lines.append("fold  " + "  ".join(f"{k.split('/')[0]:>22}" for k in keys))
    rows = [(_label(f), f["training_metrics"]) for f in d["folds"]]
    for label, e in rows + [("pool", p["training_metrics"])]:
        cells = ["/".join(f"{e[k][s]:.3g}" for s in ("first", "last", "min")) for k in keys]
        lines.append(f"{label:>4}  " + "  ".join(f"{c:>22}" for c in cells))
    lines.append("3. validation signal shares (chosen checkpoint)")
    for kind in ("greedy", "sampled"):
        cols = sorted(p["signal_shares"][kind], key=float)
        lines.append(f"{kind:>7} fold " + " ".join(f"{c:>6}" for c in cols))
        rows = [(_label(f), f["signal_shares"][kind]) for f in d["folds"]]
        for label, s in rows + [("pool", p["signal_shares"][kind])]:
            lines.append(f"{'':>7} {label:>4} " + " ".join(f"{s.get(c, 0.0):6.3f}" for c in cols))
    lines.append("4. validation correlation with the next bar's log return (pearson/spearman)")
    ckeys = list(p["correlation_with_next_return"])
    lines.append(
        "fold " + " ".join(f"{k.replace('_bull_minus_bear', ' P(b)-P(s)'):>20}" for k in ckeys)
    )
    rows = [(_label(f), f["correlation_with_next_return"]) for f in d["folds"]]
    for label, c in rows + [("mean", p["correlation_with_next_return"])]:
        cells = [f"{_f(c[k]['pearson'], '+.3f')}/{_f(c[k]['spearman'], '+.3f')}" for k in ckeys]
        lines.append(f"{label:>4} " + " ".join(f"{x:>20}" for x in cells))
    ratios = " ".join(f"{f['critic_td_std_over_return_std']:.3g}" for f in d["folds"])
    lines.append(f"std(gamma V' - V) / std(next return), per fold: {ratios}")
    vn = " ".join(
        f"{f['valuenorm_std']['divided_by']:.3g}/{f['valuenorm_std']['target_std']:.3g}"
        for f in d["folds"]
    )
    lines.append(f"ValueNorm: std divided by / value targets' std, per fold: {vn}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; exit 2 with one line on a folder it cannot diagnose."""
    parser = argparse.ArgumentParser(
        prog="python -m marl_jax.diagnose", description=__doc__.splitlines()[0]
    )
    parser.add_argument("dirs", nargs="+", help="walk-forward folders (their --out)")
    parser.add_argument("--out", help=f"a folder to write {DIAGNOSIS} into")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)

    def body() -> int:
        results = {d: diagnose(d) for d in args.dirs}
        print("\n\n".join(format_report(d, r) for d, r in results.items()))
        if args.out:
            record = {"uniform_entropy": LN3, "walkforwards": results}
            atomic_write_text(Path(args.out) / DIAGNOSIS, json.dumps(record, indent=2) + "\n")
        return 0

    return cli_main(body)


if __name__ == "__main__":
    sys.exit(main())
