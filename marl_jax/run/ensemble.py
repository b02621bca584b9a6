"""A training run of an ensemble (the config's ``ensemble`` K > 1): K runs and their mean.

``OUT/config.yaml`` holds the ensemble's config and ``OUT/ensemble.json`` its members (both
written first); member ``I`` is an ordinary run in ``OUT/member_I`` with seed ``seed * K + I``
and ``ensemble: 1`` (its checkpoints, report and ``strategic_marl.pt``). Then the ensemble is
evaluated on the test split as :mod:`marl_jax.run.backtesting` evaluates any policy: its
position at each bar is the mean of the members' (:class:`~marl_jax.policy.Ensemble`), and
``OUT/report.json``, ``returns.csv`` and ``equity_curve.png`` are its. ``--resume`` skips the
members that finished, continues the one that was killed and trains the rest.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from marl_jax.config import Config, config_yaml
from marl_jax.files import atomic_write_text
from marl_jax.run.backtesting import BacktestSpec, backtest
from marl_jax.run.deploy import load_policy
from marl_jax.run.rundir import (
    CONFIG,
    ENSEMBLE,
    MEMBER_DIR,
    REPORT,
    TENSORBOARD,
    RunDir,
    RunError,
    RunLock,
)
from marl_jax.run.session import train_run
from marl_jax.run.setup import SYNTHETIC, RunSpec, load_markets, load_oracles
from marl_jax.run.tracking import NO_TRACKER, Tracker, tracked

__all__ = ["EnsembleResult", "member_config", "member_seed", "train_ensemble"]


@dataclasses.dataclass
class EnsembleResult:
    """What a finished ensemble run leaves: its folder, config, members and report."""

    out: Path
    cfg: Config
    members: list[Path]
    report: dict


def member_seed(seed: int, size: int, index: int) -> int:
    """The seed member ``index`` of an ensemble of ``size`` with ``seed`` trains with: the
    members of different seeds never overlap, and those of seed 0 are seeds ``0 .. K - 1``."""
    return seed * size + index


def member_config(cfg: Config, index: int) -> Config:
    """The config member ``index`` of ``cfg``'s ensemble trains with: one model, its seed."""
    seed = member_seed(cfg.seed, cfg.ensemble, index)
    return cfg.model_copy(update={"seed": seed, "ensemble": 1})


def train_ensemble(
    spec: RunSpec, cfg: Config, *, progress: bool = True, tracker: Tracker = NO_TRACKER
) -> EnsembleResult:
    """Trains (or continues, under ``spec.resume``) the ensemble ``cfg`` (``spec``'s resolved
    config) in ``spec.out``, each member a nested run of ``tracker``, then evaluates it."""
    root = Path(spec.out)
    if cfg.env.data_paths and len(cfg.env.data_paths) > 1:
        raise RunError(
            f"ensemble {cfg.ensemble} with several --data files: not supported; set "
            "ensemble=1, or train on one file"
        )
    root.mkdir(parents=True, exist_ok=True)
    with RunLock(root):
        if not spec.resume:
            if (root / ENSEMBLE).is_file() or RunDir(root, cfg.checkpoint.dir).holds_a_run():
                raise RunError(
                    f"{root} already holds a run; continue it with --resume or choose another --out"
                )
            atomic_write_text(root / CONFIG, config_yaml(cfg))
            members = [
                {"dir": MEMBER_DIR.format(i), "seed": member_seed(cfg.seed, cfg.ensemble, i)}
                for i in range(cfg.ensemble)
            ]
            record = {"size": cfg.ensemble, "seed": cfg.seed, "members": members}
            atomic_write_text(root / ENSEMBLE, json.dumps(record, indent=2) + "\n")
        else:  # --total-timesteps may have lengthened it
            atomic_write_text(root / CONFIG, config_yaml(cfg))
        dirs = [root / MEMBER_DIR.format(i) for i in range(cfg.ensemble)]
        for i, member in enumerate(dirs):
            if progress:
                seed = member_seed(cfg.seed, cfg.ensemble, i)
                print(f"member {i + 1}/{cfg.ensemble} (seed {seed}): {member}", flush=True)
            child = tracker.child()
            with tracked(child, f"member {i}", member / TENSORBOARD):
                _train_member(spec, root, member, i, cfg, progress, child)
        policy = load_policy(str(root))
        markets = load_markets(cfg, say=None)
        bars = next(iter(markets.values()))
        oracle = next(iter(load_oracles(cfg, markets).values()))
        source = cfg.env.data_path or SYNTHETIC
        spec_test = BacktestSpec("test")
        report = backtest(
            policy, bars, spec_test, out=root, source=source, oracle=oracle, command="train"
        )
    return EnsembleResult(root, cfg, dirs, report)


def _train_member(
    spec: RunSpec,
    root: Path,
    member: Path,
    index: int,
    cfg: Config,
    progress: bool,
    tracker: Tracker,
) -> None:
    """Member ``index``: skipped when finished (unless ``spec`` lengthens it), continued when
    started, else trained from the ensemble's config with its own seed."""
    started = (member / CONFIG).is_file()
    if started and (member / REPORT).is_file() and spec.total_timesteps is None:
        return
    if started:
        member_spec = RunSpec(out=str(member), resume=True, total_timesteps=spec.total_timesteps)
    else:
        member_spec = RunSpec(
            out=str(member),
            config=str(root / CONFIG),
            overrides=("ensemble=1",),
            init_from=spec.init_from,
            seed=member_seed(cfg.seed, cfg.ensemble, index),
        )
    train_run(member_spec, progress=progress, tracker=tracker)
