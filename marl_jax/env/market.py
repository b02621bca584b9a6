"""A gymnax-style, purely functional multi-agent market environment.

Everything the environment needs lives in :class:`EnvParams` (arrays plus static fields) and
:class:`EnvState`; ``reset`` and ``step`` are pure functions of them, so they run under
``jax.jit`` and ``jax.vmap`` (one ``EnvParams`` shared by thousands of ``EnvState`` copies).

Contract
--------
``make_env_params(bars, split="train", *, episode_len=256, cost_bps=1.0, window=48, norm=None,
split_fractions=(0.7, 0.15, 0.15), features=None, reward="pnl", action_mode="target",
position_sizing="fixed", ..., return_stats=None, bounds=None, periods_per_year=None) -> EnvParams``
    Computes the 13 features (or takes precomputed raw ``features``), normalises them with
    ``norm`` (``None``: fit on the training split with :func:`fit_normalisation`; a given
    :class:`~marl_jax.env.features.FeatureNorm` is applied as it is) and records the valid start
    range of the chosen split, or of the bar range ``[start, stop)`` of ``bounds`` (the
    normalisation is then fitted on that range). ``get_normalisation(params)`` gives the
    ``FeatureNorm`` back so a trainer can save it (``norm.to_dict()``). ``return_stats``
    ``(mu, m2)``: the mean and mean square of the bar returns the training split (or the
    ``bounds`` range) pays (``None``: computed from ``bars``, so every split of one market
    shares them; ``get_return_stats(params)``). ``periods_per_year`` annualises the
    volatility scale and, as ``params.periods_per_year``, every metric of the split (``None``:
    :func:`bars_per_year` of ``bars``).
``bars_per_year(bars, split_fractions=(0.7, 0.15, 0.15)) -> float``
    Bars per year of a bar file's own calendar, measured on its train split's timestamps
    (:func:`marl_jax.env.data.periods_per_year_of`); ``periods_per_year_at(interval_minutes)``
    is a nominal calendar (252 days of 24 hours), the synthetic market's.
``reset(key, params) -> (obs, state)`` and ``step(key, state, actions, params) -> (obs, state,
reward, done, info)``
    The environment's contract: see their docstrings. :data:`MARKET` is the same pair as an
    :class:`~marl_jax.env.interface.Environment`, the interface MAPPO trains on. Rewards
    (``reward``): the net return ``position * r[t+1] - cost`` (``pnl``); less ``position * mu``,
    ``mu`` the training split's mean bar return (``excess``: a constant position earns nothing
    in expectation); or Moody and Saffell's differential Sharpe ratio of the net return
    (``differential_sharpe``, EMA rate ``dsr_eta``; each episode starts its EMAs at ``A = 0``
    and ``B = m2``, a unit position's mean square return on the training split). Positions:
    the signal (``action_mode``: the mean vote, or the previous signal moved by ``delta_step``
    x the vote) times ``vol_scale[t]`` (1, or ``min(target_vol / sigma_t, max_leverage)`` with
    ``sigma_t`` an annualised EWMA of past squared returns, span ``vol_span``: Zhang, Zohren
    and Roberts 2020).
``make_multi_env_params(bars_list, split="train", *, norms=None, return_stats=None, **kw)
-> (EnvParams, [EnvParams])``
    Several instruments in one environment: each instrument's split is built with
    ``make_env_params`` (its own normalisation, ``mu``, ``m2`` and volatility scale, fitted on
    its own training split) and their arrays are concatenated along time; ``start_lo``,
    ``start_hi``, ``last_bar``, ``return_mean``, ``return_sq`` become ``(K,)`` arrays of global
    bar indices and statistics. ``reset`` draws the instrument uniformly, then its start; an
    episode never leaves its instrument. The static fields (cost, window, bar interval, periods
    per year) are the first instrument's. The list holds each instrument's own ``EnvParams``
    (evaluate and save each instrument's normalisation with these).
``observation_at(params, t) -> obs``
    The observation at bar ``t`` (also used by the evaluator over a whole split).
``positions_from_actions(actions, params, bars)`` / ``net_returns(positions, params, bars)``
    The environment's positions and its ``(pnl, cost)`` for actions taken at consecutive bars
    from a flat start: the evaluator scores a policy with these, so it applies the same
    positions and costs as training.

Observation: a dict of float32 arrays, ``mlmi`` ``(4, 48)``, ``nwrqk`` ``(6, 48)``, ``mmd``
``(3, 48)``: the agent's normalised features (columns 0-3, 4-9, 10-12 of ``FEATURE_NAMES``) for
the last ``window`` bars up to and including bar ``t``, channels first; ``critic`` ``(13,)``:
each agent's window averaged over time, concatenated mlmi, nwrqk, mmd. Under
``observe_position`` (``make_env_params(..., observe_position=True)``, the config's
``env.observe_position``) each actor's input has one more channel, constant over the window,
and the critic's one more feature, last: the signal held at ``t`` (set at ``t - 1``, in [-1, 1]
before sizing; flat at an episode's start); ``Market.obs_key`` is then a :class:`HeldBar`.

Episodes start at bars whose whole window lies after the feature warm-up
(``start_lo >= WARMUP_BARS + window - 1``) and inside the split. Windows of the validation
and test splits may reach back into the previous split's bars (the past is known then).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from marl_jax.agents import AGENT_NAMES, NUM_ACTIONS

from .data import Bars, canonical_split, periods_per_year_of, split_bounds
from .features import (
    AGENT_FEATURES,
    NUM_FEATURES,
    WARMUP_BARS,
    FeatureNorm,
    compute_features,
)
from .interface import Environment

if TYPE_CHECKING:
    from marl_jax.config import Config

__all__ = [
    "MARKET",
    "Market",
    "EnvParams",
    "EnvState",
    "make_env_params",
    "env_modes",
    "fit_normalisation",
    "get_normalisation",
    "reset",
    "step",
    "observation_at",
    "observations",
    "with_position",
    "bar_of",
    "HeldBar",
    "positions_from_actions",
    "net_returns",
    "trade_returns",
    "combined_vote",
    "next_signal",
    "differential_sharpe",
    "get_return_stats",
    "make_multi_env_params",
    "combine_instruments",
    "periods_per_year_at",
    "bars_per_year",
    "interval_minutes_of",
    "REWARDS",
    "ACTION_MODES",
    "POSITION_SIZINGS",
]

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
REWARDS = ("pnl", "excess", "differential_sharpe")
ACTION_MODES = ("target", "delta")
POSITION_SIZINGS = ("fixed", "vol_target")
TRADING_DAYS = 252
# The differential Sharpe ratio's variance estimate is floored at this share of the training
# split's mean square return, so a long flat stretch cannot blow the next reward up.
DSR_VAR_FLOOR = 1e-2


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
    vol_scale: jax.Array  # (T,) float32: position per unit of signal at bar t (1 when fixed)
    # float32 scalars, or (K,) over the instruments of a multi-instrument market (as are
    # start_lo, start_hi and last_bar):
    return_mean: jax.Array  # mean bar return of the training split (mu)
    return_sq: jax.Array  # mean square bar return of the training split
    episode_len: int = struct.field(pytree_node=False, default=256)
    window: int = struct.field(pytree_node=False, default=48)
    cost_bps: float = struct.field(pytree_node=False, default=1.0)
    norm_clip: float = struct.field(pytree_node=False, default=10.0)
    interval_minutes: float = struct.field(pytree_node=False, default=30.0)
    # Bars per year: annualises the volatility scale and every metric of this split.
    periods_per_year: float = struct.field(pytree_node=False, default=12096.0)
    reward: str = struct.field(pytree_node=False, default="pnl")
    action_mode: str = struct.field(pytree_node=False, default="target")
    delta_step: float = struct.field(pytree_node=False, default=0.5)
    dsr_eta: float = struct.field(pytree_node=False, default=0.01)
    # Every observation holds the position held at the bar (see ``observation_at``).
    observe_position: bool = struct.field(pytree_node=False, default=False)


@struct.dataclass
class HeldBar:
    """What the market rebuilds an observation from when it observes the position: the bar
    and the signal held there (``Market.obs_key`` under ``observe_position``)."""

    t: jax.Array  # int32: the bar the agents act at
    position: jax.Array  # float32: the signal held at t (set at t - 1), in [-1, 1]


@struct.dataclass
class EnvState:
    t: jax.Array  # int32: current bar index (the agents act here)
    start: jax.Array  # int32: bar the episode started at
    step_count: jax.Array  # int32: steps taken in this episode
    position: jax.Array  # float32: position held since the last step (sized)
    equity: jax.Array  # float32: exp of the summed net returns of this episode
    signal: jax.Array  # float32: the agents' signal behind ``position``, in [-1, 1]
    dsr_a: jax.Array  # float32: EMA of the net return (differential Sharpe ratio's A)
    dsr_b: jax.Array  # float32: EMA of the squared net return (B)
    instrument: jax.Array  # int32: the instrument of a multi-instrument market (else 0)


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


def get_return_stats(params: EnvParams) -> tuple[float, float]:
    """``(mu, m2)``: the training split's mean and mean square bar return that ``params``
    reward with (pass them as ``return_stats`` to build another market's splits alike)."""
    return float(params.return_mean), float(params.return_sq)


def periods_per_year_at(interval_minutes: float) -> float:
    """Bars per year of a nominal calendar, 252 trading days of 24 hours (12096 for 30-minute
    bars): the synthetic market's, which has no calendar of its own."""
    return TRADING_DAYS * 24 * 60 / float(interval_minutes)


def bars_per_year(bars: Bars, split_fractions: Sequence[float] = DEFAULT_FRACTIONS) -> float:
    """Bars per year of the bars' own calendar, measured on the timestamps of their train
    split (:func:`marl_jax.env.data.periods_per_year_of`); on all of them when the train split
    spans no time, and the nominal :func:`periods_per_year_at` of their interval when they
    do not either."""
    lo, hi = split_bounds(len(bars), split_fractions)["train"]
    for stamps in (bars.timestamp[lo:hi], bars.timestamp):
        measured = periods_per_year_of(stamps)
        if np.isfinite(measured):
            return measured
    return periods_per_year_at(interval_minutes_of(bars))


def _episode_range(
    n: int,
    split: str,
    fractions: Sequence[float],
    window: int,
    bounds: Sequence[int] | None = None,
) -> tuple:
    """``(start_lo, start_hi, last_bar)`` of the episodes of a split, or of the bar range
    ``bounds``; ValueError if it has none."""
    if bounds is None:
        s0, s1 = split_bounds(n, fractions)[canonical_split(split)]
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
    return lo, hi, s1 - 1


def interval_minutes_of(bars) -> float:
    """The bars' interval in minutes; 30 (the original system's bars) when a file does not
    say (a single bar)."""
    interval = bars.interval_minutes
    return float(interval) if np.isfinite(interval) else 30.0


def vol_scale(
    log_returns: np.ndarray, span: int, target_vol: float, max_leverage: float, per_year: float
) -> np.ndarray:
    """``min(target_vol / sigma_t, max_leverage)`` per bar: ``sigma_t`` is the annualised
    EWMA (span ``span``, weights normalised as pandas' ``adjust=True``) of the squared returns
    ``r[1..t]``; bar 0 has no return yet and gets 0."""
    decay = 1.0 - 2.0 / (span + 1.0)
    out = np.zeros(len(log_returns))
    num = den = 0.0
    for t in range(1, len(log_returns)):
        num = decay * num + float(log_returns[t]) ** 2
        den = decay * den + 1.0
        sigma = np.sqrt(num / den * per_year)
        out[t] = max_leverage if sigma * max_leverage <= target_vol else target_vol / sigma
    return out


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
    reward: str = "pnl",
    dsr_eta: float = 0.01,
    action_mode: str = "target",
    delta_step: float = 0.5,
    position_sizing: str = "fixed",
    vol_span: int = 60,
    target_vol: float = 0.1,
    max_leverage: float = 2.0,
    return_stats: tuple[float, float] | None = None,
    bounds: tuple[int, int] | None = None,
    periods_per_year: float | None = None,
    observe_position: bool = False,
) -> EnvParams:
    """Build the environment for one split of ``bars`` (see the module docstring).

    ``bounds=(start, stop)`` gives the split as an explicit bar range instead (``split`` and
    ``split_fractions`` are then ignored). Without ``norm``, the normalisation is fitted on the
    training split (on ``bounds`` when given) and clips to ``[-norm_clip, norm_clip]``; a given
    ``norm`` keeps its own clip.
    """
    _check_modes(episode_len, window, reward, action_mode, position_sizing)
    n = len(bars)
    raw = compute_features(bars) if features is None else np.asarray(features)
    if raw.shape != (n, NUM_FEATURES):
        raise ValueError(f"features have shape {raw.shape}, expected ({n}, {NUM_FEATURES})")
    if norm is None:
        norm = fit_normalisation(
            split_fractions=split_fractions, features=raw, clip=norm_clip, bounds=bounds
        )
    lo, hi, last = _episode_range(n, split, split_fractions, window, bounds)
    normed = norm.apply(raw)
    means = _window_means(normed, window)
    log_returns = np.r_[0.0, np.diff(np.log(bars.close))]
    if return_stats is None:
        return_stats = _train_return_stats(log_returns, split_fractions, window, bounds)
    interval = interval_minutes_of(bars)
    per_year = float(
        bars_per_year(bars, split_fractions) if periods_per_year is None else periods_per_year
    )
    if not per_year > 0:
        raise ValueError(f"periods_per_year must be > 0, got {per_year:g}")
    scale = np.ones(n)
    if position_sizing == "vol_target":
        scale = vol_scale(log_returns, vol_span, target_vol, max_leverage, per_year)
    return EnvParams(
        features=jnp.asarray(normed),
        log_returns=jnp.asarray(log_returns, dtype=jnp.float32),
        start_lo=jnp.asarray(lo, dtype=jnp.int32),
        start_hi=jnp.asarray(hi, dtype=jnp.int32),
        last_bar=jnp.asarray(last, dtype=jnp.int32),
        norm_center=jnp.asarray(norm.center, dtype=jnp.float32),
        norm_scale=jnp.asarray(norm.scale, dtype=jnp.float32),
        window_means=jnp.asarray(means, dtype=jnp.float32),
        vol_scale=jnp.asarray(scale, dtype=jnp.float32),
        return_mean=jnp.asarray(return_stats[0], dtype=jnp.float32),
        return_sq=jnp.asarray(return_stats[1], dtype=jnp.float32),
        episode_len=int(episode_len),
        window=int(window),
        cost_bps=float(cost_bps),
        norm_clip=float(norm.clip),
        interval_minutes=interval,
        periods_per_year=per_year,
        reward=reward,
        action_mode=action_mode,
        delta_step=float(delta_step),
        dsr_eta=float(dsr_eta),
        observe_position=bool(observe_position),
    )


def _check_modes(
    episode_len: int, window: int, reward: str, action_mode: str, position_sizing: str
) -> None:
    """ValueError in one line for a size below 1 or an unknown reward, action mode or sizing."""
    if episode_len < 1 or window < 1:
        raise ValueError("episode_len and window must be >= 1")
    for name, value, allowed in (
        ("reward", reward, REWARDS),
        ("action_mode", action_mode, ACTION_MODES),
        ("position_sizing", position_sizing, POSITION_SIZINGS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} {value!r} is unknown; use one of {', '.join(allowed)}")


def _window_means(normed: np.ndarray, window: int) -> np.ndarray:
    """Each bar's mean of the last ``window`` rows of ``normed`` (0 before a full window)."""
    n = normed.shape[0]
    cums = np.cumsum(np.r_[np.zeros((1, NUM_FEATURES)), normed.astype(np.float64)], axis=0)
    means = np.zeros_like(normed)
    means[window - 1 :] = (cums[window:] - cums[: n - window + 1]) / window
    return means


def _train_return_stats(
    log_returns: np.ndarray,
    split_fractions: Sequence[float],
    window: int,
    bounds: tuple[int, int] | None,
) -> tuple[float, float]:
    """The mean and mean square of the returns the training split's episodes pay:
    ``r[t + 1]`` for ``t`` in ``[start_lo, last_bar)``."""
    t_lo, _, t_last = _episode_range(len(log_returns), "train", split_fractions, window, bounds)
    paid = log_returns[t_lo + 1 : t_last + 1]
    return float(paid.mean()), float(np.mean(paid**2))


def env_modes(cfg: Config) -> dict[str, Any]:
    """The config's reward, action and sizing keywords of ``market.make_env_params``: every
    environment built from a run's config (training, reports, backtests) and every deployed
    policy's positions take them."""
    e = cfg.env
    return {
        "reward": e.reward,
        "dsr_eta": e.dsr_eta,
        "action_mode": e.action_mode,
        "delta_step": e.delta_step,
        "position_sizing": e.position_sizing,
        "vol_span": e.vol_span,
        "target_vol": e.target_vol,
        "max_leverage": e.max_leverage,
        "observe_position": e.observe_position,
    }


def make_multi_env_params(
    bars_list: Sequence[Bars],
    split: str = "train",
    *,
    norms: Sequence[FeatureNorm] | None = None,
    return_stats: Sequence[tuple[float, float]] | None = None,
    **kwargs,
) -> tuple[EnvParams, list[EnvParams]]:
    """Several instruments in one environment (see the module docstring); ``kwargs`` go to
    :func:`make_env_params` for every instrument, ``norms`` and ``return_stats`` per
    instrument (``None``: fitted on each instrument's training split)."""
    k = len(bars_list)
    if k == 0:
        raise ValueError("make_multi_env_params needs at least one instrument")
    norms = [None] * k if norms is None else list(norms)
    stats = [None] * k if return_stats is None else list(return_stats)
    if len(norms) != k or len(stats) != k:
        raise ValueError(f"give one norm and one return_stats per instrument ({k})")
    parts = [
        make_env_params(bars, split, norm=norm, return_stats=st, **kwargs)
        for bars, norm, st in zip(bars_list, norms, stats, strict=True)
    ]
    return combine_instruments(parts), parts


def combine_instruments(parts: Sequence[EnvParams]) -> EnvParams:
    """One multi-instrument environment of single-instrument ``parts`` built alike (same
    window, episode length, costs and modes): bars concatenated, per-instrument fields
    stacked."""
    offsets = np.cumsum([0] + [len(p.log_returns) for p in parts[:-1]]).astype(np.int32)

    def stack(name: str, shift: bool = False) -> jax.Array:
        values = [getattr(p, name) for p in parts]
        return jnp.stack([v + o for v, o in zip(values, offsets, strict=True)] if shift else values)

    def concat(name: str) -> jax.Array:
        return jnp.concatenate([getattr(p, name) for p in parts])

    return parts[0].replace(
        features=concat("features"),
        log_returns=concat("log_returns"),  # each instrument's first return is 0
        window_means=concat("window_means"),
        vol_scale=concat("vol_scale"),
        start_lo=stack("start_lo", shift=True),
        start_hi=stack("start_hi", shift=True),
        last_bar=stack("last_bar", shift=True),
        norm_center=stack("norm_center"),
        norm_scale=stack("norm_scale"),
        return_mean=stack("return_mean"),
        return_sq=stack("return_sq"),
    )


def _of_instrument(value: jax.Array, instrument: jax.Array) -> jax.Array:
    """A per-instrument field's value for ``instrument`` (a scalar field is instrument 0's)."""
    return jnp.reshape(value, (-1,))[instrument]


def observation_at(params: EnvParams, t, position=None) -> dict[str, jax.Array]:
    """The observation dict at bar ``t`` (``t >= window - 1``); under
    ``params.observe_position`` with the held signal ``position`` (flat when None) as one more
    actor channel, constant over the window, and one more critic feature."""
    start = jnp.asarray(t, dtype=jnp.int32) - (params.window - 1)
    win = jax.lax.dynamic_slice(params.features, (start, 0), (params.window, NUM_FEATURES))
    chans = win.T  # (13, window)
    obs = {name: chans[a:b] for name, (a, b) in AGENT_FEATURES.items()}
    # Each agent's window averaged over time, concatenated mlmi, nwrqk, mmd (= the feature
    # order), read from the precomputed rolling means.
    obs["critic"] = params.window_means[t]
    if params.observe_position:
        obs = with_position(obs, 0.0 if position is None else position)
    return obs


def with_position(obs: dict[str, jax.Array], position) -> dict[str, jax.Array]:
    """An observation dict (one step, or batched over a leading axis matching ``position``'s)
    with the held position appended: a last channel of each actor's input, constant over the
    window, and a last feature of the critic's."""
    pos = jnp.asarray(position, jnp.float32)
    out = {}
    for name, value in obs.items():
        if name == "critic":
            out[name] = jnp.concatenate([value, pos[..., None].astype(value.dtype)], axis=-1)
        else:
            row = jnp.broadcast_to(pos[..., None, None], (*value.shape[:-2], 1, value.shape[-1]))
            out[name] = jnp.concatenate([value, row.astype(value.dtype)], axis=-2)
    return out


def observations(params: EnvParams, ts, positions=None) -> dict[str, jax.Array]:
    """``observation_at`` batched over a 1-D array of bar indices (leading axis), with the
    held ``positions`` ``(N,)`` under ``observe_position`` (flat when None)."""
    ts = jnp.asarray(ts, dtype=jnp.int32)
    if not params.observe_position:
        return jax.vmap(observation_at, in_axes=(None, 0))(params, ts)
    held = jnp.zeros(ts.shape, jnp.float32) if positions is None else positions
    return jax.vmap(observation_at, in_axes=(None, 0, 0))(params, ts, jnp.asarray(held))


def bar_of(keys) -> jax.Array:
    """The bars of :meth:`Market.obs_key` values (plain bars, or :class:`HeldBar`)."""
    return keys.t if isinstance(keys, HeldBar) else keys


# --------------------------------------------------------------------------- positions, returns


def combined_vote(actions) -> jax.Array:
    """The three agents' combined vote ``mean(actions - 1)`` over the last axis, in [-1, 1]."""
    return jnp.mean(jnp.asarray(actions).astype(jnp.float32) - 1.0, axis=-1)


def next_signal(signal: jax.Array, actions, params: EnvParams) -> jax.Array:
    """The signal after ``actions``: the vote (``target``) or ``signal`` moved by
    ``delta_step`` times the vote, clipped to [-1, 1] (``delta``)."""
    vote = combined_vote(actions)
    if params.action_mode == "delta":
        return jnp.clip(signal + jnp.float32(params.delta_step) * vote, -1.0, 1.0)
    return vote


def trade_returns(position, previous, params: EnvParams, t) -> tuple[jax.Array, jax.Array]:
    """``(pnl, cost)`` of holding ``position`` from bar ``t`` to ``t + 1`` after ``previous``:
    ``position * r[t+1]`` and ``cost_bps * 1e-4 * |position - previous|`` (float32)."""
    position = jnp.asarray(position, jnp.float32)
    pnl = position * params.log_returns[jnp.asarray(t) + 1]
    cost = jnp.float32(params.cost_bps * 1e-4) * jnp.abs(position - previous)
    return pnl, cost


def positions_from_actions(actions, params: EnvParams, bars, signal=0.0) -> jax.Array:
    """The environment's positions ``(N,)`` for actions ``(N, 3)`` taken at the consecutive
    bars ``bars`` ``(N,)``, starting from the signal ``signal`` (flat, as an episode does)."""

    def one(signal, a):
        signal = next_signal(signal, a, params)
        return signal, signal

    _, signals = jax.lax.scan(one, jnp.asarray(signal, jnp.float32), jnp.asarray(actions))
    return signals * params.vol_scale[jnp.asarray(bars)]


def net_returns(positions, params: EnvParams, bars) -> tuple[jax.Array, jax.Array]:
    """``(pnl, cost)`` ``(N,)`` of ``positions`` held at the consecutive bars ``bars`` from a
    flat start; the net return is ``pnl - cost``."""
    positions = jnp.asarray(positions, jnp.float32)
    previous = jnp.concatenate([jnp.zeros((1,), jnp.float32), positions[:-1]])
    return trade_returns(positions, previous, params, bars)


def differential_sharpe(
    ret: jax.Array, a: jax.Array, b: jax.Array, eta: float, var_floor: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Moody and Saffell's differential Sharpe ratio of return ``ret`` given the EMAs ``a`` of
    the returns and ``b`` of their squares: ``(D, a', b')`` with ``dA = ret - a``, ``dB = ret^2
    - b``, ``D = (b dA - a dB / 2) / max(b - a^2, var_floor)^(3/2)``, ``a' = a + eta dA``,
    ``b' = b + eta dB``."""
    d_a = ret - a
    d_b = ret * ret - b
    var = jnp.maximum(b - a * a, var_floor)
    dsr = (b * d_a - 0.5 * a * d_b) / (var * jnp.sqrt(var))
    return dsr, a + eta * d_a, b + eta * d_b


def _reset_state(key: jax.Array, params: EnvParams) -> EnvState:
    count = params.start_lo.size  # instruments (static)
    instrument = jnp.zeros((), jnp.int32)
    if count > 1:
        key, pick = jax.random.split(key)
        instrument = jax.random.randint(pick, (), 0, count, dtype=jnp.int32)
    lo = _of_instrument(params.start_lo, instrument)
    hi = _of_instrument(params.start_hi, instrument)
    t0 = jax.random.randint(key, (), lo, hi + 1, dtype=jnp.int32)
    return EnvState(
        t=t0,
        start=t0,
        step_count=jnp.zeros((), jnp.int32),
        position=jnp.zeros((), jnp.float32),
        equity=jnp.ones((), jnp.float32),
        signal=jnp.zeros((), jnp.float32),
        dsr_a=jnp.zeros((), jnp.float32),
        dsr_b=_of_instrument(params.return_sq, instrument).astype(jnp.float32),
        instrument=instrument,
    )


def reset(key: jax.Array, params: EnvParams) -> tuple[dict[str, jax.Array], EnvState]:
    """``(obs, state)`` of a fresh episode: an instrument drawn uniformly (several
    instruments), a start bar drawn uniformly in ``[start_lo, start_hi]``, a flat position,
    equity 1, and the differential Sharpe ratio's EMAs at ``A = 0``, ``B = return_sq``."""
    state = _reset_state(key, params)
    return observation_at(params, state.t, state.signal), state


def _reward(
    net: jax.Array, position: jax.Array, state: EnvState, params: EnvParams
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(reward, dsr_a, dsr_b)``: the reward of a step with net return ``net`` (float32) and
    the differential Sharpe ratio's EMAs after it (unchanged unless that is the reward)."""
    dsr_a, dsr_b = state.dsr_a, state.dsr_b
    if params.reward == "excess":
        reward = net - position * _of_instrument(params.return_mean, state.instrument)
    elif params.reward == "differential_sharpe":
        m2 = _of_instrument(params.return_sq, state.instrument)
        floor = jnp.float32(DSR_VAR_FLOOR) * m2 + jnp.float32(1e-30)
        reward, dsr_a, dsr_b = differential_sharpe(net, dsr_a, dsr_b, params.dsr_eta, floor)
    else:
        reward = net
    return reward.astype(jnp.float32), dsr_a, dsr_b


def step(key: jax.Array, state: EnvState, actions, params: EnvParams):
    """``(obs, state, reward, done, info)`` after the agents vote ``actions`` (int32 ``(3,)``:
    0 bearish, 1 neutral, 2 bullish) at bar ``t = state.t``.

    The position is :func:`next_signal` (``target``: the mean vote; ``delta``: the previous
    signal moved by ``delta_step`` x the vote) times ``vol_scale[t]``; it earns
    ``position * r[t+1]`` and pays ``cost_bps * 1e-4 * |position - previous|``. ``reward`` is
    that net return (``pnl``), less ``position * mu`` (``excess``), or its differential Sharpe
    ratio (``differential_sharpe``). ``terminated``: bar ``t + 1`` is the split's last;
    ``truncated``: ``episode_len`` steps without terminating. When ``done``, ``obs`` and
    ``state`` are a fresh episode's, drawn with ``key``; ``info`` holds ``position``,
    ``equity``, ``bar_index``, ``pnl``, ``cost``, ``terminated``, ``truncated``, and
    ``next_obs`` and ``next_critic_obs``, the true next state's observation (before the reset),
    to bootstrap truncated episodes with."""
    signal = next_signal(state.signal, actions, params)
    position = signal * params.vol_scale[state.t]
    next_t = state.t + 1
    pnl, cost = trade_returns(position, state.position, params, state.t)
    net = pnl - cost
    reward, dsr_a, dsr_b = _reward(net, position, state, params)
    step_count = state.step_count + 1
    next_state = EnvState(
        t=next_t,
        start=state.start,
        step_count=step_count,
        position=position,
        equity=(state.equity * jnp.exp(net)).astype(jnp.float32),
        signal=signal,
        dsr_a=dsr_a.astype(jnp.float32),
        dsr_b=dsr_b.astype(jnp.float32),
        instrument=state.instrument,
    )
    terminated = next_t >= _of_instrument(params.last_bar, state.instrument)
    truncated = (step_count >= params.episode_len) & ~terminated
    done = terminated | truncated

    reset_state = _reset_state(key, params)
    state_out = jax.tree_util.tree_map(lambda r, s: jnp.where(done, r, s), reset_state, next_state)
    obs_out = observation_at(params, state_out.t, state_out.signal)
    # Pre-reset observation for bootstrapping; XLA drops whatever the caller does not use.
    next_obs = observation_at(params, next_t, signal)
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


class Market(Environment):
    """The market as an :class:`~marl_jax.env.interface.Environment`: the three agents of
    :mod:`marl_jax.agents` vote on the position; the rollout buffer keeps the bar index."""

    agents = AGENT_NAMES
    num_actions = NUM_ACTIONS

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[dict[str, jax.Array], EnvState]:
        return reset(key, params)

    def step(self, key: jax.Array, state: EnvState, actions: jax.Array, params: EnvParams):
        return step(key, state, actions, params)

    def obs_key(self, state: EnvState, params: EnvParams) -> jax.Array | HeldBar:
        """The bar the agents act at; with the signal held there under
        ``params.observe_position`` (a :class:`HeldBar`)."""
        if params.observe_position:
            return HeldBar(t=state.t, position=state.signal)
        return state.t

    def observe(self, params: EnvParams, keys: jax.Array | HeldBar) -> dict[str, jax.Array]:
        if isinstance(keys, HeldBar):
            return observations(params, keys.t, keys.position)
        return observations(params, keys)

    def aux_targets(self, params: EnvParams, keys: jax.Array | HeldBar) -> jax.Array:
        """The next bar's log return after each bar of ``keys``."""
        return params.log_returns[bar_of(keys) + 1]

    def step_stats(self, info: dict) -> dict[str, jax.Array]:
        return {"position": info["position"], "equity": info["equity"]}

    def rollout_metrics(self, stats: dict[str, jax.Array], done: jax.Array) -> dict[str, jax.Array]:
        """The mean absolute position, and the mean log return of the episodes that ended."""
        n_done = done.sum()
        log_equity = jnp.where(done, jnp.log(stats["equity"]), 0.0).sum()
        return {
            "mean_abs_position": jnp.abs(stats["position"]).mean(),
            "episode_log_return": log_equity / jnp.maximum(n_done, 1),
        }


MARKET = Market()
"""The market environment (it holds no data: each call takes its :class:`EnvParams`)."""
