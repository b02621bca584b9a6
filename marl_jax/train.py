"""``python -m marl_jax.train``: train the Strategic MARL agents with MAPPO (argument parsing).

The work is done by :mod:`marl_jax.run`: training runs one jitted update at a time; a checkpoint is
written every ``checkpoint.save_every`` updates, so ``--resume`` continues bit-identically from
the latest one. At the end the run directory holds ``config.yaml``, the checkpoints,
``metrics.jsonl``, ``learning_curve.png``, ``report.json`` (:mod:`marl_jax.run.report`),
``returns.csv``, ``equity_curve.png`` and ``strategic_marl.pt``. A config with ``ensemble``
K > 1 trains K such runs in ``member_0 .. member_K-1`` and reports their mean on the test split
(:mod:`marl_jax.run.ensemble`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from marl_jax.cli import add_data_argument, add_tracker_arguments

DEFAULT_CONFIG = "quickstart"  # minutes on a laptop; strategic_marl_v1 is the full size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marl_jax.train", description="Train the Strategic MARL agents with MAPPO"
    )
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="YAML config file, or a shipped config's name: quickstart (default), real_markets, "
        "strategic_marl_v1",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    add_data_argument(p)
    p.add_argument("--out", default="runs/latest", help="run directory")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (with --total-timesteps: train it for longer)",
    )
    p.add_argument(
        "--init-from",
        metavar="SOURCE",
        help="start from a .pt file, a model directory, a run (RUN, RUN:latest, RUN:STEP) or a "
        "checkpoint step",
    )
    p.add_argument("--seed", type=int, help="random seed (overrides the config)")
    p.add_argument("--total-timesteps", type=int, help="environment steps to train for")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_tracker_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from marl_jax.errors import cli_main

    return cli_main(lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    from marl_jax.cli import tracker_from_args
    from marl_jax.run.cache import enable_compilation_cache

    tracker = tracker_from_args(args)  # a missing package fails before training
    enable_compilation_cache()
    from marl_jax.config import config_to_dict
    from marl_jax.run.ensemble import train_ensemble
    from marl_jax.run.report import format_report
    from marl_jax.run.rundir import TENSORBOARD
    from marl_jax.run.session import train_run
    from marl_jax.run.setup import RunSpec, resolve_config
    from marl_jax.run.tracking import log_outcome, tracked

    spec = RunSpec(
        out=args.out,
        config=args.config,
        overrides=tuple(args.set),
        data=tuple(args.data or ()),
        resume=args.resume,
        init_from=args.init_from,
        seed=args.seed,
        total_timesteps=args.total_timesteps,
    )
    out = Path(args.out)
    cfg = resolve_config(spec)
    with tracked(tracker, out.resolve().name, out / TENSORBOARD):
        if cfg.ensemble > 1:
            ensemble = train_ensemble(spec, cfg, progress=not args.no_progress, tracker=tracker)
            print(format_report(ensemble.report))
            names = ", ".join(m.name for m in ensemble.members)
            print(f"run directory: {ensemble.out} (an ensemble of {names}; each has its .pt)")
            extra = {"command": "train"}
            log_outcome(tracker, ensemble.out, ensemble.report, config_to_dict(cfg), extra)
            return 0
        result = train_run(spec, progress=not args.no_progress, tracker=tracker)
        print(format_report(result.report))
        exported = f" (exported {result.exported.name})" if result.exported else ""
        print(f"run directory: {result.run.out}{exported}")
        config = config_to_dict(result.run.cfg)
        log_outcome(tracker, result.run.out, result.report, config, {"command": "train"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
