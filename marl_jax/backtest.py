"""``python -m marl_jax.backtest``: any model on any bar file, with the training run's report.

Writes ``report.json``, ``returns.csv`` and ``equity_curve.png`` into ``--out`` and prints the
table of the policy (greedy) against the baselines, ``linear`` among them when there are bars
to fit it on before the evaluated ones (else a one-line note says why not), and ``oracle`` with
the policy's capture where the bar file has a plant's sidecar (``python -m marl_jax.plant``);
the work is done by :mod:`marl_jax.run.backtesting`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from marl_jax.cli import add_model_arguments, run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marl_jax.backtest",
        description="Evaluate a model on a bar file against the baselines (the run's report)",
    )
    add_model_arguments(p)
    p.add_argument("--data", required=True, metavar="FILE", help="CSV/Parquet bar file")
    p.add_argument(
        "--split",
        choices=("test", "all"),
        default="test",
        help="the test split (by the run's fractions, else 70/15/15) or every bar after the "
        "warm-up (default: test); the linear baseline is fitted on the train split, or under "
        "all on the bars before --from",
    )
    p.add_argument("--from", dest="start", metavar="T0", help="first bar's timestamp")
    p.add_argument("--to", dest="end", metavar="T1", help="last bar's timestamp")
    p.add_argument("--out", default="backtests/latest", help="folder for the report")
    p.add_argument(
        "--cost-bps", type=float, help="cost per unit of position change (default: the run's)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        from marl_jax.run.backtesting import BacktestSpec, backtest
        from marl_jax.run.deploy import load_policy
        from marl_jax.run.planted import read_oracle
        from marl_jax.run.report import format_report

        instrument = Path(args.data).name  # a multi-instrument model's normalisation
        policy = load_policy(args.model, norm_from=args.norm_from, instrument=instrument)
        bars = policy.load_bars(args.data)
        spec = BacktestSpec(args.split, args.start, args.end, args.cost_bps)
        oracle = read_oracle(args.data, bars)
        report = backtest(policy, bars, spec, out=args.out, source=args.data, oracle=oracle)
        print(format_report(report))
        if report["linear"] is None:
            print(f"linear baseline left out: {report['linear_left_out']}")
        prov = report["provenance"]
        first, last, count = (prov[k] for k in ("first_timestamp", "last_timestamp", "bars"))
        print(f"{count} bars from {first} to {last}; report in {args.out}")

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
