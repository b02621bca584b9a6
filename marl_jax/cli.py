"""What the command lines share: the model flags and the one-line error exit of the policy
commands (decide, backtest, export), the repeatable ``--data`` of train and walk-forward, and
the tracker flags of train, sweep and walk-forward."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from marl_jax.run.tracking import Tracker


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model SOURCE`` (required) and ``--norm-from SOURCE``."""
    parser.add_argument(
        "--model",
        required=True,
        metavar="SOURCE",
        help="a .pt file, a model directory, a run (RUN, RUN:latest, RUN:STEP) or a "
        "checkpoint step",
    )
    parser.add_argument(
        "--norm-from",
        metavar="SOURCE",
        help="take the feature normalisation (and, for a .pt, the window) from this model "
        "source: needed for an original .pt",
    )


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data FILE``, repeatable: one file is ``env.data_path``, several ``env.data_paths``
    (see :func:`marl_jax.run.setup.data_overrides`)."""
    parser.add_argument(
        "--data",
        action="append",
        metavar="FILE",
        help="CSV/Parquet bar file (default: synthetic bars); repeat for several instruments "
        "(as env.data_paths)",
    )


def add_tracker_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tracker mlflow``, ``--tracking-uri URI`` and ``--tensorboard``."""
    parser.add_argument(
        "--tracker",
        choices=("mlflow",),
        help="also log the config, the per-update and final metrics and the output files to "
        "MLflow (pip install 'marl-jax[mlflow]'), in a local store by default",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="the MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here, "
        "with the files in ./mlruns)",
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log the per-update metrics to tensorboard/ in the output folder (of each "
        "fold or sweep member)",
    )


def tracker_from_args(args: argparse.Namespace) -> Tracker:
    """The tracker ``--tracker``, ``--tracking-uri`` and ``--tensorboard`` ask for (unstarted);
    a one-line error where its package is missing."""
    from marl_jax.run.tracking import open_tracker

    return open_tracker(args.tracker, args.tracking_uri, args.tensorboard)


def run_command(body: Callable[[], None]) -> int:
    """Runs ``body`` with JAX's compilation cache on, through :func:`marl_jax.errors.cli_main`
    (a ``MarlJaxError`` is one line on stderr and exit status 2)."""
    from marl_jax.errors import cli_main
    from marl_jax.run.cache import enable_compilation_cache

    def run() -> int:
        enable_compilation_cache()
        body()
        return 0

    return cli_main(run)
