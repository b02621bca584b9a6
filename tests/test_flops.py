"""Model FLOP counting from jaxprs (used for model FLOP utilisation in benchmarks/)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from marl_jax.flops import count_flops


def test_matmul_scan_conv_cond_and_gradient_counts():
    w = jnp.ones((64, 48))
    x = jnp.ones((32, 64))
    assert count_flops(lambda x: x @ w, x) == 2 * 32 * 64 * 48
    assert count_flops(jax.jit(lambda x: x @ w), x) == 2 * 32 * 64 * 48  # inside a pjit

    square = jnp.ones((64, 64))

    def recurrence(x):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ square), None), x, None, length=10)[0]

    one_step = 2 * 32 * 64 * 64
    assert count_flops(recurrence, x) == 10 * one_step  # XLA's cost analysis counts 1 step
    # The gradient with respect to x and the weights: forward, then two products per step.
    grad = jax.grad(lambda x, w: recurrence_with(x, w).sum(), argnums=(0, 1))
    assert count_flops(grad, x, square) == 3 * 10 * one_step

    kernel = jnp.ones((5, 3, 8))
    signal = jnp.ones((2, 20, 3))

    def conv(s):
        return jax.lax.conv_general_dilated(
            s, kernel, (1,), [(2, 2)], dimension_numbers=("NWC", "WIO", "NWC")
        )

    assert count_flops(conv, signal) == 2 * (2 * 20 * 8) * (5 * 3)

    def branchy(x, flag):
        return jax.lax.cond(flag, lambda: x @ w, lambda: jnp.zeros((32, 48)))

    assert count_flops(branchy, x, True) == 2 * 32 * 64 * 48


def recurrence_with(x, w):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=10)[0]
