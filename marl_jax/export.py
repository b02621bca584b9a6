"""``python -m marl_jax.export``: a model's joint decision as a ``jax.export`` artifact.

Writes ``--out`` (the serialized jitted decision, symbolic batch) and ``--out``.json (feature
names, window, normalisation); :mod:`marl_jax.exported` loads them with JAX and NumPy only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from marl_jax.cli import add_model_arguments, run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marl_jax.export",
        description="Export a model's joint decision as a serialized jax.export artifact",
    )
    add_model_arguments(p)
    p.add_argument("--out", default="policy.jaxexport", help="artifact file")
    p.add_argument(
        "--platforms",
        metavar="P1,P2",
        help="lower for these platforms, e.g. cpu,cuda (default: this machine's)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        from marl_jax.run.artifact import export_policy
        from marl_jax.run.deploy import load_policy

        policy = load_policy(args.model, norm_from=args.norm_from)
        platforms = tuple(args.platforms.split(",")) if args.platforms else None
        artifact, sidecar = export_policy(policy, args.out, platforms)
        print(f"wrote {artifact} and {sidecar} (window {policy.window}, {policy.description})")

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
