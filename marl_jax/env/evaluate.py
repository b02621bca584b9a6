"""Run a policy or the baselines over a whole split: metrics and equity curves (no plotting;
:mod:`marl_jax.run.plots` draws them).

Public API
----------
``evaluate_policy(policy_fn, bars_or_params, split="test", *, norm=None, cost_bps=1.0,
split_fractions=(0.7, 0.15, 0.15), periods_per_year=None, batch_size=8192) -> dict``
    ``policy_fn`` maps an observation dict batched over time (leading axis ``N``, the same keys
    and per-step shapes as the environment's) to int actions ``(N, 3)``. It is called on chunks
    of at most ``batch_size`` steps, every chunk padded to ``batch_size`` rows (so a jitted
    policy compiles once). Given ``EnvParams`` the split, normalisation and cost are those of the
    params and ``split``, ``norm``, ``cost_bps`` are ignored; given ``Bars``, params are built
    with :func:`~marl_jax.env.market.make_env_params` (``norm=None`` fits on the train split).
``evaluate_split(policy_fn, bars_or_params, split="test", norm=None, cost_bps=1.0, *,
seed=0, ...) -> (metrics, baseline_metrics, curves)``
    The policy and every baseline; ``curves`` maps ``"policy"`` and each baseline name to its
    equity curve (``N + 1`` values starting at 1).
``run_policy`` / ``run_baseline`` / ``simulate`` return an :class:`EvalRun` (positions,
rewards, pnl, equity, metrics) for finer control.
``BASELINES = ("buy_and_hold", "flat", "random", "momentum")``
    Positions 1; 0; the mean of three uniform random actions minus 1; the sign of the last
    ``MOMENTUM_LOOKBACK`` (20) bars' log return.
``compute_metrics(rewards, positions, pnl, periods_per_year) -> dict``

A split of ``EnvParams`` is evaluated at every bar ``t`` in ``[start_lo, last_bar)``: at each
bar the position is set and the reward is exactly the environment's,
``position_t * r_{t+1} - cost_bps * 1e-4 * |position_t - position_{t-1}|`` with a flat position
before the first bar.

Metrics (keys): ``total_log_return`` (sum of rewards); ``sharpe`` (mean / std of the per-bar
rewards times ``sqrt(periods_per_year)``; 0 when the std is 0); ``max_drawdown`` (largest
fall of the equity ``exp(cumsum(rewards))`` from its running peak, a fraction in [0, 1));
``hit_rate`` (share of bars with a non-zero position whose gross pnl is > 0; 0 with no
exposure); ``turnover`` (mean ``|position_t - position_{t-1}|`` per bar); plus ``n_steps``,
``exposure`` (mean ``|position|``) and ``final_equity``. ``periods_per_year`` defaults to
``252 * 24 * 60 / interval_minutes`` (252 trading days of 24 hours, as for index futures that
trade nearly round the clock): 12096 for 30-minute bars.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .data import Bars
from .features import FeatureNorm
from .market import (
    DEFAULT_FRACTIONS,
    EnvParams,
    make_env_params,
    net_returns,
    observations,
    periods_per_year_for,
    positions_from_actions,
)

__all__ = [
    "BASELINES",
    "MOMENTUM_LOOKBACK",
    "EvalRun",
    "periods_per_year_for",
    "compute_metrics",
    "simulate",
    "run_policy",
    "run_baseline",
    "evaluate_policy",
    "evaluate_baselines",
    "evaluate_split",
]

BASELINES = ("buy_and_hold", "flat", "random", "momentum")
MOMENTUM_LOOKBACK = 20
_batched_observations = jax.jit(observations)


@dataclass(frozen=True)
class EvalRun:
    bar_index: np.ndarray  # (N,) bars the positions were set at
    positions: np.ndarray  # (N,)
    rewards: np.ndarray  # (N,) net of costs
    pnl: np.ndarray  # (N,) gross: position * next return
    equity: np.ndarray  # (N + 1,) starting at 1
    metrics: dict


def compute_metrics(
    rewards: np.ndarray, positions: np.ndarray, pnl: np.ndarray, periods_per_year: float
) -> dict:
    rewards = np.asarray(rewards, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    pnl = np.asarray(pnl, dtype=np.float64)
    n = len(rewards)
    if n == 0:
        raise ValueError("no steps to evaluate")
    std = rewards.std(ddof=1) if n > 1 else 0.0
    sharpe = float(rewards.mean() / std * np.sqrt(periods_per_year)) if std > 1e-15 else 0.0
    log_equity = np.r_[0.0, np.cumsum(rewards)]
    drawdown = 1.0 - np.exp(log_equity - np.maximum.accumulate(log_equity))
    exposed = positions != 0
    hits = (pnl > 0) & exposed
    turnover = np.abs(np.diff(np.r_[0.0, positions]))
    return {
        "total_log_return": float(rewards.sum()),
        "sharpe": sharpe,
        "max_drawdown": float(drawdown.max()),
        "hit_rate": float(hits.sum() / exposed.sum()) if exposed.any() else 0.0,
        "turnover": float(turnover.mean()),
        "n_steps": int(n),
        "exposure": float(np.abs(positions).mean()),
        "final_equity": float(np.exp(log_equity[-1])),
    }


def _eval_bars(params: EnvParams) -> np.ndarray:
    return np.arange(int(params.start_lo), int(params.last_bar))


def simulate(
    positions: np.ndarray, params: EnvParams, periods_per_year: float | None = None
) -> EvalRun:
    """Score positions set at every evaluation bar of ``params`` (see the module docstring)."""
    ts = _eval_bars(params)
    positions = np.asarray(positions, dtype=np.float32).reshape(-1)
    if positions.shape != ts.shape:
        raise ValueError(f"expected {len(ts)} positions, got {positions.shape}")
    pnl, cost = (np.asarray(x) for x in net_returns(positions, params, ts))
    rewards = (pnl - cost).astype(np.float32)
    ppy = periods_per_year or periods_per_year_for(params.interval_minutes)
    equity = np.exp(np.r_[0.0, np.cumsum(rewards, dtype=np.float64)])
    return EvalRun(
        ts, positions, rewards, pnl, equity, compute_metrics(rewards, positions, pnl, ppy)
    )


def _as_params(bars_or_params, split, norm, cost_bps, split_fractions) -> EnvParams:
    if isinstance(bars_or_params, EnvParams):
        return bars_or_params
    if not isinstance(bars_or_params, Bars):
        raise TypeError("expected Bars or EnvParams")
    return make_env_params(
        bars_or_params, split, cost_bps=cost_bps, norm=norm, split_fractions=split_fractions
    )


def run_policy(
    policy_fn: Callable[[dict], np.ndarray],
    params: EnvParams,
    *,
    periods_per_year: float | None = None,
    batch_size: int = 8192,
) -> EvalRun:
    ts = _eval_bars(params)
    chunks = []
    for a in range(0, len(ts), batch_size):
        idx = ts[a : a + batch_size]
        padded = (
            np.r_[idx, np.full(batch_size - len(idx), idx[-1])] if len(ts) > batch_size else idx
        )
        actions = np.asarray(policy_fn(_batched_observations(params, jnp.asarray(padded))))
        if actions.shape != (len(padded), 3):
            raise ValueError(
                f"policy_fn returned actions of shape {actions.shape}, expected ({len(padded)}, 3)"
            )
        chunks.append(actions[: len(idx)])
    actions = np.concatenate(chunks).astype(np.int64)
    if actions.min() < 0 or actions.max() > 2:
        raise ValueError("policy actions must be 0, 1 or 2")
    return simulate(positions_from_actions(actions, params, ts), params, periods_per_year)


def run_baseline(
    name: str, params: EnvParams, *, seed: int = 0, periods_per_year: float | None = None
) -> EvalRun:
    ts = _eval_bars(params)
    if name == "buy_and_hold":
        positions = np.ones(len(ts))
    elif name == "flat":
        positions = np.zeros(len(ts))
    elif name == "random":
        actions = np.random.default_rng(seed).integers(0, 3, size=(len(ts), 3))
        positions = (actions - 1).mean(axis=1)
    elif name == "momentum":
        cum = np.cumsum(np.asarray(params.log_returns, dtype=np.float64))
        lag = np.maximum(ts - MOMENTUM_LOOKBACK, 0)
        positions = np.sign(cum[ts] - cum[lag])
    else:
        raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
    return simulate(positions, params, periods_per_year)


def evaluate_policy(
    policy_fn: Callable[[dict], np.ndarray],
    bars_or_params: Bars | EnvParams,
    split: str = "test",
    *,
    norm: FeatureNorm | None = None,
    cost_bps: float = 1.0,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    periods_per_year: float | None = None,
    batch_size: int = 8192,
) -> dict:
    params = _as_params(bars_or_params, split, norm, cost_bps, split_fractions)
    run = run_policy(policy_fn, params, periods_per_year=periods_per_year, batch_size=batch_size)
    return run.metrics


def evaluate_baselines(
    bars_or_params: Bars | EnvParams,
    split: str = "test",
    *,
    norm: FeatureNorm | None = None,
    cost_bps: float = 1.0,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    periods_per_year: float | None = None,
    seed: int = 0,
) -> dict[str, EvalRun]:
    params = _as_params(bars_or_params, split, norm, cost_bps, split_fractions)
    return {
        name: run_baseline(name, params, seed=seed, periods_per_year=periods_per_year)
        for name in BASELINES
    }


def evaluate_split(
    policy_fn: Callable[[dict], np.ndarray],
    bars_or_params: Bars | EnvParams,
    split: str = "test",
    norm: FeatureNorm | None = None,
    cost_bps: float = 1.0,
    *,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    periods_per_year: float | None = None,
    batch_size: int = 8192,
    seed: int = 0,
) -> tuple[dict, dict[str, dict], dict[str, np.ndarray]]:
    params = _as_params(bars_or_params, split, norm, cost_bps, split_fractions)
    run = run_policy(policy_fn, params, periods_per_year=periods_per_year, batch_size=batch_size)
    baselines = evaluate_baselines(params, periods_per_year=periods_per_year, seed=seed)
    curves = {"policy": run.equity, **{k: v.equity for k, v in baselines.items()}}
    return run.metrics, {k: v.metrics for k, v in baselines.items()}, curves
