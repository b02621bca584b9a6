"""``python -m marl_jax.decide``: a trained policy's decision at the latest bar of a file.

Prints each agent's action and probabilities, the joint position (as the environment computes
it) and the critic's value: a table, or one JSON object with ``--json``. The work is done by
:class:`marl_jax.policy.Policy`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence

from marl_jax.cli import add_model_arguments, run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marl_jax.decide",
        description="A trained policy's decision at the latest bar (or --at) of a bar file",
    )
    add_model_arguments(p)
    p.add_argument("--data", required=True, metavar="FILE", help="CSV/Parquet bar file")
    p.add_argument("--at", metavar="TIMESTAMP", help="decide at this bar (default: the last)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def format_decision(row: Mapping, model: str) -> str:
    """A decision row (:meth:`marl_jax.policy.Decision.row`) as a text table."""
    from marl_jax.policy import ACTION_NAMES

    lines = [f"decision at {row['timestamp']} (bar {row['bar_index']}), model: {model}"]
    probs = "".join(f"{'p(' + a + ')':>14s}" for a in ACTION_NAMES)
    header = f"{'agent':8s}{'action':>12s}{probs}"
    lines += [header, "-" * len(header)]
    for name, agent in row["agents"].items():
        action = f"{agent['action']} {agent['action_name']}"
        lines.append(f"{name:8s}{action:>12s}" + "".join(f"{p:>14.4f}" for p in agent["probs"]))
    lines.append(f"{'joint position':20s}{row['position']:>+10.4f}")
    lines.append(f"{'critic value':20s}{row['value']:>+10.4f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        from marl_jax.policy import Policy

        policy = Policy.load(args.model, norm_from=args.norm_from)
        bars = policy.load_bars(args.data)
        row = policy.decide(bars, args.at, source=args.data).row(0)
        if args.json:
            print(json.dumps({**row, "model": policy.description}))
        else:
            print(format_decision(row, policy.description))

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
