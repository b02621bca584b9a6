"""Walk-forward folds whose policy is an ensemble of seeds (the config's ``ensemble`` K > 1).

Each fold trains ``K`` members, each an ordinary fold run in ``OUT/fold_F/member_I`` (its own
checkpoints, choice on validation, test run and ``fold.json``, so a killed fold continues from
the member it stopped in). Member ``I`` of a walk-forward with ``seed`` S trains with seed
``S * K + I``: the members of different seeds never overlap, and the members of seed 0 are the
single runs of seeds ``0 .. K - 1``. Each member chooses its checkpoint on its own validation
score (and, under ``--gate``, its own baseline), so nothing is chosen on the test fold. The
ensemble's position at each test bar is the mean of the members' positions, entered from
flat and charged the environment's costs on its own changes (a mean of positions trades less
than the members did). ``fold.json`` lists each member's seed, choice and test figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from marl_jax.config import Config
from marl_jax.env import data as bar_data
from marl_jax.env import evaluate
from marl_jax.run.ensemble import member_config, member_seed
from marl_jax.run.rundir import MEMBER_DIR, TENSORBOARD, RunLock
from marl_jax.run.tracking import NO_TRACKER, Tracker, tracked
from marl_jax.walkforward.fold_run import (
    DEFAULT_SELECT,
    finish_fold,
    fold_envs,
    load_fold,
    run_fold,
    with_test_baselines,
)
from marl_jax.walkforward.folds import Fold

__all__ = ["run_ensemble_fold"]


def run_ensemble_fold(
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
    """Trains and tests the ``cfg.ensemble`` members of ``fold`` (each a nested run of ``tracker``),
    then scores the mean of their test positions (skipped when the fold is finished);
    returns :func:`~marl_jax.walkforward.fold_run.load_fold`'s pair."""
    size = cfg.ensemble
    done = load_fold(root)
    if done is not None:
        return done
    root.mkdir(parents=True, exist_ok=True)
    with RunLock(root):
        members, positions = [], []
        for i in range(size):
            seed = member_seed(cfg.seed, size, i)
            if progress:
                print(f"  member {i + 1}/{size} (seed {seed})", flush=True)
            member_root = root / MEMBER_DIR.format(i)
            child = tracker.child()
            with tracked(child, f"fold {fold.index} member {i}", member_root / TENSORBOARD):
                summary, arrays = run_fold(
                    member_config(cfg, i),
                    bars,
                    fold,
                    member_root,
                    progress=progress,
                    oracle=oracle,
                    select_by=select_by,
                    gate=gate,
                    tracker=child,
                )
            positions.append(np.asarray(arrays["policy"]["positions"], dtype=np.float64))
            members.append(_member_row(i, seed, summary))
        envs = fold_envs(cfg, bars, fold, oracle)
        mean = evaluate.simulate(np.mean(positions, axis=0), envs.test)
        runs = with_test_baselines(mean, envs, cfg.seed)
        selection = {
            "metric": f"validation {select_by}",
            "over": f"each member's checkpoints; the policy is the mean of the {size} members' "
            "test positions",
            "ensemble": size,
            "members": members,
        }
        return finish_fold(root, fold, bars, selection, runs)


def _member_row(index: int, seed: int, summary: dict) -> dict:
    """What ``fold.json`` keeps of one member: its seed, its choice and its test figures."""
    test = summary["test"]["policy"]
    row = {
        "member": index,
        "seed": seed,
        "selection": summary["selection"],
        "test": {k: test[k] for k in ("active_ir", "sharpe", "turnover") if k in test},
    }
    if summary.get("capture") is not None:
        row["capture"] = summary["capture"]
    return row
