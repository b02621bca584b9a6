"""Flax building blocks that reproduce the original PyTorch layers exactly.

Inside the models, sequences are kept as ``(B, L, C)``. Every layer initialises as PyTorch's
default does and keeps the parameters PyTorch keeps, so that a state dict maps onto the
variables one to one (see ``bridge.convert``).

Variable collections:
- ``params``: trainable weights (``kernel`` is ``(in, out)`` for linear layers and
  ``(k, in, out)`` for convolutions; recurrent weights keep PyTorch's fused layout and names).
- ``batch_stats``: BatchNorm ``mean``, ``var`` and ``num_batches_tracked``.
- ``buffers``: constants carried for the checkpoint (the positional-encoding table ``pe``, the
  critic's unused attention weights).

The recurrences under :class:`TorchRNN` (their hand-written gradients, the cuDNN path and the
backend choice) live in :mod:`marl_jax.models.recurrences`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from marl_jax.models.recurrences import (
    FUSED_DIRECTIONS_MAX_BATCH,
    RNN_BACKENDS,
    RNN_GATES,
    RNN_RECURRENCES,
    bidirectional_lstm_recurrence,
    cudnn_lstm,
)

NORM_EPS = 1e-5
Array = jax.Array


class UniformSource:
    """U[0, 1) draws that the :func:`uniform_init` initialisers take in turn, inside
    :func:`uniform_source`; ``draws=None`` only counts how many they take.

    One draw for all of a model's weights compiles one random-bits kernel instead of one per
    weight: on a CPU that is most of an initialiser's compile time (seconds per model).
    """

    def __init__(self, draws: Array | None = None):
        self.draws = draws
        self.taken = 0

    def take(self, shape: Sequence[int], dtype: Any) -> Array:
        size = math.prod(shape)
        start, self.taken = self.taken, self.taken + size
        if self.draws is None:
            return jnp.zeros(shape, dtype)
        return self.draws[start : start + size].reshape(shape).astype(dtype)


_UNIFORM_SOURCE: contextvars.ContextVar[UniformSource | None] = contextvars.ContextVar(
    "uniform_source", default=None
)


@contextlib.contextmanager
def uniform_source(source: UniformSource) -> Iterator[UniformSource]:
    """Within the block, :func:`uniform_init` initialisers read ``source`` instead of their key."""
    token = _UNIFORM_SOURCE.set(source)
    try:
        yield source
    finally:
        _UNIFORM_SOURCE.reset(token)


def uniform_init(bound: float) -> Callable:
    """Initialiser for U(-bound, bound), PyTorch's default for linear, conv and RNN weights."""

    def init(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        source = _UNIFORM_SOURCE.get()
        if source is None:
            return jax.random.uniform(key, shape, dtype, -bound, bound)
        # jax.random.uniform's own affine map and clamp, on the shared draws.
        u = source.take(shape, dtype)
        return jnp.maximum(-bound, u * (2 * bound) - bound)

    return init


def gelu(x: Array) -> Array:
    """Exact (erf) GELU, as ``torch.nn.GELU()``."""
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": gelu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
}


class Linear(nn.Module):
    """``torch.nn.Linear`` with its default initialisation; kernel stored as ``(in, out)``."""

    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fan_in = x.shape[-1]
        init = uniform_init(1.0 / math.sqrt(fan_in))
        kernel = self.param("kernel", init, (fan_in, self.features))
        bias = self.param("bias", init, (self.features,))
        return x @ kernel + bias


class Conv1d(nn.Module):
    """``torch.nn.Conv1d(stride=1, padding=k//2)`` on ``(B, L, C)``; kernel ``(k, in, out)``."""

    features: int
    kernel_size: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, cin = self.kernel_size, x.shape[-1]
        init = uniform_init(1.0 / math.sqrt(cin * k))
        kernel = self.param("kernel", init, (k, cin, self.features))
        bias = self.param("bias", init, (self.features,))
        pad = k // 2
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1,),
            padding=[(pad, pad)],
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + bias


class LayerNorm(nn.Module):
    """``torch.nn.LayerNorm`` over the last axis, eps 1e-5 (Flax's default is 1e-6).

    Statistics are computed in float32 whatever the input's dtype; the output has the input's.
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (dim,))
        bias = self.param("bias", nn.initializers.zeros, (dim,))
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + NORM_EPS) * scale + bias
        return y.astype(x.dtype)


class BatchNorm1d(nn.Module):
    """``torch.nn.BatchNorm1d`` (momentum 0.1) over ``(B, L)`` per channel of ``(B, L, C)``.

    With ``train=True`` it normalises with the batch statistics and, when ``batch_stats`` is
    mutable, updates the running statistics as PyTorch does (unbiased running variance,
    ``num_batches_tracked += 1``). With ``train=False`` it uses the running statistics.
    It normalises in float32; the output has the input's dtype.
    """

    momentum: float = 0.1

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        dim = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (dim,))
        bias = self.param("bias", nn.initializers.zeros, (dim,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((dim,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((dim,), jnp.float32))
        tracked = self.variable(
            "batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32)
        )
        dtype, x = x.dtype, x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            n = math.prod(x.shape[:-1])
            mean = x.mean(axes)
            var = jnp.square(x - mean).mean(axes)
            if self.is_mutable_collection("batch_stats") and not self.is_initializing():
                m = self.momentum
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = (1.0 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
                ra_var.value = (1.0 - m) * ra_var.value + m * jax.lax.stop_gradient(unbiased)
                tracked.value = tracked.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value
        return ((x - mean) * jax.lax.rsqrt(var + NORM_EPS) * scale + bias).astype(dtype)


def instance_norm(x: Array) -> Array:
    """``torch.nn.InstanceNorm1d`` defaults on ``(B, L, C)``: per (sample, channel) over L
    (in float32; the output has the input's dtype)."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-2, keepdims=True)
    var = jnp.square(xf - mean).mean(-2, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + NORM_EPS)).astype(x.dtype)


class ConvBlock(nn.Module):
    """Conv1d, then a norm (``batch``, ``layer`` or ``instance``), then an activation."""

    features: int
    kernel_size: int
    activation: str = "relu"
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = Conv1d(self.features, self.kernel_size, name="conv")(x)
        if self.norm == "batch":
            x = BatchNorm1d(name="norm")(x, train=train)
        elif self.norm == "layer":
            x = LayerNorm(name="norm")(x)
        elif self.norm == "instance":
            x = instance_norm(x)
        else:
            raise ValueError(f"ConvBlock: unknown norm {self.norm!r}; use batch, layer or instance")
        return ACTIVATIONS[self.activation](x)


def sinusoidal_table(dim: int, max_len: int = 5000) -> np.ndarray:
    """The ``(1, max_len, dim)`` float32 sin/cos table of the original PositionalEncoding."""
    position = np.arange(max_len, dtype=np.float32)[:, None]
    div_term = np.exp(
        np.arange(0, dim, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / dim)
    ).astype(np.float32)
    angles = (position * div_term).astype(np.float32)
    pe = np.zeros((max_len, dim), np.float32)
    pe[:, 0::2] = np.sin(angles)
    pe[:, 1::2] = np.cos(angles)[:, : dim // 2]
    return pe[None]


class PositionalEncoding(nn.Module):
    """Adds the stored ``pe`` table (a ``buffers`` entry), then dropout."""

    dropout_rate: float = 0.1
    max_len: int = 5000

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        dim, length = x.shape[-1], x.shape[-2]
        pe = self.variable(
            "buffers", "pe", lambda: jnp.asarray(sinusoidal_table(dim, self.max_len))
        ).value
        if length > pe.shape[1]:
            raise ValueError(
                f"PositionalEncoding: sequence length {length} exceeds max_len {pe.shape[1]}"
            )
        x = x + pe[:, :length].astype(x.dtype)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class TorchRNN(nn.Module):
    """Multi-layer ``torch.nn.LSTM``/``GRU`` (batch_first) with PyTorch's parameter layout.

    Each layer has ``weight_ih_l{k}`` ``(G*H, in)``, ``weight_hh_l{k}`` ``(G*H, H)`` and the
    two biases ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (plus ``_reverse`` twins when
    bidirectional). Sequences run time-major through the stack; the input projection of all
    time steps is one matmul, and only the recurrence is scanned (with a hand-written backward
    pass: :func:`lstm_recurrence`, :func:`gru_recurrence`). Dropout between layers in
    training, as PyTorch applies it.

    ``backend``: ``scan`` (``lax.scan``, any device, vmappable) or ``cudnn`` (an LSTM through
    ``jax.experimental.rnn`` on a CUDA GPU: same parameters, no vmap rule). GRUs, and LSTMs in
    training mode with inter-layer dropout, always scan.
    """

    hidden_size: int
    num_layers: int = 1
    cell: str = "lstm"
    bidirectional: bool = False
    dropout_rate: float = 0.0
    backend: str = "scan"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        hidden, gates = self.hidden_size, RNN_GATES[self.cell]
        init = uniform_init(1.0 / math.sqrt(hidden))
        directions = ("", "_reverse") if self.bidirectional else ("",)
        layers = []
        for layer in range(self.num_layers):
            in_dim = x.shape[-1] if layer == 0 else hidden * len(directions)
            for suffix in directions:
                tag = f"l{layer}{suffix}"
                layers.append(
                    (
                        self.param(f"weight_ih_{tag}", init, (gates * hidden, in_dim)),
                        self.param(f"weight_hh_{tag}", init, (gates * hidden, hidden)),
                        self.param(f"bias_ih_{tag}", init, (gates * hidden,)),
                        self.param(f"bias_hh_{tag}", init, (gates * hidden,)),
                    )
                )
        dropout = train and self.dropout_rate > 0 and self.num_layers > 1
        if self.backend == "cudnn" and self.cell == "lstm" and not dropout:
            return cudnn_lstm(x, layers, hidden, self.num_layers, self.bidirectional)
        if self.backend not in RNN_BACKENDS:
            raise ValueError(f"TorchRNN: unknown backend {self.backend!r}; use scan or cudnn")
        recurrence = RNN_RECURRENCES[self.cell]
        x = jnp.swapaxes(x, 0, 1)  # time-major through the stack: one transpose each way
        batch = x.shape[1]  # a symbolic batch (jax.export) takes the unfused path
        fuse = (
            self.cell == "lstm"
            and self.bidirectional
            and isinstance(batch, int)
            and batch <= FUSED_DIRECTIONS_MAX_BATCH
        )
        for layer in range(self.num_layers):
            weights = layers[layer * len(directions) : (layer + 1) * len(directions)]
            xprojs = [x @ w_ih.T + b_ih for w_ih, _, b_ih, _ in weights]
            if fuse:
                w_hh = jnp.stack([w for _, w, _, _ in weights])
                b_hh = jnp.stack([b for _, _, _, b in weights])
                outputs = list(bidirectional_lstm_recurrence(*xprojs, w_hh, b_hh))
            else:
                outputs = [
                    recurrence(xproj, w_hh, b_hh, bool(suffix))
                    for xproj, (_, w_hh, _, b_hh), suffix in zip(
                        xprojs, weights, directions, strict=True
                    )
                ]
            x = jnp.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0]
            if layer < self.num_layers - 1 and self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return jnp.swapaxes(x, 0, 1)


class TemporalBlock(nn.Module):
    """The recurrent block: ``rnn`` then ``output_proj`` (2H -> H) when bidirectional."""

    hidden_size: int
    num_layers: int = 2
    rnn_type: str = "lstm"
    dropout_rate: float = 0.1
    bidirectional: bool = False
    rnn_backend: str = "scan"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = TorchRNN(
            self.hidden_size,
            self.num_layers,
            self.rnn_type,
            self.bidirectional,
            self.dropout_rate,
            self.rnn_backend,
            name="rnn",
        )(x, train=train)
        if self.bidirectional:
            x = Linear(self.hidden_size, name="output_proj")(x)
        return x


class MultiHeadAttention(nn.Module):
    """The original's self-attention: returns ``(output, weights averaged over heads)``.

    ``last_query_only=True`` attends from the last position only: the output is
    ``(B, 1, D)`` and the weights ``(B, 1, L)``, the last rows of the full results.
    """

    num_heads: int
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(
        self, x: Array, train: bool = False, last_query_only: bool = False
    ) -> tuple[Array, Array]:
        batch, length, dim = x.shape
        if dim % self.num_heads:
            raise ValueError(
                f"MultiHeadAttention: dim {dim} is not divisible by {self.num_heads} heads"
            )
        head = dim // self.num_heads

        def split(t: Array) -> Array:
            return t.reshape(batch, t.shape[1], self.num_heads, head).transpose(0, 2, 1, 3)

        queries = x[:, -1:] if last_query_only else x
        q = split(Linear(dim, name="q_proj")(queries))
        k = split(Linear(dim, name="k_proj")(x))
        v = split(Linear(dim, name="v_proj")(x))
        scores = (q @ jnp.swapaxes(k, -1, -2)) * (head**-0.5)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        weights = nn.Dropout(self.dropout_rate, deterministic=not train)(weights)
        attended = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, queries.shape[1], dim)
        return Linear(dim, name="out_proj")(attended), weights.mean(axis=1)


class ResidualBlock(nn.Module):
    """fc1, LayerNorm, activation, dropout, fc2, dropout; ``norm2(h + residual)``."""

    hidden: int
    dropout_rate: float = 0.1
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        residual = x if x.shape[-1] == self.hidden else Linear(self.hidden, name="proj")(x)
        h = Linear(self.hidden, name="fc1")(x)
        h = LayerNorm(name="norm1")(h)
        h = ACTIVATIONS[self.activation](h)
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = Linear(self.hidden, name="fc2")(h)
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return LayerNorm(name="norm2")(h + residual)
