"""The three actors and the critic of one run, applied as one team.

:class:`Team` builds the models from a config and applies them in the run's compute dtype:
with bfloat16, the actors' parameters and inputs are cast for the call (the float32 master
weights receive the gradient), while norms, softmax and log-probabilities stay float32 inside
the models. The critic always computes in float32: near convergence its value errors are
smaller than bfloat16 resolves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from marl_jax.agents import AGENT_NAMES, MODEL_NAMES
from marl_jax.models.components import uniform_init
from marl_jax.models.recurrences import resolve_rnn_backend
from marl_jax.models.registry import build_module, example_input, init_variables, model_kwargs

if TYPE_CHECKING:
    from marl_jax.config import Config

Array = jax.Array


def cast_floats(tree: Any, dtype: Any) -> Any:
    """``tree`` with its floating-point leaves cast to ``dtype`` (other leaves as they are)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x,
        tree,
    )


def as_key_data(rng: Array) -> Array:
    """uint32 key data from a typed key or raw key data."""
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    return rng.astype(jnp.uint32)


def split_variables(variables: Mapping) -> tuple[dict, dict]:
    """``(params, constants)`` of a Flax variables dict."""
    params = variables["params"]
    return params, {k: v for k, v in variables.items() if k != "params"}


def build_modules(config: Config) -> dict[str, nn.Module]:
    """The three actors and the critic from the config's model sections; the actors' LSTMs
    run on ``training.rnn_backend`` (``auto``: cuDNN on a CUDA GPU, else ``lax.scan``)."""
    backend = resolve_rnn_backend(config.training.rnn_backend)
    modules = {
        name: build_module(name, model_kwargs(config, name) | {"rnn_backend": backend})
        for name in AGENT_NAMES
    }
    modules["critic"] = build_module("critic", model_kwargs(config, "critic"))
    return modules


@dataclasses.dataclass(frozen=True)
class Team:
    """The models by name (``mlmi``, ``nwrqk``, ``mmd``, ``critic``) and their compute dtype."""

    modules: Mapping[str, nn.Module]
    compute_dtype: Any = jnp.float32

    def init_variables(
        self, rng: Array, init: Mapping[str, Mapping] | None = None
    ) -> tuple[dict, dict]:
        """``(params, constants)`` by model name: ``init[name]``'s variables where given, else
        fresh ones drawn with PyTorch's default initialisation from ``rng`` (raw key data)."""
        params, constants = {}, {}
        keys = jax.random.split(rng, len(MODEL_NAMES))
        for key, name in zip(keys, MODEL_NAMES, strict=True):
            if init is not None and name in init:
                variables = init[name]
            else:
                variables = init_variables(self.modules[name], jax.random.wrap_key_data(key))
            params[name], constants[name] = split_variables(variables)
        return params, constants

    def check_inputs(self, specs: Mapping[str, jax.ShapeDtypeStruct], source: str) -> None:
        """Raises ValueError in one line if the observations ``specs`` (by model name) do not
        fit the models: an actor's channels (any window length runs) or the critic's state."""
        for name, module in self.modules.items():
            want = example_input(module).shape[1:]
            got = tuple(specs[name].shape) if name in specs else None
            if got is None or got[:1] != want[:1] or len(got) != len(want):
                shape = "(channels, window)" if len(want) == 2 else "(state,)"
                raise ValueError(
                    f"{source} observes {got or 'nothing'} for {name}, whose model takes "
                    f"{shape} = {want[:1]} + ...; give the environment the agent table's "
                    "features"
                )

    def apply(self, name: str, variables: Mapping, inputs: Array, **kwargs: Any) -> dict:
        """Model ``name``'s outputs, floats as float32."""
        if jnp.dtype(self.compute_dtype) != jnp.float32 and name != "critic":
            cast = self.compute_dtype
            variables = {**variables, "params": cast_floats(variables["params"], cast)}
            inputs = inputs.astype(cast)
        out = self.modules[name].apply(variables, inputs, **kwargs)
        return cast_floats(out, jnp.float32)

    def act(
        self, variables: Mapping[str, Mapping], obs: Mapping[str, Array], rng: Array | None
    ) -> tuple[Array, Array]:
        """Actions ``(N, 3)`` and their log-probs, sampled with ``rng`` (raw key data), or
        greedy when it is None."""
        return self.act_with_probs(variables, obs, rng)[:2]

    def act_with_probs(
        self, variables: Mapping[str, Mapping], obs: Mapping[str, Array], rng: Array | None
    ) -> tuple[Array, Array, Array]:
        """:meth:`act`'s actions and log-probs, and each actor's action probabilities
        ``(N, 3, num_actions)``."""
        actions, log_probs, probs = [], [], []
        keys = (
            jax.random.split(rng, len(AGENT_NAMES))
            if rng is not None
            else [None] * len(AGENT_NAMES)
        )
        for key, name in zip(keys, AGENT_NAMES, strict=True):
            out = self.apply(
                name,
                variables[name],
                obs[name],
                deterministic=key is None,
                rngs=None if key is None else {"action": jax.random.wrap_key_data(key)},
                attention_weights=False,
            )
            actions.append(out["action"])
            log_probs.append(out["log_prob"])
            probs.append(out["action_probs"])
        return jnp.stack(actions, -1), jnp.stack(log_probs, -1), jnp.stack(probs, -2)

    def actor_outputs(
        self,
        variables: Mapping[str, Mapping],
        obs: Mapping[str, Array],
        actions: Array,
        **kwargs: Any,
    ) -> dict[str, dict]:
        """Each actor's outputs for the given ``actions`` ``(N, 3)``: the log-prob and entropy
        of its column, under ``variables[name]``."""
        return {
            name: self.apply(
                name,
                variables[name],
                obs[name],
                actions=actions[:, i],
                attention_weights=False,
                **kwargs,
            )
            for i, name in enumerate(AGENT_NAMES)
        }

    def critic_value(self, variables: Mapping, critic_obs: Array) -> Array:
        """The critic's value of each row of ``critic_obs``."""
        return self.apply("critic", variables, critic_obs)["value"]

    def init_aux_heads(self, rng: Array) -> dict:
        """Auxiliary return heads: per actor, a linear map of its last features, the kernel
        drawn as PyTorch draws a ``Linear(width, 1)``'s weight, the bias zero."""
        heads = {}
        for key, name in zip(jax.random.split(rng, len(AGENT_NAMES)), AGENT_NAMES, strict=True):
            width = self.modules[name].hidden_dims[-1]
            kernel = uniform_init(1.0 / math.sqrt(width))(key, (width,))
            heads[name] = {"kernel": kernel, "bias": jnp.zeros((), jnp.float32)}
        return heads
