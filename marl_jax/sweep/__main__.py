"""``python -m marl_jax.sweep``: seeds x hyperparameters x PBT as sharded populations
(argument parsing; the work is in :mod:`marl_jax.sweep.sweeper`).

    python -m marl_jax.sweep --config configs/quickstart.yaml \\
        --sweep configs/sweeps/quickstart.yaml --out runs/sweep1

Several hosts: every process runs the same command. ``jax.distributed.initialize()`` finds
SLURM and Open MPI jobs and TPU pods by itself; elsewhere give ``--coordinator HOST:PORT
--num-processes N --process-id I``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from marl_jax.cli import add_tracker_arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marl_jax.sweep",
        description="Train a population (seeds x hyperparameters, or PBT) on every device",
    )
    p.add_argument(
        "--config",
        default="quickstart",
        help="base YAML config, or a shipped config's name (default quickstart)",
    )
    p.add_argument("--sweep", help="sweep file (default: one member per seed of the config)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="add or replace a grid key of the sweep",
    )
    p.add_argument("--out", default="runs/sweep", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out")
    p.add_argument(
        "--export-top", type=int, default=1, metavar="K", help="export the top K members"
    )
    p.add_argument(
        "--members-per-device",
        type=int,
        metavar="M",
        help="members each device trains at once (vmapped); more run in waves. Default: all "
        "of a device's members, or what fits in its memory on a GPU",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host: process 0's address")
    p.add_argument("--num-processes", type=int, metavar="N", help="multi-host: processes")
    p.add_argument("--process-id", type=int, metavar="I", help="multi-host: this process")
    add_tracker_arguments(p)
    return p


def _cluster() -> bool:
    """Whether this process was started by a launcher JAX detects (SLURM, Open MPI)."""

    def count(name: str) -> int:
        value = os.environ.get(name, "1")
        return int(value) if value.isdigit() else 1

    return count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1


def init_distributed(args: argparse.Namespace) -> None:
    """Joins the other processes of a multi-host sweep (nothing for one process)."""
    import jax

    explicit = args.coordinator or args.num_processes or args.process_id is not None
    if not explicit and not _cluster():
        return
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        missing = [
            flag
            for flag, value in (
                ("--coordinator", args.coordinator),
                ("--num-processes", args.num_processes),
                ("--process-id", args.process_id),
            )
            if value is None
        ]
        if missing:
            from marl_jax.sweep.coordination import SweepRunError

            raise SweepRunError(
                f"multi-host needs --coordinator, --num-processes and --process-id together; "
                f"missing {', '.join(missing)}"
            )
    try:
        if explicit:
            jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        else:
            jax.distributed.initialize()
    except Exception as err:  # the coordinator service raises several kinds
        from marl_jax.sweep.coordination import SweepRunError

        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SweepRunError(
            f"joining the other processes failed ({first}); check --coordinator HOST:PORT "
            "(reachable from every process), --num-processes and --process-id"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from marl_jax.errors import cli_main

    return cli_main(lambda: _sweep(args))


def _sweep(args: argparse.Namespace) -> int:
    init_distributed(args)
    from marl_jax.cli import tracker_from_args
    from marl_jax.config import load_config
    from marl_jax.run.cache import enable_compilation_cache
    from marl_jax.run.rundir import TENSORBOARD
    from marl_jax.run.tracking import NO_TRACKER, tracked
    from marl_jax.sweep.coordination import SweepRunError, is_writer
    from marl_jax.sweep.options import SweepOptions
    from marl_jax.sweep.spec import load_sweep
    from marl_jax.sweep.sweeper import log_sweep, run_sweep

    enable_compilation_cache()
    if args.export_top < 1:
        raise SweepRunError(f"--export-top must be at least 1, got {args.export_top}")
    if args.members_per_device is not None and args.members_per_device < 1:
        raise SweepRunError(
            f"--members-per-device must be at least 1, got {args.members_per_device}"
        )
    cfg = load_config(args.config, args.set)
    spec = load_sweep(args.sweep, args.grid)
    options = SweepOptions(
        out=Path(args.out),
        resume=args.resume,
        progress=not args.no_progress,
        export_top=args.export_top,
        members_per_device=args.members_per_device,
    )
    # Process 0 logs the sweep; a missing package fails before training.
    tracker = tracker_from_args(args) if is_writer() else NO_TRACKER
    out = Path(args.out)
    with tracked(tracker, out.resolve().name, out / TENSORBOARD):
        run_sweep(cfg, spec, options, args.config, tracker)
        print(f"sweep folder: {args.out}")
        log_sweep(tracker, cfg, spec, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
