"""The optimizer of each model, and its learning rate as traced state.

Each model (the three actors and the critic) has its own optax state, so each
policy's gradient is clipped by its own global norm (``max_grad_norm``) as in MAPPO's
reference code: a large NWRQK gradient does not shrink the MLMI or MMD steps. The learning
rate lives in the optimizer state (``optax.inject_hyperparams``), set from the traced
:class:`HyperParams` at ``init``, so it can be vmapped and changed between updates. With
``anneal_lr`` it is multiplied by ``optax.linear_schedule(1, 0, N)`` over the
``N = num_updates * update_epochs * num_minibatches`` minibatch steps of the configured run.
When a resumed run raises ``total_timesteps``, ``N`` grows: the step counter carries on, so the
factor continues from ``1 - done / N_new`` (a step up from where it was) and reaches 0 at the
new end.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from marl_jax.agents import AUX, MODEL_NAMES
from marl_jax.config import TrainingConfig
from marl_jax.hparams import HyperParams

Array = jax.Array


def make_optimizer(training: TrainingConfig, num_updates: int) -> optax.GradientTransformation:
    """One model's optimizer: clip its gradient's global norm, Adam with an injected learning
    rate (set per model at init), and the linear anneal when ``anneal_lr``.

    It works on the parameters raveled into one vector (``optax.flatten``): the update then
    compiles to a few kernels rather than a few per weight, most of a small model's compile
    time on a CPU. The arithmetic is elementwise, so only the norm's order of summation
    differs from the per-weight form."""
    parts = [
        optax.clip_by_global_norm(training.max_grad_norm),
        optax.inject_hyperparams(optax.adam)(learning_rate=1.0, eps=training.adam_eps),
    ]
    if training.anneal_lr:
        steps = num_updates * training.update_epochs * training.num_minibatches
        parts.append(optax.scale_by_schedule(optax.linear_schedule(1.0, 0.0, steps)))
    return optax.flatten(optax.chain(*parts))


def learning_rates(hparams: HyperParams) -> dict[str, Array]:
    """Each model's learning rate: ``actor_lr`` for the actors (and the auxiliary return
    heads), ``critic_lr`` for the critic."""
    return {
        name: hparams.critic_lr if name == "critic" else hparams.actor_lr
        for name in (*MODEL_NAMES, AUX)
    }


def with_learning_rates(opt_state: dict, rates: Mapping[str, Array]) -> dict:
    """``opt_state`` with each model's injected learning rate replaced."""
    return {
        name: optax.tree_utils.tree_set(state, learning_rate=jnp.asarray(rates[name], jnp.float32))
        for name, state in opt_state.items()
    }
