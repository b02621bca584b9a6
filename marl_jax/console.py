"""``marl-jax``: one command for the package's command lines (``marl-jax COMMAND --help``).

Each subcommand runs the ``python -m`` module that does the work with the remaining arguments,
as ``python -m`` would; those forms keep working. The modules are named here and imported when
their subcommand runs (the command line is the top layer; ``docs/architecture.md``), so ``marl-jax
--help`` starts without loading JAX.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

PROG = "marl-jax"
# subcommand -> (module whose main(argv) it runs, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("marl_jax.train", "train the three agents and the critic with MAPPO"),
    "sweep": ("marl_jax.sweep.__main__", "seeds x hyperparameters x PBT as population programs"),
    "walkforward": (
        "marl_jax.walkforward.__main__",
        "train on each fold, choose on validation, test once",
    ),
    "backtest": ("marl_jax.backtest", "any model over a bar file, against the baselines"),
    "decide": ("marl_jax.decide", "a trained policy's decision at the latest bar of a file"),
    "export": ("marl_jax.export", "a model's joint decision as a jax.export artifact"),
    "plant": ("marl_jax.plant", "plant a known edge into a bar file, with its oracle"),
    "report": ("marl_jax.tearsheet", "(re)build a run folder's report.html tearsheet"),
    "diagnose": ("marl_jax.diagnose", "why a walk-forward's policy learned or not"),
    "compare": ("marl_jax.compare", "runs, sweeps, walk-forwards: one table by config"),
    "data": ("marl_jax.data", "the public bar files the benchmarks use: list, fetch"),
    "bridge": ("bridge.__main__", "PyTorch .pt checkpoints <-> marl-jax (inspect, verify, ...)"),
    "config": ("marl_jax.config", "the JSON Schema of config files"),
}


def usage() -> str:
    """The top-level help: every subcommand with its line."""
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} COMMAND [ARGS ...]   ({PROG} COMMAND --help for a command's own flags)",
        "",
        "commands:",
        *(f"  {name:{width}s}  {help_}" for name, (_, help_) in COMMANDS.items()),
        "",
        f"  {PROG} --version   the package version",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``argv``'s subcommand (``sys.argv[1:]`` by default); returns its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0
    if args[0] == "--version":
        from marl_jax import __version__

        print(f"{PROG} {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.stderr.write(
            f"{PROG}: unknown command {name!r}; choose one of {', '.join(COMMANDS)} "
            f"({PROG} --help)\n"
        )
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    code = module.main(rest)
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
