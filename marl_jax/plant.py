"""``python -m marl_jax.plant IN OUT --signal trend|revert|gated --strength A [--span N]``:
a known edge planted into a bar file, and the oracle's figures.

Writes ``OUT`` (CSV or Parquet by its suffix, the input's columns) and its sidecar
``OUT.plant.json`` (the recipe and ``s[t]`` per bar), each atomically, and prints the oracle's
gross and net Sharpe ratio, net active IR against buy-and-hold and turnover over the whole file
at ``--cost-bps``. The recipes are :mod:`marl_jax.env.plant`'s; the files are
:mod:`marl_jax.run.planted`'s. There is no ``--seed``: every recipe is deterministic.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from marl_jax.env.plant import DEFAULT_SPANS, SIGNALS

DEFAULT_COST_BPS = 1.0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    spans = ", ".join(f"{k} {v}" for k, v in DEFAULT_SPANS.items())
    p = _Parser(
        prog="python -m marl_jax.plant",
        description="Plant a known edge into a bar file; print what its oracle earns",
    )
    p.add_argument("input", metavar="IN", help="CSV/Parquet bar file whose returns are the noise")
    p.add_argument("output", metavar="OUT", help="planted bar file (.csv or .parquet)")
    p.add_argument("--signal", required=True, help=f"the edge: {' | '.join(SIGNALS)}")
    p.add_argument(
        "--strength",
        required=True,
        type=float,
        metavar="A",
        help="drift per bar in units of the volatility: r'[t+1] = r[t+1] + A sigma[t] s[t]",
    )
    p.add_argument("--span", type=int, metavar="N", help=f"lookback in bars (default: {spans})")
    p.add_argument(
        "--cost-bps",
        type=float,
        default=DEFAULT_COST_BPS,
        help=f"the oracle's cost per unit of position change (default {DEFAULT_COST_BPS:g})",
    )
    return p


def _checked(args: argparse.Namespace) -> None:
    from marl_jax.run.planted import PlantError

    if args.signal not in SIGNALS:
        raise PlantError(f"--signal {args.signal}: expected one of {', '.join(SIGNALS)}")
    if not args.strength >= 0 or args.strength == float("inf"):
        raise PlantError(f"--strength {args.strength}: must be a number >= 0 (0 plants nothing)")
    if args.span is not None and args.span < 1:
        raise PlantError(f"--span {args.span}: must be at least 1 bar")
    if not args.cost_bps >= 0 or args.cost_bps == float("inf"):
        raise PlantError(f"--cost-bps {args.cost_bps}: must be a number >= 0")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from marl_jax.env.data import read_bar_table
        from marl_jax.env.plant import plant
        from marl_jax.run.planted import PlantError, check_output, sidecar_path, write_planted

        _checked(args)
        check_output(args.output)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = read_bar_table(args.input)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        span = DEFAULT_SPANS[args.signal] if args.span is None else args.span
        if len(table.bars) < 3:
            raise PlantError(f"{args.input}: {len(table.bars)} bars; the oracle needs at least 3")
        planted = plant(table.bars, args.signal, args.strength, span)
        recipe = {"signal": args.signal, "strength": args.strength, "span": span}
        record = write_planted(table, planted, recipe, args.input, args.output, args.cost_bps)
        o = record["oracle"]
        print(
            f"planted {args.signal} (span {span}, strength {args.strength:g}) into "
            f"{len(table.bars)} bars: {args.output}, sidecar {sidecar_path(args.output)}"
        )
        print(
            f"oracle sign(s) at {args.cost_bps:g} bp: gross Sharpe {o['gross_sharpe']:.4f}, "
            f"net Sharpe {o['sharpe']:.4f}, net active IR {o['active_ir']:.4f}, "
            f"turnover {o['turnover']:.4f}"
        )
        return 0

    from marl_jax.errors import cli_main

    return cli_main(body)


if __name__ == "__main__":
    sys.exit(main())
