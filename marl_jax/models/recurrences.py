"""PyTorch's LSTM and GRU recurrences as JAX functions, and the cuDNN path.

The recurrences run over time-major inputs whose projection ``x W_ih^T + b_ih`` is already
computed (one matmul for all steps; see ``components.TorchRNN``), with zero initial states and
PyTorch's gate order and fused weight layout. Their gradients are written by hand
(``jax.custom_vjp``): one backward scan over compact residuals, and the recurrent weights'
gradients as single reductions over all steps. On a CUDA GPU an LSTM can run through cuDNN
instead (``jax.experimental.rnn``), with the same parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_jvp
def lstm_gates(gates: Array) -> tuple[Array, Array, Array, Array]:
    """The activated LSTM gates ``(i, f, g, o)`` of ``gates`` ``(..., 4H)`` (PyTorch's order).

    One sigmoid and one tanh over the whole contiguous block, then slices: faster on the CPU
    than activating four strided slices. The derivative reuses the activations
    (``a(1-a)``, ``1-a^2``), so the backward pass computes no transcendental functions.
    """
    hidden = gates.shape[-1] // 4
    sig, tnh = jax.nn.sigmoid(gates), jnp.tanh(gates)
    return (
        sig[..., :hidden],
        sig[..., hidden : 2 * hidden],
        tnh[..., 2 * hidden : 3 * hidden],
        sig[..., 3 * hidden :],
    )


@lstm_gates.defjvp
def _lstm_gates_jvp(primals, tangents):
    (gates,), (d_gates,) = primals, tangents
    i, f, g, o = lstm_gates(gates)
    di, df, dg, do = jnp.split(d_gates, 4, axis=-1)
    return (i, f, g, o), (
        i * (1.0 - i) * di,
        f * (1.0 - f) * df,
        (1.0 - g * g) * dg,
        o * (1.0 - o) * do,
    )


def _shifted(seq: Array, reverse: bool) -> Array:
    """The state before each step of a recurrence that produced ``seq`` ``(L, B, H)``: the
    previous step's (the next one's when ``reverse``), zeros before the first step."""
    zeros = jnp.zeros_like(seq[:1])
    if reverse:
        return jnp.concatenate([seq[1:], zeros], axis=0)
    return jnp.concatenate([zeros, seq[:-1]], axis=0)


def _lstm_cell(c: Array, gates: Array) -> tuple[Array, Array, tuple[Array, Array, Array, Array]]:
    """One LSTM step from the pre-activation ``gates``: the new ``h``, ``c`` and the activated
    gates ``(i, f, g, o)``."""
    i, f, g, o = lstm_gates(gates)
    c = f * c + i * g
    return o * jnp.tanh(c), c, (i, f, g, o)


def _lstm_forward(xproj: Array, w_hh: Array, b_hh: Array, reverse: bool, keep: bool):
    """The LSTM recurrence over time-major ``xproj``; with ``keep``, also the cell states and
    activated gates of every step (the backward pass's residuals)."""
    w_t = w_hh.T
    zeros = jnp.zeros((xproj.shape[1], w_hh.shape[1]), xproj.dtype)

    def step(carry, xp):
        h, c = carry
        h, c, acts = _lstm_cell(c, xp + h @ w_t + b_hh)
        return (h, c), ((h, c, *acts) if keep else h)

    return jax.lax.scan(step, (zeros, zeros), xproj, reverse=reverse)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def lstm_recurrence(xproj: Array, w_hh: Array, b_hh: Array, reverse: bool = False) -> Array:
    """PyTorch's LSTM recurrence (gates i, f, g, o; zero initial state) over time-major
    ``xproj`` = ``x W_ih^T + b_ih`` ``(L, B, 4H)``. Returns the hidden states ``(L, B, H)``.

    Its gradient is one backward scan that keeps only the cell states and activated gates
    (6H per step) and computes ``dW_hh`` and ``db_hh`` as single reductions over all steps.
    """
    return _lstm_forward(xproj, w_hh, b_hh, reverse, keep=False)


def _lstm_recurrence_fwd(xproj, w_hh, b_hh, reverse):
    hs, cs, i, f, g, o = _lstm_forward(xproj, w_hh, b_hh, reverse, keep=True)
    return hs, (hs, cs, i, f, g, o, w_hh)


def _lstm_recurrence_bwd(reverse, residuals, d_hs):
    hs, cs, i, f, g, o, w_hh = residuals
    zeros = jnp.zeros_like(hs[0])

    def step(carry, inputs):
        dh_next, dc_next = carry
        dh_out, c, c_prev, i, f, g, o = inputs
        dh = dh_out + dh_next
        tc = jnp.tanh(c)
        dc = dc_next + dh * o * (1.0 - tc * tc)
        d_gates = jnp.concatenate(
            [
                dc * g * i * (1.0 - i),
                dc * c_prev * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * tc * o * (1.0 - o),
            ],
            axis=-1,
        )
        return (d_gates @ w_hh, dc * f), d_gates

    inputs = (d_hs, cs, _shifted(cs, reverse), i, f, g, o)
    d_gates = jax.lax.scan(step, (zeros, zeros), inputs, reverse=not reverse)[1]
    h_prev = _shifted(hs, reverse)
    d_w = jnp.einsum("lbg,lbh->gh", d_gates, h_prev)
    return d_gates, d_w.astype(w_hh.dtype), d_gates.sum(axis=(0, 1)).astype(w_hh.dtype)


lstm_recurrence.defvjp(_lstm_recurrence_fwd, _lstm_recurrence_bwd)


def _gru_forward(xproj: Array, w_hh: Array, b_hh: Array, reverse: bool, keep: bool):
    """The GRU recurrence over time-major ``xproj``; with ``keep``, also the gates and the
    recurrent ``n`` term of every step."""
    w_t = w_hh.T

    def step(h, xp):
        hp = h @ w_t + b_hh
        xr, xz, xn = jnp.split(xp, 3, axis=-1)
        hr, hz, hn = jnp.split(hp, 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h = (1.0 - z) * n + z * h
        return h, ((h, r, z, n, hn) if keep else h)

    h0 = jnp.zeros((xproj.shape[1], w_hh.shape[1]), xproj.dtype)
    return jax.lax.scan(step, h0, xproj, reverse=reverse)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gru_recurrence(xproj: Array, w_hh: Array, b_hh: Array, reverse: bool = False) -> Array:
    """PyTorch's GRU recurrence (gates r, z, n; ``b_hn`` inside the reset product; zero
    initial state) over time-major ``xproj`` ``(L, B, 3H)``. Returns ``(L, B, H)``.

    Its gradient is one backward scan over compact residuals (4H per step), with ``dW_hh``
    and ``db_hh`` as single reductions over all steps.
    """
    return _gru_forward(xproj, w_hh, b_hh, reverse, keep=False)


def _gru_recurrence_fwd(xproj, w_hh, b_hh, reverse):
    hs, r, z, n, hn = _gru_forward(xproj, w_hh, b_hh, reverse, keep=True)
    return hs, (hs, r, z, n, hn, w_hh)


def _gru_recurrence_bwd(reverse, residuals, d_hs):
    hs, r, z, n, hn, w_hh = residuals
    h_prev = _shifted(hs, reverse)

    def step(dh_next, inputs):
        dh_out, hp, r, z, n, hn = inputs
        dh = dh_out + dh_next
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dr = dn * hn * r * (1.0 - r)
        dz = dh * (hp - n) * z * (1.0 - z)
        d_x = jnp.concatenate([dr, dz, dn], axis=-1)
        d_h = jnp.concatenate([dr, dz, dn * r], axis=-1)
        return d_h @ w_hh + dh * z, (d_x, d_h)

    inputs = (d_hs, h_prev, r, z, n, hn)
    d_x, d_h = jax.lax.scan(step, jnp.zeros_like(hs[0]), inputs, reverse=not reverse)[1]
    d_w = jnp.einsum("lbg,lbh->gh", d_h, h_prev)
    return d_x, d_w.astype(w_hh.dtype), d_h.sum(axis=(0, 1)).astype(w_hh.dtype)


gru_recurrence.defvjp(_gru_recurrence_fwd, _gru_recurrence_bwd)


FUSED_DIRECTIONS_MAX_BATCH = 4


def bidirectional_lstm_recurrence(
    xproj: Array, xproj_reverse: Array, w_hh: Array, b_hh: Array
) -> tuple[Array, Array]:
    """Both directions of a bidirectional LSTM layer in one scan: ``xproj`` and
    ``xproj_reverse`` ``(L, B, 4H)``, ``w_hh`` ``(2, 4H, H)`` and ``b_hh`` ``(2, 4H)`` stacked
    forward then reverse. Returns the two directions' hidden states ``(L, B, H)``, as
    :func:`lstm_recurrence` gives them. Half the loop iterations: faster for a few rows (a
    single decision), slower for many on a CPU, so :class:`TorchRNN` takes it up to
    ``FUSED_DIRECTIONS_MAX_BATCH`` rows. Differentiated by plain autodiff."""
    w_t = jnp.swapaxes(w_hh, 1, 2)
    both = jnp.stack([xproj, xproj_reverse[::-1]], axis=1)  # (L, 2, B, 4H)
    zeros = jnp.zeros((2, xproj.shape[1], w_hh.shape[2]), xproj.dtype)

    def step(carry, xp):
        h, c = carry
        h, c, _ = _lstm_cell(c, xp + jnp.einsum("dbh,dhg->dbg", h, w_t) + b_hh[:, None])
        return (h, c), h

    hs = jax.lax.scan(step, (zeros, zeros), both)[1]
    return hs[:, 0], hs[:, 1][::-1]


RNN_GATES = {"lstm": 4, "gru": 3}
RNN_RECURRENCES = {"lstm": lstm_recurrence, "gru": gru_recurrence}
RNN_BACKENDS = ("scan", "cudnn")


def cudnn_available() -> bool:
    """Whether ``jax.experimental.rnn`` can run cuDNN's LSTM here (a CUDA device is the
    default backend and this jaxlib has the cuDNN RNN kernels)."""
    if jax.default_backend() != "gpu":
        return False
    try:
        from jax._src.lib import gpu_rnn
    except ImportError:
        return False
    return gpu_rnn is not None


def resolve_rnn_backend(backend: str) -> str:
    """``scan`` or ``cudnn`` for a configured ``auto``, ``scan`` or ``cudnn``: ``auto`` takes
    cuDNN's LSTM on a GPU and the ``lax.scan`` recurrence elsewhere."""
    if backend == "auto":
        return "cudnn" if cudnn_available() else "scan"
    if backend not in RNN_BACKENDS:
        raise ValueError(f"unknown rnn_backend {backend!r}; use auto, scan or cudnn")
    if backend == "cudnn" and not cudnn_available():
        raise ValueError(
            f"rnn_backend 'cudnn' needs a CUDA GPU with cuDNN, but JAX's default backend is "
            f"{jax.default_backend()!r}; use rnn_backend 'auto' or 'scan'"
        )
    return backend


def pack_cudnn_lstm_weights(layers: Sequence[Sequence[Array]]) -> Array:
    """The flat cuDNN weight vector of ``jax.experimental.rnn.lstm`` from PyTorch-layout
    ``(w_ih, w_hh, b_ih, b_hh)`` per pseudo-layer (layer 0 forward, layer 0 reverse, layer 1
    forward, ...): every pseudo-layer's ``w_ih, w_hh``, then every pseudo-layer's
    ``b_ih, b_hh``. The gate order (i, f, g, o) is the same in both."""
    matrices = [w.reshape(-1) for w_ih, w_hh, _, _ in layers for w in (w_ih, w_hh)]
    biases = [b for _, _, b_ih, b_hh in layers for b in (b_ih, b_hh)]
    return jnp.concatenate(matrices + biases).astype(jnp.float32)


def cudnn_lstm(
    x: Array,
    layers: Sequence[Sequence[Array]],
    hidden: int,
    num_layers: int,
    bidirectional: bool,
) -> Array:
    """A multi-layer (bidirectional) LSTM through cuDNN, zero initial state, float32 (its only
    dtype; the output is cast back to ``x``'s). TF32 follows ``jax_default_matmul_precision``:
    ``highest`` turns it off."""
    from jax.experimental import rnn

    batch = x.shape[0]
    states = jnp.zeros(((2 if bidirectional else 1) * num_layers, batch, hidden), jnp.float32)
    y, _, _ = rnn.lstm(
        x.astype(jnp.float32),
        states,
        states,
        pack_cudnn_lstm_weights(layers),
        jnp.full((batch,), x.shape[1], jnp.int32),
        input_size=x.shape[-1],
        hidden_size=hidden,
        num_layers=num_layers,
        dropout=0.0,
        bidirectional=bidirectional,
    )
    return y.astype(x.dtype)
