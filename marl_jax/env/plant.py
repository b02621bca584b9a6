"""A known edge planted into real bars, and the oracle that trades it (no disk access).

The file's own log returns are the noise; each next return gets a drift
``A * sigma[t] * s[t]`` with ``s[t]`` in [-1, 1] computed causally from the *planted* closes up
to bar ``t``::

    r'[t+1] = r[t+1] + A * sigma[t] * s[t]

- ``sigma[t]``: an EWMA volatility of the planted log returns up to bar ``t``, span
  :data:`SIGMA_SPAN` (100) bars (``alpha = 2 / (SIGMA_SPAN + 1)``, started at ``r'[1]^2``);
- ``z[t] = (log c'[t] - log c'[t - span]) / (sigma[t] * sqrt(span))``: the ``span``-bar move of
  the planted closes against the volatility;
- ``trend``: ``s = tanh(z)`` (a slow edge, nearly linear in the momentum; default span 20, where
  the oracle's ``sign(s)`` is the evaluator's ``momentum`` baseline);
- ``revert``: ``s = -tanh(z)`` (a fast edge that flips often; default span 1, the last bar's
  return reversed, so costs decide what it is worth);
- ``gated``: ``s = sign(z)`` where ``|z| > 1``, else 0 (nonlinear: trend only after a large
  move; default span 20).

Warm-up: ``s = 0`` for ``t < max(span, SIGMA_SPAN)`` and wherever ``sigma`` is 0. Every recipe
is deterministic. The planted close is ``close[t] * exp(D[t])`` with ``D[t]`` the drift added
before bar ``t``; open, high and low are scaled by the same factor (their ratios to the close
are kept), volume and timestamps are unchanged, and strength 0 gives the bars back bit for bit.

The oracle holds ``sign(s[t])`` from bar ``t`` to ``t + 1`` and pays
``cost_bps * 1e-4 * |position change|`` as every baseline does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from marl_jax import metrics

from .data import Bars
from .market import bars_per_year

__all__ = [
    "DEFAULT_SPANS",
    "FORMULAS",
    "SIGMA_SPAN",
    "SIGNALS",
    "Planted",
    "oracle_positions",
    "oracle_summary",
    "plant",
    "warmup_bars",
]

SIGNALS = ("trend", "revert", "gated")
DEFAULT_SPANS = {"trend": 20, "revert": 1, "gated": 20}
SIGMA_SPAN = 100
FORMULAS = {
    "trend": "s = tanh(z)",
    "revert": "s = -tanh(z)",
    "gated": "s = sign(z) if |z| > 1 else 0",
}


@dataclass(frozen=True)
class Planted:
    """The planted bars, the signal ``s[t]`` and the volatility ``sigma[t]`` (both ``(n,)``;
    bar ``t + 1``'s return got ``strength * sigma[t] * s[t]``)."""

    bars: Bars
    signal: np.ndarray
    sigma: np.ndarray


def warmup_bars(span: int) -> int:
    """Bars at the start where ``s = 0``: ``max(span, SIGMA_SPAN)``."""
    return max(int(span), SIGMA_SPAN)


def _shape(signal: str, z: float) -> float:
    """``s`` of ``signal`` at the normalised move ``z``."""
    if signal == "trend":
        return math.tanh(z)
    if signal == "revert":
        return -math.tanh(z)
    return math.copysign(1.0, z) if abs(z) > 1.0 else 0.0


def plant(bars: Bars, signal: str, strength: float, span: int | None = None) -> Planted:
    """Plants ``signal`` (one of :data:`SIGNALS`) at ``strength`` into ``bars`` (see the module
    docstring); ``span`` defaults to :data:`DEFAULT_SPANS`."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; expected one of {', '.join(SIGNALS)}")
    span = DEFAULT_SPANS[signal] if span is None else int(span)
    if span < 1:
        raise ValueError(f"span {span}: must be at least 1 bar")
    if not strength >= 0 or not math.isfinite(strength):
        raise ValueError(f"strength {strength}: must be a finite number >= 0")
    close = bars.close
    n = len(close)
    factor = np.ones(n)  # exp(D[t]): planted close / original close
    new_log = np.empty(n)
    s = np.zeros(n)
    sigma = np.zeros(n)
    alpha = 2.0 / (SIGMA_SPAN + 1)
    warm = warmup_bars(span)
    root = math.sqrt(span)
    drift = var = 0.0
    for t in range(n):
        f = math.exp(drift)
        factor[t] = f
        new_log[t] = math.log(float(close[t]) * f)
        if t >= 1:
            r = new_log[t] - new_log[t - 1]
            var = r * r if t == 1 else (1.0 - alpha) * var + alpha * r * r
        sd = math.sqrt(var)
        sigma[t] = sd
        if t >= warm and sd > 0.0:
            s[t] = _shape(signal, (new_log[t] - new_log[t - span]) / (sd * root))
        drift += strength * sd * s[t]
    planted = Bars(
        timestamp=bars.timestamp,
        open=bars.open * factor,
        high=bars.high * factor,
        low=bars.low * factor,
        close=close * factor,
        volume=bars.volume,
    )
    return Planted(planted, s, sigma)


def oracle_positions(signal: np.ndarray) -> np.ndarray:
    """The oracle's position at each bar: ``sign(s[t])``, held to bar ``t + 1``."""
    return np.sign(np.asarray(signal, dtype=np.float64))


def oracle_summary(
    bars: Bars, signal: np.ndarray, cost_bps: float = 1.0, periods_per_year: float | None = None
) -> dict:
    """:func:`marl_jax.metrics.summary` of the oracle over every bar with a next return
    (against buy-and-hold, net of ``cost_bps``), with ``gross_sharpe`` (its Sharpe at no
    cost) added; annualised at ``periods_per_year`` (None: the bars' own calendar,
    :func:`marl_jax.env.market.bars_per_year`)."""
    if len(bars) < 3:
        raise ValueError(f"{len(bars)} bars: the oracle needs at least 3")
    signal = np.asarray(signal, dtype=np.float64)
    if signal.shape != (len(bars),):
        raise ValueError(f"signal has shape {signal.shape}, expected ({len(bars)},)")
    next_r = np.diff(np.log(bars.close))
    positions = oracle_positions(signal[:-1])
    gross = positions * next_r
    hold = np.ones_like(next_r)
    scores = metrics.summary(
        metrics.net_returns(gross, positions, cost_bps),
        positions,
        metrics.net_returns(next_r, hold, cost_bps),
        bars_per_year(bars) if periods_per_year is None else periods_per_year,
        gross=gross,
        benchmark_gross=next_r,
        cost_bps=cost_bps,
    )
    return {"gross_sharpe": scores["sharpe_0x_cost"], **scores}
