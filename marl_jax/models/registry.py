"""Model names, configurations and initialisation shared by the trainer and the bridge."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from marl_jax.agents import FIXED_BY, MODEL_NAMES, POSITION_INPUTS, fixed_sizes
from marl_jax.models.actors import ACTOR_CLASSES, StrategicActor
from marl_jax.models.components import UniformSource, uniform_source
from marl_jax.models.critic import CentralizedCritic

if TYPE_CHECKING:
    from marl_jax.config import Config

MODEL_CLASSES: dict[str, type[nn.Module]] = {**ACTOR_CLASSES, "critic": CentralizedCritic}


# How a model runs, not what it is: left out of saved and exported model configurations.
RUNTIME_FIELDS = frozenset({"rnn_backend"})


def module_config(module: nn.Module) -> dict[str, Any]:
    """The constructor keyword arguments that define a model (not :data:`RUNTIME_FIELDS`), as
    plain JSON-friendly values."""
    config = {}
    for field in dataclasses.fields(module):
        if field.name in ("parent", "name") or field.name in RUNTIME_FIELDS:
            continue
        value = getattr(module, field.name)
        config[field.name] = list(value) if isinstance(value, tuple) else value
    return config


def build_module(name: str, config: Mapping[str, Any] | None = None) -> nn.Module:
    """Builds model ``name`` (mlmi, nwrqk, mmd or critic) from constructor keyword arguments."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return MODEL_CLASSES[name](**dict(config or {}))


def model_kwargs(config: Config, name: str) -> dict[str, Any]:
    """Model ``name``'s constructor keyword arguments: its config section plus the sizes the
    agent table and ``env.window`` fix (:func:`marl_jax.agents.fixed_sizes`)."""
    section = config.critic if name == "critic" else getattr(config.agents, name)
    sizes = fixed_sizes(name, config.env.window, config.env.observe_position)
    return section.to_kwargs() | sizes


def configurable_kwargs(
    name: str, kwargs: Mapping[str, Any], observe_position: bool = False
) -> dict[str, Any]:
    """A model configuration (``module_config``, e.g. a checkpoint's) as a config section: the
    fixed sizes are dropped. Raises ValueError in one line when one disagrees with the agent
    table, with or without the position input (``observe_position``; ``sequence_length`` has no
    weights and follows ``env.window``, so any goes)."""
    fixed = fixed_sizes(name, window=0, observe_position=observe_position)
    for key, want in fixed.items():
        if key != "sequence_length" and key in kwargs and kwargs[key] != want:
            raise ValueError(
                f"model {name} has {key}={kwargs[key]}, but {FIXED_BY[key]} fix it at {want}"
            )
    return {k: v for k, v in kwargs.items() if k not in fixed}


def _input_size(name: str, config: Mapping[str, Any]) -> tuple[str, int | None]:
    key = "state_dim" if name == "critic" else "input_dim"
    return key, config.get(key)


def observes_position(configs: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether models of these configurations (``module_config`` by model name) take the
    position input of ``env.observe_position``: every input one wider than the agent table's.
    Raises ValueError in one line when some do and some do not, or one fits neither."""
    found: dict[str, bool] = {}
    for name, config in configs.items():
        key, got = _input_size(name, config)
        if got is None:
            continue
        plain = fixed_sizes(name, 0)[key]
        if got not in (plain, plain + POSITION_INPUTS):
            raise ValueError(
                f"model {name} has {key}={got}, but {FIXED_BY[key]} fix it at {plain} "
                f"(or {plain + POSITION_INPUTS})"
            )
        found[name] = got != plain
    if len(set(found.values())) > 1:
        which = ", ".join(name for name, yes in found.items() if yes)
        raise ValueError(
            f"only {which} of the models take the position input (env.observe_position); "
            "all of them or none must"
        )
    return any(found.values())


def example_input(module: nn.Module, batch: int = 1) -> jax.Array:
    """A zero input of the shape the module takes (used to initialise it)."""
    if isinstance(module, StrategicActor):
        return jnp.zeros((batch, module.input_dim, module.sequence_length), jnp.float32)
    if isinstance(module, CentralizedCritic):
        return jnp.zeros((batch, module.state_dim), jnp.float32)
    raise TypeError(f"not a Strategic MARL model: {type(module).__name__}")


def _init(module: nn.Module, key: jax.Array) -> dict:
    kwargs = {"deterministic": True} if isinstance(module, StrategicActor) else {}
    x = example_input(module)
    counter = UniformSource()
    with uniform_source(counter):
        jax.eval_shape(lambda k: module.init({"params": k}, x, **kwargs), key)
    with uniform_source(UniformSource(jax.random.uniform(key, (counter.taken,)))):
        return module.init({"params": key}, x, **kwargs)


_jitted_init = jax.jit(_init, static_argnums=0)


def init_variables(module: nn.Module, rng: jax.Array) -> dict:
    """Fresh variables with PyTorch's default initialisation (``init`` compiled once per
    module configuration)."""
    return _jitted_init(module, rng)


def abstract_variables(module: nn.Module) -> dict:
    """Shapes and dtypes of the module's variables, without computing them."""
    return jax.eval_shape(lambda key: init_variables(module, key), jax.random.key(0))
