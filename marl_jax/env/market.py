"""A gymnax-style, purely functional multi-agent market environment.

Everything the environment needs lives in :class:`EnvParams` (arrays plus static fields) and
:class:`EnvState`; ``reset`` and ``step`` are pure functions of them, so they run under
``jax.jit`` and ``jax.vmap`` (one ``EnvParams`` shared by thousands of ``EnvState`` copies).

Contract
--------
``make_env_params(bars, split="train", *, episode_len=256, cost_bps=1.0, window=48, norm=None,
split_fractions=(0.7, 0.15, 0.15), features=None, bounds=None) -> EnvParams``
    Computes the 13 features (or takes precomputed raw ``features``), normalises them with
    ``norm`` (``None``: fit on the training split with :func:`fit_normalisation`; a given
    :class:`~marl_jax.env.features.FeatureNorm` is applied as it is) and records the valid start
    range of the chosen split, or of the bar range ``[start, stop)`` of ``bounds`` (the
    normalisation is then fitted on that range). ``get_normalisation(params)`` gives the
    ``FeatureNorm`` back so a trainer can save it (``norm.to_dict()``).
``reset(key, params) -> (obs, state)``
    A fresh episode at a uniformly drawn start bar ``t0`` in ``[params.start_lo,
    params.start_hi]``: flat position, equity 1.
``step(key, state, actions, params) -> (obs, state, reward, done, info)``
    ``actions``: int32 ``(3,)`` in agent order (mlmi, nwrqk, mmd), 0 bearish / 1 neutral /
    2 bullish. The agents act at bar ``t = state.t``:

    - ``position = mean(actions - 1)`` in ``[-1, 1]``;
    - ``reward = position * log(close[t+1] / close[t]) - cost_bps * 1e-4 * |position -
      previous_position|`` (float32 scalar, shared by the agents; the first step of an episode
      starts from a flat position);
    - ``equity <- equity * exp(reward)``; the state moves to bar ``t + 1``;
    - ``terminated``: bar ``t + 1`` is the last bar of the split (no next return left);
      ``truncated``: ``episode_len`` steps were taken and the episode did not terminate;
      ``done = terminated | truncated``.

    When ``done``, the returned ``obs`` and ``state`` are those of a fresh episode drawn with
    ``key`` (automatic reset). ``info`` holds ``position``, ``equity``, ``bar_index`` (the bar
    ``t`` the agents acted at), ``pnl`` (``position * next return``), ``cost``,
    ``terminated``, ``truncated``, ``next_obs`` and ``next_critic_obs`` (the observation of the
    true next state, before any automatic reset: bootstrap truncated episodes with it).
``observation_at(params, t) -> obs``
    The observation at bar ``t`` (also used by the evaluator over a whole split).

Observation: a dict of float32 arrays, ``mlmi`` ``(4, 48)``, ``nwrqk`` ``(6, 48)``, ``mmd``
``(3, 48)``: the agent's normalised features (columns 0-3, 4-9, 10-12 of ``FEATURE_NAMES``) for
the last ``window`` bars up to and including bar ``t``, channels first; ``critic`` ``(13,)``:
each agent's window averaged over time, concatenated mlmi, nwrqk, mmd.

Episodes start at bars whose whole window lies after the feature warm-up
(``start_lo >= WARMUP_BARS + window - 1``) and inside the split. Windows of the validation
and test splits may reach back into the previous split's bars (the past is known then).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from marl_jax.agents import AGENT_NAMES

from .data import Bars, canonical_split, split_bounds
from .features import (
    AGENT_FEATURES,
    NUM_FEATURES,
    WARMUP_BARS,
    FeatureNorm,
    compute_features,
)

__all__ = [
    "AGENTS",
    "NUM_ACTIONS",
    "EnvParams",
    "EnvState",
    "make_env_params",
    "fit_normalisation",
    "get_normalisation",
    "reset",
    "step",
    "observation_at",
    "observations",
    "positions_from_actions",
]

AGENTS = AGENT_NAMES
NUM_ACTIONS = 3
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


@struct.dataclass
class EnvParams:
    """Market data for one split. Array leaves are shared across vmapped environments."""

    features: jax.Array  # (T, 13) float32, normalised
    log_returns: jax.Array  # (T,) float32, log_returns[t] = log(close[t] / close[t-1]); [0] = 0
    start_lo: jax.Array  # int32 scalar: first episode start bar
    start_hi: jax.Array  # int32 scalar: last episode start bar
    last_bar: jax.Array  # int32 scalar: last bar of the split (reaching it terminates)
    norm_center: jax.Array  # (13,) float32, the FeatureNorm used (for saving)
    norm_scale: jax.Array  # (13,) float32
    window_means: jax.Array  # (T, 13) float32: mean of features[t-window+1 : t+1] (critic obs)
    episode_len: int = struct.field(pytree_node=False, default=256)
    window: int = struct.field(pytree_node=False, default=48)
    cost_bps: float = struct.field(pytree_node=False, default=1.0)
    norm_clip: float = struct.field(pytree_node=False, default=10.0)
    interval_minutes: float = struct.field(pytree_node=False, default=30.0)


@struct.dataclass
class EnvState:
    t: jax.Array  # int32: current bar index (the agents act here)
    start: jax.Array  # int32: bar the episode started at
    step_count: jax.Array  # int32: steps taken in this episode
    position: jax.Array  # float32: position held since the last step
    equity: jax.Array  # float32: exp of the summed rewards of this episode


def fit_normalisation(
    bars: Bars | None = None,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    features: np.ndarray | None = None,
    clip: float = 10.0,
    bounds: tuple[int, int] | None = None,
) -> FeatureNorm:
    """Fit the feature normalisation on the training split only (pass ``bars`` or raw
    ``features``), or on the bars ``[start, stop)`` of ``bounds`` when given; normalised values
    are clipped to ``[-clip, clip]``."""
    if features is None:
        if bars is None:
            raise ValueError("fit_normalisation needs bars or features")
        features = compute_features(bars)
    if bounds is None:
        lo, hi = split_bounds(len(features), split_fractions)["train"]
    else:
        lo, hi = _checked_bounds(bounds, len(features))
    return FeatureNorm.fit(features, lo, hi, clip=clip)


def _checked_bounds(bounds: Sequence[int], n: int) -> tuple[int, int]:
    lo, hi = (int(b) for b in bounds)
    if not 0 <= lo < hi <= n:
        raise ValueError(f"bar range [{lo}, {hi}) is not inside the {n} bars")
    return lo, hi


def get_normalisation(params: EnvParams) -> FeatureNorm:
    """The ``FeatureNorm`` that ``params.features`` were normalised with."""
    return FeatureNorm(
        center=np.asarray(params.norm_center, dtype=np.float64),
        scale=np.asarray(params.norm_scale, dtype=np.float64),
        clip=params.norm_clip,
    )


def make_env_params(
    bars: Bars,
    split: str = "train",
    *,
    episode_len: int = 256,
    cost_bps: float = 1.0,
    window: int = 48,
    norm: FeatureNorm | None = None,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    features: np.ndarray | None = None,
    norm_clip: float = 10.0,
    bounds: tuple[int, int] | None = None,
) -> EnvParams:
    """Build the environment for one split of ``bars`` (see the module docstring).

    ``bounds=(start, stop)`` gives the split as an explicit bar range instead (``split`` and
    ``split_fractions`` are then ignored). Without ``norm``, the normalisation is fitted on the
    training split (on ``bounds`` when given) and clips to ``[-norm_clip, norm_clip]``; a given
    ``norm`` keeps its own clip.
    """
    if episode_len < 1 or window < 1:
        raise ValueError("episode_len and window must be >= 1")
    n = len(bars)
    raw = compute_features(bars) if features is None else np.asarray(features)
    if raw.shape != (n, NUM_FEATURES):
        raise ValueError(f"features have shape {raw.shape}, expected ({n}, {NUM_FEATURES})")
    if norm is None:
        norm = fit_normalisation(
            split_fractions=split_fractions, features=raw, clip=norm_clip, bounds=bounds
        )
    if bounds is None:
        s0, s1 = split_bounds(n, split_fractions)[canonical_split(split)]
        label = f"split {split!r}"
    else:
        s0, s1 = _checked_bounds(bounds, n)
        label = "the bar range"
    lo = max(s0, WARMUP_BARS + window - 1)
    hi = s1 - 2
    if hi < lo:
        raise ValueError(
            f"{label} holds bars [{s0}, {s1}) but episodes need a start in "
            f"[{lo}, {hi}] (warm-up {WARMUP_BARS} + window {window} - 1, and one next bar): "
            f"use more bars than {n}"
        )
    normed = norm.apply(raw)
    cums = np.cumsum(np.r_[np.zeros((1, NUM_FEATURES)), normed.astype(np.float64)], axis=0)
    means = np.zeros_like(normed)
    means[window - 1 :] = (cums[window:] - cums[: n - window + 1]) / window
    logc = np.log(bars.close)
    log_returns = np.r_[0.0, np.diff(logc)]
    interval = bars.interval_minutes
    return EnvParams(
        features=jnp.asarray(normed),
        log_returns=jnp.asarray(log_returns, dtype=jnp.float32),
        start_lo=jnp.asarray(lo, dtype=jnp.int32),
        start_hi=jnp.asarray(hi, dtype=jnp.int32),
        last_bar=jnp.asarray(s1 - 1, dtype=jnp.int32),
        norm_center=jnp.asarray(norm.center, dtype=jnp.float32),
        norm_scale=jnp.asarray(norm.scale, dtype=jnp.float32),
        window_means=jnp.asarray(means, dtype=jnp.float32),
        episode_len=int(episode_len),
        window=int(window),
        cost_bps=float(cost_bps),
        norm_clip=float(norm.clip),
        interval_minutes=float(interval) if np.isfinite(interval) else 30.0,
    )


def observation_at(params: EnvParams, t) -> dict[str, jax.Array]:
    """The observation dict at bar ``t`` (``t >= window - 1``)."""
    start = jnp.asarray(t, dtype=jnp.int32) - (params.window - 1)
    win = jax.lax.dynamic_slice(params.features, (start, 0), (params.window, NUM_FEATURES))
    chans = win.T  # (13, window)
    obs = {name: chans[a:b] for name, (a, b) in AGENT_FEATURES.items()}
    # Each agent's window averaged over time, concatenated mlmi, nwrqk, mmd (= the feature
    # order), read from the precomputed rolling means.
    obs["critic"] = params.window_means[t]
    return obs


def observations(params: EnvParams, ts) -> dict[str, jax.Array]:
    """``observation_at`` batched over a 1-D array of bar indices (leading axis)."""
    return jax.vmap(observation_at, in_axes=(None, 0))(params, jnp.asarray(ts, dtype=jnp.int32))


def positions_from_actions(actions) -> jax.Array:
    """``mean(actions - 1)`` over the last (agent) axis, float32 in [-1, 1]."""
    return jnp.mean(jnp.asarray(actions).astype(jnp.float32) - 1.0, axis=-1)


def _reset_state(key: jax.Array, params: EnvParams) -> EnvState:
    t0 = jax.random.randint(key, (), params.start_lo, params.start_hi + 1, dtype=jnp.int32)
    return EnvState(
        t=t0,
        start=t0,
        step_count=jnp.zeros((), jnp.int32),
        position=jnp.zeros((), jnp.float32),
        equity=jnp.ones((), jnp.float32),
    )


def reset(key: jax.Array, params: EnvParams) -> tuple[dict[str, jax.Array], EnvState]:
    state = _reset_state(key, params)
    return observation_at(params, state.t), state


def step(key: jax.Array, state: EnvState, actions, params: EnvParams):
    position = positions_from_actions(actions)
    next_t = state.t + 1
    pnl = position * params.log_returns[next_t]
    cost = jnp.float32(params.cost_bps * 1e-4) * jnp.abs(position - state.position)
    reward = (pnl - cost).astype(jnp.float32)
    step_count = state.step_count + 1
    next_state = EnvState(
        t=next_t,
        start=state.start,
        step_count=step_count,
        position=position,
        equity=(state.equity * jnp.exp(reward)).astype(jnp.float32),
    )
    terminated = next_t >= params.last_bar
    truncated = (step_count >= params.episode_len) & ~terminated
    done = terminated | truncated

    reset_state = _reset_state(key, params)
    state_out = jax.tree_util.tree_map(lambda r, s: jnp.where(done, r, s), reset_state, next_state)
    obs_out = observation_at(params, state_out.t)
    # Pre-reset observation for bootstrapping; XLA drops whatever the caller does not use.
    next_obs = observation_at(params, next_t)
    info = {
        "position": position,
        "equity": next_state.equity,
        "bar_index": state.t,
        "pnl": pnl.astype(jnp.float32),
        "cost": cost.astype(jnp.float32),
        "terminated": terminated,
        "truncated": truncated,
        "next_obs": next_obs,
        "next_critic_obs": next_obs["critic"],
    }
    return obs_out, state_out, reward, done, info
