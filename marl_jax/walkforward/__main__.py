"""``python -m marl_jax.walkforward``: walk-forward evaluation of a config on one bar file
(argument parsing; the work is done by :mod:`marl_jax.walkforward.driver`).

Each fold trains a run in ``OUT/fold_K`` on its train part, chooses the checkpoint with the best
validation ``--select-by`` (net active IR against buy-and-hold, or net log return), and runs it
once over its test fold; with ``--sweep FILE`` each fold trains the sweep's members as one
population and keeps the member that is best on validation by the same metric. ``OUT`` then
holds ``report.json``, ``returns.csv`` (one row per test bar) and ``equity_curve.png`` (the
stitched test folds against the baselines). A killed walk-forward continues with ``--resume
--out OUT``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from marl_jax.cli import add_data_argument, add_tracker_arguments
from marl_jax.walkforward.folds import DEFAULT_SELECT, SELECT_METRICS

DEFAULT_CONFIG = "quickstart"
# Flags that fix what a walk-forward is; --resume takes them from OUT/walkforward.json.
_LAYOUT_FLAGS = (
    "config",
    "set",
    "data",
    "folds",
    "gap",
    "val_fraction",
    "rolling",
    "sweep",
    "select_by",
    "gate",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marl_jax.walkforward",
        description="Walk-forward evaluation: train on each fold, choose on validation, test once",
    )
    p.add_argument(
        "--config",
        help=f"YAML config file, or a shipped config's name (default {DEFAULT_CONFIG})",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    add_data_argument(p)
    p.add_argument("--folds", type=int, help="number of test folds (default 5)")
    p.add_argument(
        "--gap",
        type=int,
        help="purge in bars between train, validation and test (default window + 1)",
    )
    p.add_argument(
        "--val-fraction", type=float, help="share of each train span used to validate (default 0.2)"
    )
    p.add_argument(
        "--rolling",
        type=int,
        metavar="BARS",
        help="rolling train spans of this many bars (default: expanding from the first bar)",
    )
    p.add_argument(
        "--sweep",
        metavar="FILE",
        help="each fold trains this sweep's members and keeps the best on validation",
    )
    p.add_argument(
        "--select-by",
        choices=SELECT_METRICS,
        help="validation metric each fold chooses its checkpoint (or sweep member) by: "
        "active_ir, the net active IR against buy-and-hold (default; a constant position "
        "scores 0), or total_log_return, the net log return",
    )
    p.add_argument(
        "--gate",
        action="store_true",
        default=None,
        help="a fold whose best checkpoint does not beat buy-and-hold and flat on validation "
        "holds the better of those two over its test fold instead (fold.json says which)",
    )
    p.add_argument("--out", default="runs/walkforward", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the walk-forward in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    add_tracker_arguments(p)
    return p


def spec_from_args(args: argparse.Namespace):
    """The :class:`~marl_jax.walkforward.driver.WalkForwardSpec` the flags ask for."""
    from marl_jax.walkforward.driver import WalkForwardSpec
    from marl_jax.walkforward.folds import DEFAULT_VAL_FRACTION, WalkForwardError

    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in _LAYOUT_FLAGS if getattr(args, k) is not None]
        if given:
            raise WalkForwardError(
                f"--resume continues a walk-forward as it was started: drop {', '.join(given)}"
            )
        return WalkForwardSpec(out=args.out, resume=True)
    return WalkForwardSpec(
        out=args.out,
        config=args.config or DEFAULT_CONFIG,
        overrides=tuple(args.set or ()),
        data=tuple(args.data) if args.data else None,
        folds=5 if args.folds is None else args.folds,
        gap=args.gap,
        val_fraction=DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction,
        rolling=args.rolling,
        sweep=args.sweep,
        select_by=args.select_by or DEFAULT_SELECT,
        gate=bool(args.gate),
    )


def log_walk_forward(tracker, out: Path, report: dict) -> None:
    """Logs a finished walk-forward to ``tracker``: the resolved config and the options
    (``walkforward.*``) of ``walkforward.json`` as parameters, the pooled test metrics and the
    output files."""
    from marl_jax.run.tracking import flatten, log_outcome
    from marl_jax.walkforward.driver import MANIFEST

    manifest = json.loads((out / MANIFEST).read_text())
    options = flatten(manifest.get("options", {}), "walkforward.")
    extra = {"command": "walkforward", **options}
    log_outcome(tracker, out, report, manifest.get("config"), extra)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notices are not for users
    from marl_jax.errors import cli_main
    from marl_jax.run.cache import enable_compilation_cache

    def body() -> int:
        from marl_jax.cli import tracker_from_args

        spec = spec_from_args(args)
        tracker = tracker_from_args(args)  # a missing package fails before training
        enable_compilation_cache()
        from marl_jax.run.rundir import TENSORBOARD
        from marl_jax.run.tracking import tracked
        from marl_jax.walkforward.driver import walk_forward
        from marl_jax.walkforward.pooled import format_table

        out = Path(args.out)
        with tracked(tracker, out.resolve().name, out / TENSORBOARD):
            report = walk_forward(spec, progress=not args.no_progress, tracker=tracker)
            print(format_table(report))
            print(f"walk-forward folder: {args.out} (report.json, returns.csv, equity_curve.png)")
            log_walk_forward(tracker, out, report)
        return 0

    return cli_main(body)


if __name__ == "__main__":
    sys.exit(main())
