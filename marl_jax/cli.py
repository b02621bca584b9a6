"""What the policy command lines (decide, backtest, export) share: the model flags and the
one-line error exit."""

from __future__ import annotations

import argparse
import logging
import sys
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


def run_command(body: Callable[[], None]) -> int:
    """Runs ``body`` with JAX's compilation cache on; a ``MarlJaxError`` is printed as one
    line on stderr and gives exit status 2."""
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notices are not for users
    from marl_jax.errors import MarlJaxError, one_line
    from marl_jax.run.cache import enable_compilation_cache

    try:
        enable_compilation_cache()
        body()
        return 0
    except MarlJaxError as err:
        print("error: " + one_line(err), file=sys.stderr)
        return 2
