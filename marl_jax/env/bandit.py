"""A multi-agent contextual bandit whose best joint action is known: the learner's first check.

Each step draws one of three contexts ``c`` uniformly. Every agent sees it in an observation
of the market's shapes, so the Strategic MARL models run on it unchanged: channel ``c`` rises
from 0 to 2 across the window and every other channel falls from 0 to -2 (ramps, not constants,
so that they survive an instance norm over time, as in the MMD actor). The critic sees each
agent's window means, as in the market: +1 on channel ``c``, -1 elsewhere.

Agent ``i`` (in :data:`marl_jax.agents.AGENT_NAMES` order) is right when it picks
:func:`best_actions` ``(c + i) % 3``; the shared reward is the fraction of agents that are
right, so the best joint policy earns 1 and uniformly random votes 1/3. Every episode is one
step long (``terminated``), so the return is the reward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from marl_jax.agents import AGENT_NAMES, AGENTS, NUM_ACTIONS

from .interface import Environment

NUM_CONTEXTS = NUM_ACTIONS


@struct.dataclass
class BanditParams:
    """The bandit's only parameter: the window of the observations (the models' input)."""

    window: int = struct.field(pytree_node=False, default=16)


@struct.dataclass
class BanditState:
    context: jax.Array  # int32: the context the agents act in


def best_actions(context: jax.Array) -> jax.Array:
    """The right action of each agent ``(..., 3)`` in ``context``: ``(context + i) % 3``."""
    offsets = jnp.arange(len(AGENTS), dtype=jnp.int32)
    return (jnp.asarray(context, jnp.int32)[..., None] + offsets) % NUM_ACTIONS


class Bandit(Environment):
    """The contextual bandit as an :class:`~marl_jax.env.interface.Environment`."""

    agents = AGENT_NAMES
    num_actions = NUM_ACTIONS

    def reset(self, key: jax.Array, params: BanditParams) -> tuple[dict, BanditState]:
        """A fresh step in a uniformly drawn context."""
        state = BanditState(context=jax.random.randint(key, (), 0, NUM_CONTEXTS, jnp.int32))
        return self.get_obs(state, params), state

    def step(self, key: jax.Array, state: BanditState, actions: jax.Array, params: BanditParams):
        """Reward: the fraction of agents whose action is :func:`best_actions`' for the
        context; then a new context (every step ends its episode)."""
        right = jnp.asarray(actions, jnp.int32) == best_actions(state.context)
        reward = right.astype(jnp.float32).mean()
        obs, next_state = self.reset(key, params)
        info = {
            "terminated": jnp.ones((), bool),
            "truncated": jnp.zeros((), bool),
            "next_obs": obs,
        }
        return obs, next_state, reward, jnp.ones((), bool), info

    def obs_key(self, state: BanditState, params: BanditParams) -> jax.Array:
        """The context."""
        del params
        return state.context

    def observe(self, params: BanditParams, keys: jax.Array) -> dict[str, jax.Array]:
        """Each agent's channels (a rising ramp on the context's channel, falling ramps on the
        others), and the critic's window means."""
        ramp = jnp.linspace(0.0, 2.0, params.window, dtype=jnp.float32)
        obs, means = {}, []
        for agent in AGENTS:
            sign = 2.0 * jax.nn.one_hot(keys, agent.input_dim, dtype=jnp.float32) - 1.0
            obs[agent.name] = sign[..., None] * ramp  # (..., C, window)
            means.append(sign)
        obs["critic"] = jnp.concatenate(means, axis=-1)
        return obs


BANDIT = Bandit()
"""The bandit environment (it holds no data: each call takes its :class:`BanditParams`)."""
