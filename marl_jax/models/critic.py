"""The centralized critic that values the joint 13-dimensional state."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from marl_jax.agents import AGENT_NAMES, CRITIC_HIDDEN_DIMS, CRITIC_STATE_DIM
from marl_jax.models.components import LayerNorm, Linear, ResidualBlock, uniform_init

Array = jax.Array


class UnusedAttention(nn.Module):
    """Carries the original's never-called ``agent_attention`` weights (``buffers``).

    The forward pass never uses them; they are kept, in PyTorch's layout, so that a checkpoint
    round trip gives back every entry.
    """

    embed_dim: int

    @nn.compact
    def __call__(self) -> None:
        dim = self.embed_dim

        def rng() -> Array:
            return self.make_rng("params")

        xavier = math.sqrt(6.0 / (dim + 3 * dim))
        self.variable(
            "buffers",
            "in_proj_weight",
            lambda: uniform_init(xavier)(rng(), (3 * dim, dim)),
        )
        self.variable("buffers", "in_proj_bias", lambda: jnp.zeros((3 * dim,), jnp.float32))
        self.variable(
            "buffers",
            "out_proj_weight",
            lambda: uniform_init(1.0 / math.sqrt(dim))(rng(), (dim, dim)),
        )
        self.variable("buffers", "out_proj_bias", lambda: jnp.zeros((dim,), jnp.float32))


def order_agent_names(agent_states: Mapping[str, Array]) -> list[str]:
    """Agent names in the canonical order mlmi, nwrqk, mmd when they are all known ones.

    JAX sorts dict keys when a dict crosses ``jit``, so insertion order cannot be trusted for
    the known agents; any other names keep their given order.
    """
    names = list(agent_states)
    if set(names) <= set(AGENT_NAMES):
        return [name for name in AGENT_NAMES if name in agent_states]
    return names


class CentralizedCritic(nn.Module):
    """Call: ``apply(variables, states, agent_states=None, train=False)``.

    Returns ``{'value': (B,), 'agent_values': {name: (B,)}}``; ``agent_values`` holds one
    entry per given agent state (the first ``n_agents``), computed from the shared features.
    """

    state_dim: int = CRITIC_STATE_DIM
    n_agents: int = len(AGENT_NAMES)
    hidden_dims: Sequence[int] = CRITIC_HIDDEN_DIMS
    dropout_rate: float = 0.1
    use_layer_norm: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(v) for v in self.hidden_dims))
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        states: Array,
        agent_states: Mapping[str, Array] | None = None,
        train: bool = False,
    ) -> dict:
        states = jnp.asarray(states)
        if not jnp.issubdtype(states.dtype, jnp.floating) or states.dtype == jnp.float64:
            states = states.astype(jnp.float32)
        if states.ndim != 2 or states.shape[-1] != self.state_dim:
            raise ValueError(
                f"CentralizedCritic: expected states of shape (B, {self.state_dim}), "
                f"got {tuple(states.shape)}"
            )
        dims = self.hidden_dims
        x = Linear(dims[0], name="feature_extractor_0")(states)
        index = 1
        if self.use_layer_norm:
            x = LayerNorm(name="feature_extractor_1")(x)
            index = 2
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(jax.nn.relu(x))
        index += 2  # ReLU and Dropout hold no entries
        for hidden in dims[1:]:
            x = ResidualBlock(hidden, self.dropout_rate, "relu", name=f"feature_extractor_{index}")(
                x, train=train
            )
            index += 1

        UnusedAttention(dims[-1], name="agent_attention")()

        v = Linear(dims[-1] // 2, name="value_head_0")(x)
        if self.use_layer_norm:
            v = LayerNorm(name="value_head_1")(v)
        v = nn.Dropout(self.dropout_rate, deterministic=not train)(jax.nn.relu(v))
        value = Linear(1, name="value_head_4")(v)[..., 0]

        heads = [Linear(1, name=f"agent_value_heads_{i}") for i in range(self.n_agents)]
        agent_values: dict[str, Array] = {}
        if agent_states is not None:
            for i, name in enumerate(order_agent_names(agent_states)[: self.n_agents]):
                agent_values[name] = heads[i](x)[..., 0]
        elif self.is_initializing():
            for head in heads:
                head(x)
        return {"value": value, "agent_values": agent_values}
