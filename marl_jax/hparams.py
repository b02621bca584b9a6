"""The traced hyperparameters of a training run: what a population may vary in one program."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from marl_jax.config import Config

Array = jax.Array


@struct.dataclass
class HyperParams:
    """Numeric hyperparameters, traced (so ``jax.vmap`` can sweep them)."""

    actor_lr: Array
    critic_lr: Array
    ent_coef: Array
    clip_eps: Array
    gamma: Array
    gae_lambda: Array
    value_loss_coef: Array

    @classmethod
    def from_config(cls, config: Config) -> HyperParams:
        """The config's ``training.<name>`` values as float32 scalars."""
        t = config.training
        return cls(**{name: jnp.asarray(getattr(t, name), jnp.float32) for name in HPARAM_NAMES})


HPARAM_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HyperParams))
"""The traced hyperparameters: ``training.<name>`` keys a population shares one program for."""
