"""The environment interface the learner trains on, in gymnax's shape.

An :class:`Environment` holds no data: everything an episode needs lives in its ``params``
(a pytree shared by every vmapped copy) and ``state`` (one per copy), and every method is a
pure function of them, so the learner can ``jax.jit`` and ``jax.vmap`` it. Agents act
together: ``actions`` is an int32 array with one column per agent of :attr:`agents`, each in
``[0, num_actions)``. Observations are dicts with one entry per agent (the actor's input)
and a ``"critic"`` entry (the centralized critic's input).

Three methods go beyond gymnax. Rollout buffers store :meth:`Environment.obs_key` (a few
numbers per step) instead of the observation, and the loss rebuilds the observations with
:meth:`Environment.observe`; :meth:`Environment.aux_targets`, where an environment has one,
gives a per-step quantity that actors may learn to predict as an auxiliary task; and
:meth:`Environment.counterfactual_rewards` gives what one agent's other actions would have
earned, for counterfactual credit (``training.credit``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Obs = dict[str, Array]


class Environment:
    """A multi-agent environment: pure functions of ``(key, state, actions, params)``."""

    agents: tuple[str, ...] = ()
    """Agent names, in the order of the columns of ``actions``."""
    num_actions: int = 0
    """Actions of every agent."""

    def reset(self, key: Array, params: Any) -> tuple[Obs, Any]:
        """``(obs, state)`` of a fresh episode drawn with ``key``."""
        raise NotImplementedError

    def step(
        self, key: Array, state: Any, actions: Array, params: Any
    ) -> tuple[Obs, Any, Array, Array, dict[str, Any]]:
        """``(obs, state, reward, done, info)`` after the agents take ``actions`` in ``state``.

        ``reward`` is a float32 scalar shared by the agents and ``done = terminated |
        truncated``. When ``done``, ``obs`` and ``state`` are those of a fresh episode drawn
        with ``key`` (automatic reset). ``info`` holds at least ``terminated`` (the episode
        reached a state with no future: its value is 0), ``truncated`` (it was cut short: its
        value is bootstrapped) and ``next_obs`` (the observation of the true next state,
        before any automatic reset)."""
        raise NotImplementedError

    def counterfactual_rewards(self, key: Array, state: Any, actions: Array, params: Any) -> Array:
        """``(agents, num_actions)``: the reward :meth:`step` would give in ``state`` with
        ``key`` had agent ``i`` taken action ``a`` and the others ``actions``; row ``i`` at
        ``actions[i]`` is the step's own reward. Steps once per agent and action; an
        environment may override it with a cheaper formula."""
        n, k = len(self.agents), self.num_actions
        own = jnp.arange(n)[:, None, None] == jnp.arange(n)  # (n, 1, n): agent i's column
        alt = jnp.where(own, jnp.arange(k)[None, :, None], jnp.asarray(actions)[None, None, :])

        def reward(a: Array) -> Array:
            return self.step(key, state, a.astype(jnp.int32), params)[2]

        return jax.vmap(jax.vmap(reward))(alt)

    def get_obs(self, state: Any, params: Any) -> Obs:
        """The observation of ``state``."""
        return self.observe(params, self.obs_key(state, params))

    def obs_key(self, state: Any, params: Any) -> Any:
        """A small array (or pytree of arrays) from which :meth:`observe` rebuilds the
        observation of ``state`` under ``params``."""
        raise NotImplementedError

    def observe(self, params: Any, keys: Array) -> Obs:
        """The observations of a batch of :meth:`obs_key` values (leading axis: the batch)."""
        raise NotImplementedError

    def observation_specs(self, params: Any) -> dict[str, jax.ShapeDtypeStruct]:
        """Shape and dtype of each entry of one observation (agent names and ``"critic"``)."""
        one = jax.eval_shape(lambda k: self.reset(k, params)[0], jax.random.key(0))
        return dict(one)

    def aux_targets(self, params: Any, keys: Array) -> Array:
        """Per-step auxiliary targets for a batch of :meth:`obs_key` values; environments
        without one raise ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} has no auxiliary targets")

    def step_stats(self, info: dict[str, Any]) -> dict[str, Array]:
        """What a rollout keeps of each step's ``info`` for :meth:`rollout_metrics`."""
        del info
        return {}

    def rollout_metrics(self, stats: dict[str, Array], done: Array) -> dict[str, Array]:
        """The environment's own metrics of a rollout from its stacked :meth:`step_stats`
        (leading axes ``(T, N)``) and ``done`` flags."""
        del stats, done
        return {}
