"""``python -m marl_jax.tearsheet RUN_DIR``: (re)builds a run folder's ``report.html`` from its
``report.json`` and ``returns.csv`` (:mod:`marl_jax.run.tearsheet`); ``marl-jax report``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marl_jax.tearsheet",
        description="Write RUN_DIR/report.html, a self-contained tearsheet, from the run's "
        "report.json and returns.csv (train, backtest, walk-forward or sweep output folder)",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a command's output folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from marl_jax.run.tearsheet import write_tearsheet

        print(f"tearsheet: {write_tearsheet(Path(args.run_dir))}")
        return 0

    from marl_jax.errors import cli_main

    return cli_main(body)


if __name__ == "__main__":
    sys.exit(main())
