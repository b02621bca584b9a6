"""XLA compile settings for the suite.

The suite's programs are small and run for milliseconds, so their compile time dominates.
conftest.py sets two XLA:CPU flags for every test and for the command lines the tests start:

- the lowest backend (LLVM) optimisation level, which compiles about a third faster;
- XLA:CPU's older loop emitters instead of its MLIR fusion emitters: with the first flag,
  the tiny config's ``update`` then compiles in half the CPU time (8.5 s against 17-20 s,
  benchmarks/RESULTS.md), and runs no slower.

The few tests whose outcome depends on run speed, or on two different programs rounding
alike, compile as XLA's defaults do instead: pass ``compiler_options=FULL_OPTIMISATION`` to
their ``jax.jit`` (per-program options override ``XLA_FLAGS``), as the market tests that
compare two programs' positions and returns bit for bit do.
"""

from __future__ import annotations

FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
# XLA's defaults: its default backend level, and the fusion emitters.
FULL_OPTIMISATION = {"xla_backend_optimization_level": 2, "xla_cpu_use_fusion_emitters": True}


def with_fast_compile(flags: str) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the suite's fast-compile flags added once."""
    parts = flags.split()
    return " ".join([*parts, *(flag for flag in FAST_COMPILE_FLAGS if flag not in parts)])
