"""``python -m marl_jax.decide``: a trained policy's decision at the latest bar of a file.

Prints each agent's action and probabilities, the joint position (as the environment computes
it under the model's ``env.action_mode`` and ``env.position_sizing``: its run config's, else
the defaults ``target`` and ``fixed``), the signal behind it and the critic's value: a table,
or one JSON object with ``--json``. Under ``delta`` the position moves from the current
holding, ``--position``; a model trained with ``env.observe_position`` also reads that holding
as an input, so it needs ``--position`` whatever its action mode (the output repeats it as the
observed position). The folder of a run trained with ``ensemble`` K > 1 decides as the mean
of its members' positions, each member's table printed (``members`` in the JSON). The work is
done by :class:`marl_jax.policy.Policy` (:class:`marl_jax.policy.Ensemble`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from marl_jax.cli import add_model_arguments, run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marl_jax.decide",
        description="A trained policy's decision at the latest bar (or --at) of a bar file",
        epilog="The position follows the model's run config (env.action_mode, "
        "env.position_sizing); a .pt or a model directory without a run config uses the "
        "defaults, target and fixed.",
    )
    add_model_arguments(p)
    p.add_argument("--data", required=True, metavar="FILE", help="CSV/Parquet bar file")
    p.add_argument("--at", metavar="TIMESTAMP", help="decide at this bar (default: the last)")
    p.add_argument(
        "--position",
        type=float,
        metavar="P",
        help="the current holding in [-1, 1] before volatility sizing (the previous decision's "
        "signal): required when the model acts with env.action_mode delta or observes its "
        "position (env.observe_position), ignored otherwise",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def format_decision(row: Mapping, model: str, modes: str = "") -> str:
    """A decision row (:meth:`marl_jax.policy.Decision.row`, or an ensemble's
    :meth:`marl_jax.policy.EnsembleDecision.row`: each member's table, then their mean) as a
    text table; ``modes`` describes how the position was made
    (:meth:`marl_jax.policy.Policy.describe_modes`)."""
    lines = [f"decision at {row['timestamp']} (bar {row['bar_index']}), model: {model}"]
    for i, member in enumerate(row.get("members", [])):
        lines.append(f"member {i}: position {member['position']:+.4f}")
        lines += _agents_table(member["agents"])
    if "agents" in row:
        lines += _agents_table(row["agents"])
    joint = "joint position" if "agents" in row else "mean position"
    lines.append(f"{joint:20s}{row['position']:>+10.4f}")
    if "signal" in row:
        lines.append(f"{'signal':20s}{row['signal']:>+10.4f}")
    lines.append(f"{'critic value':20s}{row['value']:>+10.4f}")
    if "observed_position" in row:
        lines.append(f"{'observed position':20s}{row['observed_position']:>+10.4f} (--position)")
    if modes:
        lines.append(f"position by {modes}")
    return "\n".join(lines)


def _agents_table(agents: Mapping) -> list[str]:
    """Each agent's action and probabilities, one line each under a header."""
    from marl_jax.policy import ACTION_NAMES

    probs = "".join(f"{'p(' + a + ')':>14s}" for a in ACTION_NAMES)
    header = f"{'agent':8s}{'action':>12s}{probs}"
    lines = [header, "-" * len(header)]
    for name, agent in agents.items():
        action = f"{agent['action']} {agent['action_name']}"
        lines.append(f"{name:8s}{action:>12s}" + "".join(f"{p:>14.4f}" for p in agent["probs"]))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        from marl_jax.run.deploy import load_policy

        instrument = Path(args.data).name  # a multi-instrument model's normalisation
        policy = load_policy(args.model, norm_from=args.norm_from, instrument=instrument)
        bars = policy.load_bars(args.data)
        row = policy.decide(bars, args.at, position=args.position, source=args.data).row(0)
        if policy.observe_position:
            row["observed_position"] = float(args.position)
        if args.json:
            env = {k: policy.modes[k] for k in ("action_mode", "position_sizing")}
            env["from"] = "run config" if policy.config else "defaults (no run config)"
            print(json.dumps({**row, "model": policy.description, "env": env}))
        else:
            print(format_decision(row, policy.description, policy.describe_modes()))

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
