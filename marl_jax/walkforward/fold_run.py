"""Training, selecting and testing one walk-forward fold with the run layer (:mod:`marl_jax.run`).

A fold is a run directory ``OUT/fold_K``: ``config.yaml``, ``checkpoints/``, ``metrics.jsonl``
and ``learning_curve.png`` as a training run leaves them, trained by
:func:`marl_jax.run.loop.train_loop` (so a killed fold continues from its latest checkpoint).
Then every kept checkpoint is scored on the validation split, the best is chosen, and only that
one is run over the test fold, once. ``fold.json`` (written last) marks the fold finished.

Leakage: the train and validation environments are built from the bars up to the validation
split's last bar, the test environment from the bars up to the test fold's last bar, and the
normalisation is fitted on the part trained on. No later bar can reach a fold's training,
normalisation or selection. Where the bar file was planted (:mod:`marl_jax.run.planted`), the
test fold adds the ``oracle`` baseline (``sign(s)`` of the sidecar's signal) and ``fold.json``
the policy's ``capture``. Every environment's arrays are padded to the length of the whole
file (padding is never read), so all folds share one compiled update.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from marl_jax.config import Config
from marl_jax.env import data as bar_data
from marl_jax.env import evaluate, market
from marl_jax.env.features import FeatureNorm, compute_features
from marl_jax.files import atomic_write_text, atomic_write_with
from marl_jax.mappo import MAPPO, TrainState
from marl_jax.run import loop
from marl_jax.run.checkpointer import TrainCheckpointer
from marl_jax.run.metrics_log import read_metrics_log
from marl_jax.run.plots import plot_learning_curve
from marl_jax.run.report import with_capture
from marl_jax.run.rundir import RunDir, RunError, RunLock
from marl_jax.run.setup import Run, env_params_for
from marl_jax.run.steps import restore_state
from marl_jax.run.tracking import NO_TRACKER, Tracker
from marl_jax.walkforward.folds import DEFAULT_SELECT, SELECT_METRICS, Fold, WalkForwardError

__all__ = [
    "EVAL_BATCH",
    "FOLD_RESULT",
    "DEFAULT_SELECT",
    "SELECT_METRIC",
    "SELECT_METRICS",
    "TEST_RUNS",
    "FoldEnvs",
    "GATE_BASELINES",
    "apply_gate",
    "finish_fold",
    "fold_envs",
    "greedy_policy_of",
    "load_fold",
    "rank_checkpoints",
    "run_fold",
    "run_test_fold",
    "select_checkpoint",
    "train_fold",
    "with_test_baselines",
]

FOLD_RESULT = "fold.json"
TEST_RUNS = "test_runs.npz"
# What a gated fold may hold instead of its best checkpoint (the first on a tie).
GATE_BASELINES = ("buy_and_hold", "flat")
# What walk-forwards recorded before the choice of SELECT_METRICS existed ranked by (their
# --resume keeps it).
SELECT_METRIC = "total_log_return"
# The evaluator pads every chunk to this many bars, so splits of any length share one program.
EVAL_BATCH = 256


@dataclasses.dataclass(frozen=True)
class FoldEnvs:
    """A fold's environments; ``train`` carries the normalisation fitted on its own bars;
    ``oracle`` is the file's planted signal (every bar of the file), where there is one."""

    train: market.EnvParams
    val: market.EnvParams
    test: market.EnvParams
    norm: FeatureNorm
    oracle: np.ndarray | None = None


def _padded(params: market.EnvParams, n: int) -> market.EnvParams:
    """``params`` with every per-bar array padded with zeros to ``n`` bars."""
    t = params.features.shape[0]

    def pad(x):
        if x.ndim == 0 or x.shape[0] != t or t == n:
            return x
        return jnp.pad(x, [(0, n - t)] + [(0, 0)] * (x.ndim - 1))

    return jax.tree.map(pad, params)


def fold_envs(
    cfg: Config, bars: bar_data.Bars, fold: Fold, oracle: np.ndarray | None = None
) -> FoldEnvs:
    """The train, validation and test environments of ``fold`` (see the module docstring),
    with the planted signal ``oracle`` of ``bars`` where there is one."""
    n = len(bars)
    seen = bars[: fold.val[1]]
    raw = compute_features(seen)
    # norm=None fits on the bounds; return_stats=None takes the reward's from the bounds.
    where = {"where": f"fold {fold.index}", "error": WalkForwardError}
    train = env_params_for(cfg, seen, "train", None, bounds=fold.train, features=raw, **where)
    norm = market.get_normalisation(train)
    stats = market.get_return_stats(train)  # the train span's, as for norm
    val = env_params_for(
        cfg, seen, "val", norm, bounds=fold.val, features=raw, return_stats=stats, **where
    )
    test = env_params_for(
        cfg, bars[: fold.test[1]], "test", norm, bounds=fold.test, return_stats=stats, **where
    )
    return FoldEnvs(_padded(train, n), _padded(val, n), _padded(test, n), norm, oracle)


def greedy_policy_of(algo: MAPPO) -> Callable[[TrainState], Callable]:
    """``policy(state)``: the evaluator's greedy policy of a training state (compiled once)."""

    def act(state: TrainState, obs: Mapping[str, jax.Array]) -> jax.Array:
        return algo.act(state, obs)[0]

    return lambda state: evaluate.TracedPolicy(act, state)


def train_fold(
    cfg: Config,
    root: Path,
    envs: FoldEnvs,
    bars: bar_data.Bars,
    *,
    progress: bool = False,
    tracker: Tracker = NO_TRACKER,
) -> tuple[Run, TrainState]:
    """Trains (or continues) the run in ``root`` on ``envs.train``, each update's metrics also
    to ``tracker``; the caller releases ``run.lock``."""
    lock = RunLock(root).acquire()
    try:
        run_dir = RunDir(root, cfg.checkpoint.dir)
        run = Run(cfg, run_dir, lock, bars, envs.norm, envs.train, MAPPO(cfg, market.MARKET), None)
        state = loop.train_loop(run, resume=True, progress=progress, tracker=tracker)
    except BaseException:
        lock.release()
        raise
    return run, state


def select_checkpoint(
    run: Run,
    state: TrainState,
    val: market.EnvParams | Mapping[str, market.EnvParams],
    policy_of,
    metric: str = DEFAULT_SELECT,
) -> tuple[int, TrainState, dict[int, float]]:
    """The kept checkpoint with the best validation ``metric`` (one of :data:`SELECT_METRICS`;
    the later one on a tie; summed over the instruments when ``val`` maps each to its
    validation split): ``(step, state, {step: score})``."""
    vals = list(val.values()) if isinstance(val, Mapping) else [val]
    k = run.cfg.checkpoint
    ckpt = TrainCheckpointer(
        run.dir.checkpoints, max_to_keep=k.max_to_keep, best_metric=k.best_metric, read_only=True
    )
    try:
        validation, states = {}, {}
        for step in ckpt.all_steps():
            restored, _ = restore_state(ckpt, run.algo, state, step)
            policy = policy_of(restored)
            validation[step] = [
                evaluate.run_policy(policy, v, batch_size=EVAL_BATCH).metrics for v in vals
            ]
            states[step] = restored
    finally:
        ckpt.close()
    if not validation:
        raise RunError(f"{run.dir.checkpoints}: no checkpoint to choose from")
    best, scores = rank_checkpoints(validation, metric)
    return best, states[best], scores


def rank_checkpoints(
    validation: Mapping[int, Sequence[Mapping[str, float]]], metric: str
) -> tuple[int, dict[int, float]]:
    """``(best step, {step: score})``: each step's score is ``metric`` summed over its
    validation metrics (one dict per instrument); the best is the highest, the later step on a
    tie."""
    scores = {step: sum(float(m[metric]) for m in parts) for step, parts in validation.items()}
    return max(scores, key=lambda s: (scores[s], s)), scores


def apply_gate(
    selection: dict, runs: dict[str, evaluate.EvalRun], score: float, val, metric: str
) -> None:
    """The gate (``--gate``): where no checkpoint beats buy-and-hold and flat on validation, the
    fold holds the best of them instead. Scores :data:`GATE_BASELINES` on ``val`` (a split, or
    a mapping of instruments' splits, summed) by ``metric``; where the best of them scores at
    least ``score`` (the chosen checkpoint's), its test run replaces ``runs["policy"]``.
    ``selection["gate"]`` records their scores and what the fold ``held`` (a baseline's name,
    or ``"checkpoint"``)."""
    vals = list(val.values()) if isinstance(val, Mapping) else [val]
    scores = {
        name: sum(float(evaluate.run_baseline(name, v).metrics[metric]) for v in vals)
        for name in GATE_BASELINES
    }
    best = max(GATE_BASELINES, key=lambda name: scores[name])
    held = best if scores[best] >= score else "checkpoint"
    if held != "checkpoint":
        runs["policy"] = runs[held]
    selection["gate"] = {"validation": scores, "held": held}


def run_test_fold(policy_fn: Callable, envs: FoldEnvs, seed: int) -> dict[str, evaluate.EvalRun]:
    """The one read of the test fold: the chosen policy and every baseline
    (:func:`with_test_baselines`)."""
    policy = evaluate.run_policy(policy_fn, envs.test, batch_size=EVAL_BATCH)
    return with_test_baselines(policy, envs, seed)


def with_test_baselines(
    policy: evaluate.EvalRun, envs: FoldEnvs, seed: int
) -> dict[str, evaluate.EvalRun]:
    """``policy``'s test run, then every baseline's on the test fold (the linear one fitted on
    the fold's train span; the oracle where the file was planted)."""
    linear = evaluate.LinearBaseline.fit(envs.train)
    baselines = evaluate.evaluate_baselines(envs.test, seed=seed, linear=linear, oracle=envs.oracle)
    return {"policy": policy, **baselines}


def _save_runs(path: Path, runs: dict[str, evaluate.EvalRun]) -> None:
    arrays = {"bar_index": next(iter(runs.values())).bar_index}
    for name, r in runs.items():
        arrays.update({f"{name}/positions": r.positions, f"{name}/rewards": r.rewards})
        arrays[f"{name}/pnl"] = r.pnl
    atomic_write_with(path, lambda fh: np.savez(fh, **arrays))


def load_fold(root: Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]] | None:
    """A finished fold's ``fold.json`` and per-bar test arrays (``{name: {positions, rewards,
    pnl}}`` plus ``"bar_index"``), or None when the fold is not finished."""
    result = root / FOLD_RESULT
    if not result.is_file():
        return None
    summary = json.loads(result.read_text())
    with np.load(root / TEST_RUNS) as z:
        arrays: dict = {"bar_index": z["bar_index"]}
        for key in z.files:
            if "/" in key:
                name, field = key.split("/")
                arrays.setdefault(name, {})[field] = z[key]
    return summary, arrays


def finish_fold(
    root: Path,
    fold: Fold,
    bars: bar_data.Bars,
    selection: dict,
    runs: dict[str, evaluate.EvalRun],
) -> tuple[dict, dict]:
    """Writes a tested fold's ``test_runs.npz`` and ``fold.json`` (last: it marks the fold
    finished) with ``selection`` (what was chosen on validation); returns :func:`load_fold`'s
    pair."""
    ts = bars.timestamp
    summary = {
        **fold.to_dict(),
        "dates": {
            part: [str(pd.Timestamp(ts[a])), str(pd.Timestamp(ts[b - 1]))]
            for part, (a, b) in (("train", fold.train), ("val", fold.val), ("test", fold.test))
        },
        "normalisation_fitted_on": fold.train,
        "selection": selection,
        "test": {name: r.metrics for name, r in runs.items()},
    }
    summary.update(with_capture(summary["test"]["policy"], summary["test"]))
    _save_runs(root / TEST_RUNS, runs)
    atomic_write_text(root / FOLD_RESULT, json.dumps(summary, indent=2) + "\n")
    return load_fold(root)


def run_fold(
    cfg: Config,
    bars: bar_data.Bars,
    fold: Fold,
    root: Path,
    *,
    progress: bool = False,
    oracle: np.ndarray | None = None,
    select_by: str = DEFAULT_SELECT,
    gate: bool = False,
    tracker: Tracker = NO_TRACKER,
) -> tuple[dict, dict]:
    """Trains, selects on validation by ``select_by`` (then :func:`apply_gate` where ``gate``)
    and tests one fold (skipped when already finished), with the oracle baseline where
    ``oracle`` (the planted signal of ``bars``) is given, each update's metrics also to
    ``tracker``; returns :func:`load_fold`'s pair."""
    done = load_fold(root)
    if done is not None:
        return done
    envs = fold_envs(cfg, bars, fold, oracle)  # a WalkForwardError "fold K: ..." when it cannot
    run, state = train_fold(
        cfg, root, envs, bars[: fold.val[1]], progress=progress, tracker=tracker
    )
    try:
        policy_of = greedy_policy_of(run.algo)
        step, chosen, scores = select_checkpoint(run, state, envs.val, policy_of, select_by)
        runs = run_test_fold(policy_of(chosen), envs, cfg.seed)
        rows = read_metrics_log(run.dir.metrics)
        if rows:
            plot_learning_curve(rows, run.dir.learning_curve)
        selection = {
            "metric": f"validation {select_by}",
            "step": step,
            "scores": {str(s): v for s, v in scores.items()},
        }
        if gate:
            apply_gate(selection, runs, scores[step], envs.val, select_by)
        return finish_fold(root, fold, bars, selection, runs)
    finally:
        run.lock.release()
