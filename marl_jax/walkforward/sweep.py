"""Walk-forward folds that train a sweep (``--sweep FILE``) instead of one run.

Each fold trains the sweep's members on its train environment (its own span and
normalisation) with the sweep layer's population program
(:class:`~marl_jax.sweep.group.GroupTrainer`: one compiled program per group of members, its
checkpoints in ``OUT/fold_K/checkpoints/gG``, so a killed fold continues from them). Every
member's final state is scored on the fold's validation split by the walk-forward's metric
(``select_by``, one of :data:`~marl_jax.walkforward.folds.SELECT_METRICS`); the best member
(the lowest index on a tie) is the only one run over the test fold, once. ``fold.json``
records every member's validation scores, the chosen member's swept values and
hyperparameters, and the test policy's Deflated Sharpe Ratio against the members' validation
Sharpe ratios (``n_trials``: the members scored). ``chosen_weights.npz`` holds the chosen
member's model variables.

Sweep keys under ``env.`` are refused: the folds and their environments are laid out from
the config's ``env`` section. Grid, random and PBT strategies are honoured (PBT ranks members
on their training metric, as in a sweep; the walk-forward then chooses on validation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from pydantic import ValidationError

from marl_jax import metrics
from marl_jax.config import Config
from marl_jax.env import data as bar_data
from marl_jax.env import evaluate
from marl_jax.files import atomic_write_text, atomic_write_with
from marl_jax.hparams import HPARAM_NAMES
from marl_jax.run.rundir import RunLock
from marl_jax.sweep.group import GroupResult, GroupTrainer
from marl_jax.sweep.members import Group, expand, plain
from marl_jax.sweep.options import SweepOptions
from marl_jax.sweep.spec import SweepError, SweepSpec, load_sweep
from marl_jax.walkforward.fold_run import (
    DEFAULT_SELECT,
    EVAL_BATCH,
    FoldEnvs,
    apply_gate,
    finish_fold,
    fold_envs,
    greedy_policy_of,
    load_fold,
    run_test_fold,
)
from marl_jax.walkforward.folds import Fold, WalkForwardError

__all__ = ["CHOSEN_WEIGHTS", "FoldSweep", "pooled_trials"]

CHOSEN_WEIGHTS = "chosen_weights.npz"


@dataclasses.dataclass(frozen=True)
class FoldSweep:
    """A sweep every fold trains: the spec (``source`` its file) and its compiled groups."""

    spec: SweepSpec
    groups: tuple[Group, ...]

    @classmethod
    def load(cls, path: str, cfg: Config) -> FoldSweep:
        """The sweep file ``path`` over ``cfg``; a :class:`~marl_jax.errors.MarlJaxError`
        with one line when it is missing, malformed or asks for what a walk-forward cannot
        do."""
        return cls.build(load_sweep(path), cfg)

    @classmethod
    def from_record(cls, record: dict, cfg: Config) -> FoldSweep:
        """The sweep as :meth:`record` wrote it into ``walkforward.json`` (for ``--resume``)."""
        try:
            spec = SweepSpec.model_validate(record["spec"])
        except (ValidationError, KeyError, TypeError):
            raise WalkForwardError(
                f"walkforward.json: its sweep record is not readable ({record.get('file')}); "
                "start a new walk-forward in another --out"
            ) from None
        spec._source = str(record.get("file"))
        return cls.build(spec, cfg)

    @classmethod
    def build(cls, spec: SweepSpec, cfg: Config) -> FoldSweep:
        for key in spec.keys:
            if key.startswith("env."):
                raise SweepError(
                    f"{spec.source}: {key}: a walk-forward lays out its folds and environments "
                    "from the config's env section, so env keys cannot be swept; set it with "
                    "--set and run one walk-forward per value"
                )
        return cls(spec, tuple(expand(cfg, spec)))

    def record(self) -> dict:
        """What ``walkforward.json`` keeps of the sweep (enough to rebuild it on resume)."""
        return {
            "file": self.spec.source,
            "spec": self.spec.model_dump(mode="json", exclude_unset=True),
            "members": sum(len(g.members) for g in self.groups),
        }

    def train(self, envs: FoldEnvs, root: Path, *, progress: bool) -> list[GroupResult]:
        """Trains (or continues) every group on ``envs.train`` in ``root``."""
        options = SweepOptions(out=root, resume=True, progress=progress)
        metrics_path = root / "metrics.jsonl"
        if not metrics_path.exists():
            atomic_write_text(metrics_path, "")
        return [
            GroupTrainer(
                i, group, self.spec, options, None, metrics_path, train_params=envs.train
            ).train()
            for i, group in enumerate(self.groups)
        ]

    def run_fold(
        self,
        cfg: Config,
        bars: bar_data.Bars,
        fold: Fold,
        root: Path,
        *,
        progress: bool = False,
        oracle: np.ndarray | None = None,
        select_by: str = DEFAULT_SELECT,
        gate: bool = False,
    ) -> tuple[dict, dict]:
        """Trains the members on ``fold``, chooses one on validation and tests it once (with
        the oracle baseline where ``oracle`` is given); skipped when the fold is finished;
        returns :func:`load_fold`'s pair."""
        done = load_fold(root)
        if done is not None:
            return done
        envs = fold_envs(cfg, bars, fold, oracle)  # a WalkForwardError "fold K: ..." when it cannot
        root.mkdir(parents=True, exist_ok=True)
        with RunLock(root):
            results = self.train(envs, root, progress=progress)
            members, best = _score_members(results, envs, select_by)
            if best is None:
                raise WalkForwardError(
                    f"fold {fold.index}: every member of the sweep failed (non-finite "
                    f"training); see {root / 'metrics.jsonl'}"
                )
            result, pos = best
            policy_of = greedy_policy_of(result.program.algo)
            state = result.member_state(pos)
            runs = run_test_fold(policy_of(state), envs, cfg.seed)
            val_sharpes = [m["validation"]["sharpe"] for m in members if m["status"] == "ok"]
            runs["policy"] = _deflated(runs, val_sharpes, envs)
            chosen = next(m for m in members if m["member"] == result.members[pos].index)
            _save_weights(root / CHOSEN_WEIGHTS, result, state)
            selection = {
                "metric": f"validation {select_by}",
                "over": "the sweep's members (final states)",
                "sweep": self.spec.source,
                **{k: chosen[k] for k in ("member", "group", "seed", "values", "hparams")},
                "n_trials": len(val_sharpes),
                "members": members,
            }
            if gate:
                apply_gate(selection, runs, chosen["validation"][select_by], envs.val, select_by)
            return finish_fold(root, fold, bars, selection, runs)


def _score_members(
    results: Sequence[GroupResult], envs: FoldEnvs, select_by: str
) -> tuple[list[dict], tuple[GroupResult, int] | None]:
    """Every member's validation scores, and the (group, position) of the best live one by
    ``select_by``."""
    rows, best, best_key = [], None, None
    for result in results:
        policy_of = greedy_policy_of(result.program.algo)
        for pos, member in enumerate(result.members):
            hp = result.state.hparams
            row = {
                "member": member.index,
                "group": result.group,
                "seed": member.seed,
                "values": {k: plain(v) for k, v in member.values.items()},
                "hparams": {k: float(np.asarray(getattr(hp, k))[pos]) for k in HPARAM_NAMES},
                "status": "failed" if member.index in result.failed else "ok",
                "lineage": result.lineage.of(member.index),  # PBT's copies (empty otherwise)
            }
            if row["status"] == "ok":
                val = evaluate.run_policy(
                    policy_of(result.member_state(pos)), envs.val, batch_size=EVAL_BATCH
                )
                names = dict.fromkeys((select_by, "total_log_return", "sharpe"))
                row["validation"] = {k: float(val.metrics[k]) for k in names}
                score = row["validation"][select_by]
                key = (score if math.isfinite(score) else -math.inf, -member.index)
                if best_key is None or key > best_key:
                    best, best_key = (result, pos), key
            rows.append(row)
    return rows, best


def _deflated(
    runs: dict[str, evaluate.EvalRun], trial_sharpes: Sequence[float], envs: FoldEnvs
) -> evaluate.EvalRun:
    """The policy's test run with ``dsr`` and ``n_trials`` against the members' validation
    Sharpe ratios (:func:`marl_jax.metrics.summary`'s ``trial_sharpes``)."""
    run = runs["policy"]
    ppy = envs.test.periods_per_year
    scores = metrics.summary(
        run.rewards, run.positions, runs["buy_and_hold"].rewards, ppy, trial_sharpes=trial_sharpes
    )
    return dataclasses.replace(
        run, metrics={**run.metrics, "dsr": scores["dsr"], "n_trials": scores["n_trials"]}
    )


def _save_weights(path: Path, result: GroupResult, state) -> None:
    """The chosen member's model variables, one array per ``/``-joined path."""
    variables = result.program.algo.model_variables(state)
    flat = {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys): np.asarray(v)
        for keys, v in jax.tree_util.tree_flatten_with_path(variables)[0]
    }
    atomic_write_with(path, lambda fh: np.savez(fh, **flat))


def pooled_trials(summaries: Sequence[dict]) -> list[float] | None:
    """The trials of the stitched test folds' DSR: each member's validation Sharpe ratio
    averaged over the folds (members that failed in any fold left out); None without a
    sweep."""
    per_member: dict[int, list[float]] = {}
    for summary in summaries:
        members = summary["selection"].get("members")
        if members is None:
            return None
        for m in members:
            per_member.setdefault(m["member"], []).append(
                m["validation"]["sharpe"] if m["status"] == "ok" else math.nan
            )
    means = [float(np.mean(v)) for v in per_member.values() if len(v) == len(summaries)]
    return [s for s in means if math.isfinite(s)]
