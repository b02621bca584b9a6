"""MAPPO building blocks as pure ``jax.numpy`` functions.

Every function here is free of Python-side state, so it works under ``jax.jit`` and
``jax.vmap``, and every numeric hyperparameter (``gamma``, ``lam``, ``clip_eps``,
``huber_delta``) may be a traced value. The switches that pick a code path
(``use_clipped``, ``use_huber``) are Python booleans, static under ``jit``.

The defaults follow Yu et al. 2022, "The Surprising Effectiveness of PPO in Cooperative
Multi-Agent Games" (MAPPO): clipped value loss, Huber value loss with delta 10, and value
normalisation by a debiased running mean and variance (``ValueNorm``).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

__all__ = [
    "ValueNormState",
    "aux_return_loss",
    "scaled_targets",
    "gae",
    "huber",
    "normalise_advantages",
    "ppo_clip_loss",
    "value_loss",
    "valuenorm_denormalise",
    "valuenorm_init",
    "valuenorm_mean_var",
    "valuenorm_normalise",
    "valuenorm_update",
]


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
    lam: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over a time-major rollout.

    All inputs have shape ``(T, ...)`` (usually ``(T, num_envs)``). ``values[t]`` is the
    value of the state at step ``t`` and ``next_values[t]`` the value of the state that
    step ``t`` actually led to: for a truncated step, the pre-reset next state.

    ``delta[t] = r[t] + gamma * (1 - terminated[t]) * next_values[t] - values[t]``: a
    truncated episode bootstraps from the next state's value, a terminated one does not.
    ``adv[t] = delta[t] + gamma * lam * (1 - done[t]) * adv[t + 1]`` with
    ``done = terminated | truncated``: the recursion never crosses an episode end.

    Returns ``(advantages, returns)``, ``returns = advantages + values``.
    """
    rewards = jnp.asarray(rewards)
    dtype = jnp.result_type(rewards.dtype, jnp.float32)
    rewards = rewards.astype(dtype)
    values = jnp.asarray(values, dtype)
    next_values = jnp.asarray(next_values, dtype)
    term = jnp.asarray(terminated).astype(bool)
    done = term | jnp.asarray(truncated).astype(bool)
    not_term = 1.0 - term.astype(dtype)
    not_done = 1.0 - done.astype(dtype)
    deltas = rewards + gamma * not_term * next_values - values

    def step(carry: jax.Array, xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        delta, nd = xs
        adv = delta + gamma * lam * nd * carry
        return adv, adv

    init = jnp.zeros(deltas.shape[1:], dtype)
    _, advantages = jax.lax.scan(step, init, (deltas, not_done), reverse=True)
    return advantages, advantages + values


def ppo_clip_loss(
    log_prob: jax.Array,
    old_log_prob: jax.Array,
    advantages: jax.Array,
    clip_eps: float | jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO clipped surrogate, to be minimised.

    ``ratio = exp(log_prob - old_log_prob)``;
    ``loss = -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))``.

    Metrics: ``approx_kl`` = ``mean((ratio - 1) - log(ratio))`` (the low-variance,
    non-negative estimator of KL(old || new)), ``clip_frac`` = the fraction of samples
    with ``|ratio - 1| > clip_eps``.
    """
    log_ratio = log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -jnp.mean(jnp.minimum(unclipped, clipped))
    metrics = {
        "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
        "clip_frac": jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(loss.dtype)),
    }
    return loss, metrics


def huber(error: jax.Array, delta: float | jax.Array) -> jax.Array:
    """Elementwise Huber loss: ``e**2 / 2`` if ``|e| <= delta`` else ``delta * (|e| - delta/2)``.

    Symmetric in the sign of the error (the MAPPO reference code only takes the linear
    branch for positive errors; this is the textbook definition).
    """
    abs_e = jnp.abs(error)
    return jnp.where(abs_e <= delta, 0.5 * error**2, delta * (abs_e - 0.5 * delta))


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    clip_eps: float | jax.Array,
    use_clipped: bool = True,
    use_huber: bool = True,
    huber_delta: float | jax.Array = 10.0,
) -> jax.Array:
    """MAPPO critic loss (mean over all elements).

    ``returns`` are the targets in the critic's output space: with ValueNorm, pass
    ``valuenorm_normalise(state, returns)``. The per-element loss is Huber
    (``use_huber``) or ``e**2 / 2`` of ``e = returns - values``. With ``use_clipped``,
    ``v_clip = old_values + clip(values - old_values, -clip_eps, clip_eps)`` and the
    element loss is the larger of the unclipped and clipped ones (pessimistic, as in PPO).
    """

    def elem(err: jax.Array) -> jax.Array:
        return huber(err, huber_delta) if use_huber else 0.5 * err**2

    loss = elem(returns - values)
    if use_clipped:
        v_clip = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
        loss = jnp.maximum(loss, elem(returns - v_clip))
    return jnp.mean(loss)


def normalise_advantages(
    adv: jax.Array, eps: float = 1e-8, axis: int | tuple[int, ...] | None = None
) -> jax.Array:
    """``(adv - mean) / (std + eps)`` over ``axis`` (default: all elements)."""
    mean = jnp.mean(adv, axis=axis, keepdims=True)
    return (adv - mean) / (jnp.std(adv, axis=axis, keepdims=True) + eps)


@flax.struct.dataclass
class ValueNormState:
    """Running statistics of the value targets (MAPPO ValueNorm), all float32 scalars.

    ``running_mean`` and ``running_mean_sq`` are exponential moving averages of the batch
    mean and mean square; ``debiasing_term`` is the same average of 1, which removes the
    bias of starting the averages at zero (as in Adam).
    """

    running_mean: jax.Array
    running_mean_sq: jax.Array
    debiasing_term: jax.Array


def valuenorm_init() -> ValueNormState:
    """All-zero statistics: before any update, normalise is ``x / 0.1`` (var floor 1e-2)."""
    z = jnp.zeros((), jnp.float32)
    return ValueNormState(running_mean=z, running_mean_sq=z, debiasing_term=z)


def valuenorm_update(state: ValueNormState, x: jax.Array, beta: float = 0.99999) -> ValueNormState:
    """Fold a batch of targets ``x`` (any shape; reduced over all elements) into the EMAs (the
    debiasing ``epsilon`` applies when reading them: :func:`valuenorm_mean_var`)."""
    x = jnp.asarray(x, jnp.float32)
    batch_mean = jnp.mean(x)
    batch_sq = jnp.mean(x**2)
    return ValueNormState(
        running_mean=beta * state.running_mean + (1.0 - beta) * batch_mean,
        running_mean_sq=beta * state.running_mean_sq + (1.0 - beta) * batch_sq,
        debiasing_term=beta * state.debiasing_term + (1.0 - beta),
    )


def valuenorm_mean_var(state: ValueNormState, epsilon: float = 1e-5) -> tuple[jax.Array, jax.Array]:
    """Debiased ``(mean, var)``; ``var = max(E[x^2] - E[x]^2, 1e-2)``."""
    denom = jnp.maximum(state.debiasing_term, epsilon)
    mean = state.running_mean / denom
    mean_sq = state.running_mean_sq / denom
    var = jnp.maximum(mean_sq - mean**2, 1e-2)
    return mean, var


def valuenorm_normalise(state: ValueNormState, x: jax.Array, epsilon: float = 1e-5) -> jax.Array:
    """``(x - mean) / sqrt(var)``."""
    mean, var = valuenorm_mean_var(state, epsilon)
    return (x - mean) / jnp.sqrt(var)


def valuenorm_denormalise(state: ValueNormState, x: jax.Array, epsilon: float = 1e-5) -> jax.Array:
    """``x * sqrt(var) + mean``: critic output back to return units."""
    mean, var = valuenorm_mean_var(state, epsilon)
    return x * jnp.sqrt(var) + mean


def scaled_targets(targets: jax.Array) -> jax.Array:
    """``targets`` over their standard deviation in this batch, so an auxiliary loss does not
    depend on the environment's scale; targets with no spread (one row) stay as they are."""
    std = jnp.std(targets)
    return targets / jnp.where(std > 0, std, 1.0)


def aux_return_loss(
    heads: dict, features: dict[str, jax.Array], targets: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Auxiliary loss: each agent's head (``{'kernel': (F,), 'bias': ()}``) maps its features
    ``(N, F)`` to a prediction of ``targets`` ``(N,)``; the sum over agents of the mean squared
    errors, and each agent's as ``<agent>/aux_loss``."""
    total, metrics = jnp.zeros((), jnp.float32), {}
    for name, feats in features.items():
        predicted = feats @ heads[name]["kernel"] + heads[name]["bias"]
        metrics[f"{name}/aux_loss"] = jnp.mean((predicted - targets) ** 2)
        total = total + metrics[f"{name}/aux_loss"]
    metrics["aux_loss"] = total
    return total, metrics
