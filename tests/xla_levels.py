"""XLA optimisation levels for the suite.

The suite's programs are small and run for milliseconds, so their compile time dominates, and
XLA's lowest backend optimisation level compiles them about a third faster (see conftest.py,
which sets it for every test and for the command lines the tests start). The few tests whose
outcome depends on run speed, or on two different programs rounding alike, compile at XLA's
default level instead: pass ``compiler_options=FULL_OPTIMISATION`` to their ``jax.jit``.
"""

from __future__ import annotations

FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
FULL_OPTIMISATION = {"xla_backend_optimization_level": 2}  # XLA's default level


def with_fast_compile(flags: str) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the suite's fast-compile flag added once."""
    parts = flags.split()
    return " ".join(parts if FAST_COMPILE_FLAG in parts else [*parts, FAST_COMPILE_FLAG])
