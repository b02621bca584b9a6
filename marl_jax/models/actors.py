"""The three specialist actors: MLMI (momentum), NWRQK (support/resistance), MMD (regime).

Each takes a state ``(B, input_dim, L)`` (channels first, as the original) and returns the
original's output dict. Submodule names mirror the PyTorch attribute names, so that
``conv_layers.0.conv.weight`` lives at ``params/conv_layers_0/conv/kernel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from marl_jax.agents import AGENT_BY_NAME, AGENTS, NUM_ACTIONS
from marl_jax.models.components import (
    ACTIVATIONS,
    ConvBlock,
    LayerNorm,
    Linear,
    MultiHeadAttention,
    PositionalEncoding,
    ResidualBlock,
    TemporalBlock,
)

Array = jax.Array
MIN_TEMPERATURE = 0.1
_MLMI, _NWRQK, _MMD = (AGENT_BY_NAME[name] for name in ("mlmi", "nwrqk", "mmd"))


class StrategicActor(nn.Module):
    """Shared forward pass of the three actors; subclasses set the architecture constants.

    Call: ``apply(variables, state, deterministic=False, train=False, actions=None)``.
    ``deterministic=True`` takes the argmax; otherwise the action is sampled with the rng
    stream ``'action'``. ``train=True`` enables dropout (rng ``'dropout'``) and BatchNorm batch
    statistics (running statistics update when ``batch_stats`` is mutable). ``actions``, when
    given, are used instead of choosing: ``log_prob`` and ``entropy`` are then those of the given
    actions, as the original's ``evaluate_actions``. ``attention_weights=False`` leaves the
    attention weights out of the outputs and attends from the last time step only, the one
    every other output reads (the trainer's rollout and loss). ``return_features=True`` adds
    ``features``, the vector the two heads read (the trainer's auxiliary return loss).
    """

    # The original's base class defaults are MLMI's sizes.
    input_dim: int = _MLMI.input_dim
    hidden_dims: Sequence[int] = _MLMI.hidden_dims
    action_dim: int = NUM_ACTIONS
    dropout_rate: float = 0.1
    temperature_init: float = 1.0
    conv_channels: Sequence[int] = _MLMI.conv_channels
    kernel_sizes: Sequence[int] = _MLMI.kernel_sizes
    sequence_length: int = 48
    rnn_backend: str = "scan"

    conv_activation: ClassVar[str] = "gelu"
    conv_norm: ClassVar[str] = "batch"
    extra_conv_kernel: ClassVar[int | None] = None
    rnn_type: ClassVar[str] = "lstm"
    rnn_layers: ClassVar[int] = 2
    bidirectional: ClassVar[bool] = False
    attention_heads: ClassVar[int] = 8
    residual_outputs: ClassVar[bool] = True
    head_activation: ClassVar[str] = "relu"
    output_head_halves: ClassVar[bool] = True
    volatility_adjusted: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for field in ("hidden_dims", "conv_channels", "kernel_sizes"):
            object.__setattr__(self, field, tuple(int(v) for v in getattr(self, field)))
        super().__post_init__()

    def _prepare(self, state: Array) -> Array:
        state = jnp.asarray(state)
        if not jnp.issubdtype(state.dtype, jnp.floating) or state.dtype == jnp.float64:
            state = state.astype(jnp.float32)
        if state.ndim == 2:
            state = state[:, :, None]
        if state.ndim != 3 or state.shape[1] != self.input_dim:
            raise ValueError(
                f"{type(self).__name__}: expected a state of shape (B, {self.input_dim}, L) or "
                f"(B, {self.input_dim}), got {tuple(state.shape)}"
            )
        if state.shape[-1] == 1:
            state = jnp.broadcast_to(state, (*state.shape[:2], self.sequence_length))
        return state

    @nn.compact
    def __call__(
        self,
        state: Array,
        deterministic: bool = False,
        train: bool = False,
        actions: Array | None = None,
        attention_weights: bool = True,
        return_features: bool = False,
    ) -> dict[str, Array]:
        if len(self.hidden_dims) < 1 or len(self.conv_channels) < 2 or len(self.kernel_sizes) < 2:
            raise ValueError(
                f"{type(self).__name__}: needs >= 1 hidden dim, >= 2 conv channels and >= 2 "
                "kernel sizes"
            )
        state = self._prepare(state)
        x = jnp.swapaxes(state, 1, 2)  # (B, L, C)
        blocks = [(self.conv_channels[i], self.kernel_sizes[i]) for i in range(2)]
        if self.extra_conv_kernel is not None:
            blocks.append((self.conv_channels[-1], self.extra_conv_kernel))
        for i, (channels, kernel) in enumerate(blocks):
            x = ConvBlock(
                channels, kernel, self.conv_activation, self.conv_norm, name=f"conv_layers_{i}"
            )(x, train=train)

        h0 = self.hidden_dims[0]
        x = Linear(h0, name="feature_proj")(x)
        x = PositionalEncoding(self.dropout_rate, name="pos_encoding")(x, train=train)
        x = TemporalBlock(
            h0,
            self.rnn_layers,
            self.rnn_type,
            self.dropout_rate,
            self.bidirectional,
            self.rnn_backend,
            name="temporal",
        )(x, train=train)
        attended, weights = MultiHeadAttention(
            self.attention_heads, self.dropout_rate, name="attention"
        )(x, train=train, last_query_only=not attention_weights)
        features = attended[:, -1, :]

        for i, hidden in enumerate(self.hidden_dims[1:]):
            if self.residual_outputs:
                features = ResidualBlock(
                    hidden, self.dropout_rate, self.conv_activation, name=f"output_layers_{i}"
                )(features, train=train)
            else:
                features = Linear(hidden, name=f"output_layers_{i}_0")(features)
                features = LayerNorm(name=f"output_layers_{i}_1")(features)
                features = nn.Dropout(self.dropout_rate, deterministic=not train)(
                    jax.nn.relu(features)
                )

        last = self.hidden_dims[-1]
        act = ACTIVATIONS[self.head_activation]
        head_hidden = last // 2 if self.output_head_halves else last
        logits = self._head(features, head_hidden, self.action_dim, act, "output_head", train)
        value = self._head(features, last // 2, 1, act, "value_head", train)[..., 0]

        temperature = self.param("temperature", nn.initializers.constant(self.temperature_init), ())
        if self.volatility_adjusted:
            adjust = self.param("volatility_adjust", nn.initializers.ones, (1,))
            volatility = state[:, 1, :].mean(-1)
            factor = jnp.clip(1.0 / (volatility + 1e-6), 0.5, 2.0)
            logits = logits * factor[:, None] * adjust

        # The softmax and log-probabilities are float32 whatever the compute dtype.
        scaled = logits.astype(jnp.float32) / jnp.maximum(temperature, MIN_TEMPERATURE)
        probs = jax.nn.softmax(scaled, axis=-1)
        log_probs = jax.nn.log_softmax(scaled, axis=-1)
        if actions is not None:
            action = jnp.asarray(actions, jnp.int32)
        elif deterministic:
            action = jnp.argmax(probs, axis=-1).astype(jnp.int32)
        else:
            action = jax.random.categorical(self.make_rng("action"), log_probs).astype(jnp.int32)
        log_prob = jnp.take_along_axis(log_probs, action[:, None], axis=-1)[:, 0]
        entropy = -(probs * log_probs).sum(-1)
        outputs = {
            "action": action,
            "action_probs": probs,
            "log_prob": log_prob,
            "entropy": entropy,
            "logits": logits,
            "value": value,
        }
        if attention_weights:
            outputs["attention_weights"] = weights
        if return_features:
            outputs["features"] = features
        return outputs

    def _head(self, x: Array, hidden: int, out: int, act, name: str, train: bool) -> Array:
        """Sequential(Linear, activation, Dropout, Linear): state-dict indices 0 and 3."""
        x = act(Linear(hidden, name=f"{name}_0")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return Linear(out, name=f"{name}_3")(x)


class MLMIActor(StrategicActor):
    """Momentum specialist: gelu/BatchNorm convs, 2-layer LSTM, 8 heads, gelu residual MLP."""

    input_dim: int = _MLMI.input_dim
    hidden_dims: Sequence[int] = _MLMI.hidden_dims
    conv_channels: Sequence[int] = _MLMI.conv_channels
    kernel_sizes: Sequence[int] = _MLMI.kernel_sizes

    attention_heads: ClassVar[int] = _MLMI.heads


class NWRQKActor(StrategicActor):
    """Support/resistance specialist: three swish/LayerNorm convs, 3-layer BiLSTM."""

    input_dim: int = _NWRQK.input_dim
    hidden_dims: Sequence[int] = _NWRQK.hidden_dims
    conv_channels: Sequence[int] = _NWRQK.conv_channels
    kernel_sizes: Sequence[int] = _NWRQK.kernel_sizes

    conv_activation: ClassVar[str] = "swish"
    conv_norm: ClassVar[str] = "layer"
    extra_conv_kernel: ClassVar[int | None] = 5
    rnn_layers: ClassVar[int] = 3
    bidirectional: ClassVar[bool] = True
    attention_heads: ClassVar[int] = _NWRQK.heads
    head_activation: ClassVar[str] = "swish"
    output_head_halves: ClassVar[bool] = False


class MMDActor(StrategicActor):
    """Regime specialist: relu/InstanceNorm convs, 2-layer GRU, 4 heads, volatility adjust."""

    input_dim: int = _MMD.input_dim
    hidden_dims: Sequence[int] = _MMD.hidden_dims
    conv_channels: Sequence[int] = _MMD.conv_channels
    kernel_sizes: Sequence[int] = _MMD.kernel_sizes

    conv_activation: ClassVar[str] = "relu"
    conv_norm: ClassVar[str] = "instance"
    rnn_type: ClassVar[str] = "gru"
    attention_heads: ClassVar[int] = _MMD.heads
    residual_outputs: ClassVar[bool] = False
    output_head_halves: ClassVar[bool] = False
    volatility_adjusted: ClassVar[bool] = True


ACTOR_CLASSES: dict[str, type[StrategicActor]] = {
    agent.name: globals()[agent.model] for agent in AGENTS
}
