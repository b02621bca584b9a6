"""What the command lines share: the model flags and the one-line error exit of the policy
commands (decide, backtest, export), the repeatable ``--data`` of train and walk-forward."""

from __future__ import annotations

import argparse
from collections.abc import Callable


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
