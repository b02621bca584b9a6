"""Model FLOPs of a JAX function, counted from its jaxpr (for model FLOP utilisation).

XLA's own ``cost_analysis()`` counts the body of a ``lax.scan`` once, whatever its length, so
it undercounts recurrent models by the sequence length. :func:`count_flops` walks the jaxpr
instead: every ``dot_general`` and ``conv_general_dilated`` (the matrix work a model FLOP count
means; element-wise operations are left out), with scan bodies multiplied by their length. A
function's gradient is counted as traced, so a training step counts its backward pass too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core


def _dot_flops(eqn: Any) -> int:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    contract = math.prod(lhs[i] for i in lhs_contract)
    return 2 * math.prod(eqn.outvars[0].aval.shape) * contract


def _conv_flops(eqn: Any) -> int:
    rhs = eqn.invars[1].aval.shape
    out_channels = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    per_output = math.prod(rhs) // out_channels  # kernel taps x input channels per group
    return 2 * math.prod(eqn.outvars[0].aval.shape) * per_output


def _sub_jaxprs(value: Any) -> list[Any]:
    if isinstance(value, jex_core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, jex_core.Jaxpr):
        return [value]
    if isinstance(value, tuple | list):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def jaxpr_flops(jaxpr: Any) -> int:
    """Matrix FLOPs of a jaxpr: dots and convolutions, scans times their length, the costlier
    branch of a ``cond``, a ``while`` body once (its trip count is unknown)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in _sub_jaxprs(eqn.params["branches"]))
        else:
            inner = sum(jaxpr_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Matrix FLOPs of one call ``fn(*args, **kwargs)`` (see :func:`jaxpr_flops`)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
