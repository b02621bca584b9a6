"""Performance metrics a quant expects, as pure NumPy functions over per-bar returns.

Inputs are 1-D arrays over bars: ``returns`` are per-bar *net* log returns (the environment's
reward, ``position_t * r_{t+1} - cost``), ``positions`` the positions held over each bar, and
``periods_per_year`` annualises (bars per year). Ratios built on the mean (Sharpe, Sortino,
alpha, active IR) use the log returns as they are; quantities that compound (drawdown, Calmar's
annual return) use the equity ``exp(cumsum(returns))``, i.e. simple returns ``expm1(returns)``.
Where a denominator is zero (no risk taken, no drawdown, no downside) the ratio is 0, so every
value is a finite float that JSON can hold.

Library choice
--------------
``empyrical-reloaded`` (the maintained fork of Quantopian's empyrical, which works with the
installed NumPy 2 and pandas 3) computes the Sharpe, Sortino and Calmar ratios and the maximum
drawdown: they are its standard, widely used definitions. ``statsmodels`` fits the regression on
the benchmark with Newey-West (HAC) standard errors. empyrical has no drawdown duration, holding
period, exposure split, Probabilistic or Deflated Sharpe Ratio and no HAC t-statistic, so those
are written here and tested against hand-computed values and, for the Deflated Sharpe Ratio,
against the numerical example of Bailey and Lopez de Prado (2014).

Against the benchmark (buy-and-hold's net returns): ``y = alpha + beta * x + e`` by OLS.
``alpha`` is annualised (``periods_per_year`` times the per-bar intercept); its t-statistic uses
Newey-West standard errors (Bartlett kernel) with the Newey and West (1994) rule of thumb
for the lag, ``floor(4 * (n / 100) ** (2 / 9))`` (4 lags for 100 bars, 5 for 500, 11 for
10,000), and statsmodels' small-sample correction ``n / (n - 2)``. The active information
ratio is the mean over the standard deviation of the active return ``y - beta * x`` (alpha
plus the residual), annualised by ``sqrt(periods_per_year)``. A policy that is a scaled
benchmark (a constant position) leaves no residual beyond float32 rounding; then alpha's
t-statistic and the active IR are 0.

``summary(...)`` returns all of them in one dict; :data:`SUMMARY_KEYS` lists its keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import empyrical
import numpy as np
import statsmodels.api as sm
from scipy import stats

__all__ = [
    "COST_MULTIPLES",
    "EULER_GAMMA",
    "SUMMARY_KEYS",
    "net_returns",
    "sharpe_ratio",
    "sortino_ratio",
    "calmar_ratio",
    "max_drawdown",
    "max_drawdown_duration",
    "turnover",
    "holding_period",
    "exposure",
    "hit_rate",
    "hac_lags",
    "alpha_beta",
    "probabilistic_sharpe_ratio",
    "expected_max_sharpe",
    "deflated_sharpe_ratio",
    "cost_sensitivity",
    "summary",
]

EULER_GAMMA = 0.5772156649015329
COST_MULTIPLES = (0, 1, 2)
_TINY = 1e-15
# The residual of a scaled benchmark is float32 rounding, ~1e-7 of the returns' scale.
_SCALED_BENCHMARK_RTOL = 1e-5


def _f64(x) -> np.ndarray:
    """``x`` as a flat float64 array."""
    return np.asarray(x, dtype=np.float64).reshape(-1)


def net_returns(gross, positions, cost_bps: float) -> np.ndarray:
    """``gross - cost_bps * 1e-4 * |position_t - position_{t-1}|``, flat before the first bar.

    The one place the cost of a position change is computed for evaluation (the environment's
    ``step`` charges the same). Keeps float32 inputs in float32, as the environment does.
    """
    gross = np.asarray(gross)
    positions = np.asarray(positions)
    dtype = np.result_type(gross.dtype, positions.dtype, np.float32)
    pos = positions.astype(dtype).reshape(-1)
    change = np.abs(np.diff(np.r_[np.zeros(1, dtype), pos]))
    return (gross.astype(dtype).reshape(-1) - dtype.type(cost_bps * 1e-4) * change).astype(dtype)


def sharpe_ratio(returns, periods_per_year: float) -> float:
    """Mean over standard deviation (ddof 1) times ``sqrt(periods_per_year)``; 0 with no risk."""
    r = _f64(returns)
    if len(r) < 2 or r.std(ddof=1) <= _TINY:
        return 0.0
    return float(empyrical.sharpe_ratio(r, annualization=periods_per_year))


def sortino_ratio(returns, periods_per_year: float) -> float:
    """Annualised mean over annualised downside deviation ``sqrt(mean(min(r, 0)^2))``."""
    r = _f64(returns)
    if len(r) < 2 or np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)) <= _TINY:
        return 0.0
    return float(empyrical.sortino_ratio(r, annualization=periods_per_year))


def max_drawdown(returns) -> float:
    """Largest fall of the equity ``exp(cumsum(returns))`` from its running peak (a fraction
    in [0, 1); the starting equity 1 counts as a peak)."""
    r = _f64(returns)
    return max(0.0, float(-empyrical.max_drawdown(np.expm1(r)))) if len(r) else 0.0


def calmar_ratio(returns, periods_per_year: float) -> float:
    """Compound annual growth rate over the maximum drawdown; 0 without a drawdown."""
    r = _f64(returns)
    if max_drawdown(r) <= _TINY:
        return 0.0
    return float(empyrical.calmar_ratio(np.expm1(r), annualization=periods_per_year))


def _longest_run(flags: np.ndarray) -> int:
    """Length of the longest run of consecutive true ``flags``."""
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def max_drawdown_duration(returns) -> int:
    """The longest stretch, in bars, that the equity spends below its previous peak (a
    drawdown not recovered by the last bar counts up to the last bar)."""
    log_equity = np.r_[0.0, np.cumsum(_f64(returns))]
    under = log_equity < np.maximum.accumulate(log_equity) - 1e-12
    return _longest_run(under[1:])


def turnover(positions) -> float:
    """Mean ``|position_t - position_{t-1}|`` per bar, flat before the first bar."""
    p = _f64(positions)
    return float(np.abs(np.diff(np.r_[0.0, p])).mean()) if len(p) else 0.0


def holding_period(positions) -> float:
    """Mean length, in bars, of the stretches of one unchanged non-zero position (0 if never
    exposed; a stretch cut by the last bar counts as it is)."""
    p = _f64(positions)
    if not len(p):
        return 0.0
    starts = np.r_[0, np.flatnonzero(np.diff(p) != 0) + 1]
    lengths = np.diff(np.r_[starts, len(p)])
    held = lengths[p[starts] != 0]
    return float(held.mean()) if len(held) else 0.0


def exposure(positions) -> dict[str, float]:
    """Shares of bars long, short and flat, and the mean absolute position."""
    p = _f64(positions)
    n = max(len(p), 1)
    return {
        "long_share": float((p > 0).sum() / n),
        "short_share": float((p < 0).sum() / n),
        "flat_share": float((p == 0).sum() / n),
        "mean_abs_position": float(np.abs(p).mean()) if len(p) else 0.0,
    }


def hit_rate(returns, positions) -> float:
    """Share of the bars with a non-zero position whose return is > 0 (0 with no exposure)."""
    r, p = _f64(returns), _f64(positions)
    exposed = p != 0
    return float(((r > 0) & exposed).sum() / exposed.sum()) if exposed.any() else 0.0


def hac_lags(n: int) -> int:
    """Newey and West (1994) rule of thumb for the HAC lag: ``floor(4 * (n / 100) ** (2/9))``."""
    return int(math.floor(4.0 * (max(n, 1) / 100.0) ** (2.0 / 9.0)))


def alpha_beta(returns, benchmark, periods_per_year: float) -> dict[str, float]:
    """OLS of ``returns`` on ``benchmark``: annualised ``alpha``, ``beta``, alpha's Newey-West
    ``alpha_t`` and the annualised ``active_ir`` (see the module docstring)."""
    y, x = _f64(returns), _f64(benchmark)
    if y.shape != x.shape:
        raise ValueError(f"returns {y.shape} and benchmark {x.shape} differ in length")
    n = len(y)
    if n < 3:
        return {"alpha": 0.0, "beta": 0.0, "alpha_t": 0.0, "active_ir": 0.0}
    design = np.c_[np.ones(n), x] if x.std() > _TINY else np.ones((n, 1))
    fit = sm.OLS(y, design).fit(
        cov_type="HAC", cov_kwds={"maxlags": hac_lags(n), "use_correction": True}
    )
    alpha = float(fit.params[0])
    beta = float(fit.params[1]) if design.shape[1] == 2 else 0.0
    active = y - beta * x
    scale = max(y.std(), x.std() * abs(beta), _TINY)
    if active.std(ddof=1) <= _SCALED_BENCHMARK_RTOL * scale:  # a scaled benchmark
        return {"alpha": 0.0, "beta": beta, "alpha_t": 0.0, "active_ir": 0.0}
    se = float(fit.bse[0])
    return {
        "alpha": alpha * periods_per_year,
        "beta": beta,
        "alpha_t": alpha / se if se > _TINY else 0.0,
        "active_ir": float(active.mean() / active.std(ddof=1) * np.sqrt(periods_per_year)),
    }


def probabilistic_sharpe_ratio(
    sharpe: float, n_obs: int, skew: float, kurtosis: float, benchmark: float = 0.0
) -> float:
    """Bailey and Lopez de Prado (2012): the probability that the true Sharpe ratio exceeds
    ``benchmark``, ``Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - skew SR + (kurtosis - 1) / 4 SR^2))``.

    ``sharpe`` and ``benchmark`` are per bar (not annualised); ``kurtosis`` is the plain (not
    excess) kurtosis, 3 for normal returns.
    """
    if n_obs < 2:
        return 0.5
    var = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    z = (sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(max(var, _TINY))
    return float(stats.norm.cdf(z))


def expected_max_sharpe(n_trials: int, sharpe_var: float) -> float:
    """The expected maximum of ``n_trials`` Sharpe ratios of no skill with variance
    ``sharpe_var`` (Bailey and Lopez de Prado 2014, eq. 2); 0 for a single trial."""
    if n_trials < 2 or sharpe_var <= 0:
        return 0.0
    z = stats.norm.ppf
    return float(
        math.sqrt(sharpe_var)
        * ((1 - EULER_GAMMA) * z(1 - 1 / n_trials) + EULER_GAMMA * z(1 - 1 / (n_trials * math.e)))
    )


def deflated_sharpe_ratio(
    sharpe: float, n_obs: int, skew: float, kurtosis: float, n_trials: int, sharpe_var: float
) -> float:
    """Bailey and Lopez de Prado (2014): the PSR against :func:`expected_max_sharpe` of the
    ``n_trials`` tried (per-bar Sharpe ratios; ``sharpe_var`` their variance across trials)."""
    sr0 = expected_max_sharpe(n_trials, sharpe_var)
    return probabilistic_sharpe_ratio(sharpe, n_obs, skew, kurtosis, benchmark=sr0)


def cost_sensitivity(
    gross,
    positions,
    benchmark_gross,
    benchmark_positions,
    cost_bps: float,
    periods_per_year: float,
    multiples: Sequence[float] = COST_MULTIPLES,
) -> dict[str, float]:
    """Net Sharpe and active IR at each multiple of ``cost_bps``: keys ``sharpe_{m}x_cost`` and
    ``active_ir_{m}x_cost``. The benchmark pays the same multiple of the cost."""
    out = {}
    for m in multiples:
        net = net_returns(gross, positions, m * cost_bps)
        bench = net_returns(benchmark_gross, benchmark_positions, m * cost_bps)
        label = f"{m:g}x_cost"
        out[f"sharpe_{label}"] = sharpe_ratio(net, periods_per_year)
        out[f"active_ir_{label}"] = alpha_beta(net, bench, periods_per_year)["active_ir"]
    return out


SUMMARY_KEYS = (
    "sharpe",
    "sortino",
    "calmar",
    "total_log_return",
    "final_equity",
    "max_drawdown",
    "max_drawdown_duration",
    "turnover",
    "holding_period",
    "long_share",
    "short_share",
    "flat_share",
    "mean_abs_position",
    "hit_rate",
    "alpha",
    "beta",
    "alpha_t",
    "active_ir",
    "psr",
    "dsr",
    "n_trials",
    "n_steps",
)


def _strategy_arrays(returns, positions) -> tuple[np.ndarray, np.ndarray]:
    """``returns`` and ``positions`` as float64; ValueError unless non-empty and equally long."""
    r, p = _f64(returns), _f64(positions)
    if len(r) == 0:
        raise ValueError("no steps to evaluate")
    if p.shape != r.shape:
        raise ValueError(f"returns {r.shape} and positions {p.shape} differ in length")
    return r, p


def _skew_kurtosis(r: np.ndarray) -> tuple[float, float]:
    """Skewness and (non-excess) kurtosis of ``r``; a normal's 0 and 3 when ``r`` is constant."""
    skew = float(stats.skew(r)) if r.std() > _TINY else 0.0
    kurt = float(stats.kurtosis(r, fisher=False)) if r.std() > _TINY else 3.0
    return skew, kurt


def _per_bar_sharpe_variance(trials: Sequence[float], periods_per_year: float) -> float:
    """Sample variance of the trials' Sharpe ratios de-annualised to per bar (0 for < 2)."""
    if len(trials) > 1:
        return float(np.var(np.asarray(trials) / np.sqrt(periods_per_year), ddof=1))
    return 0.0


def summary(
    returns,
    positions,
    benchmark,
    periods_per_year: float,
    *,
    gross=None,
    benchmark_gross=None,
    benchmark_positions=None,
    cost_bps: float | None = None,
    trial_sharpes: Sequence[float] | None = None,
) -> dict:
    """Every metric of this module for one strategy (keys :data:`SUMMARY_KEYS`).

    ``benchmark``: the benchmark's net returns over the same bars (buy-and-hold). ``hit_rate``
    is on ``gross`` returns when given (was the direction right), else on ``returns``.
    ``psr`` is against a Sharpe ratio of 0. ``trial_sharpes``: the annualised Sharpe ratios of
    every trial a selection chose among (this one included); ``dsr`` deflates for them, and
    equals ``psr`` without them (one trial). With ``gross``, ``benchmark_gross`` and
    ``cost_bps``, the :func:`cost_sensitivity` keys are added (``benchmark_positions``
    defaults to all ones, buy-and-hold).
    """
    r, p = _strategy_arrays(returns, positions)
    n = len(r)
    sr_bar = sharpe_ratio(r, 1.0)
    skew, kurt = _skew_kurtosis(r)
    trials = [] if trial_sharpes is None else [float(s) for s in trial_sharpes]
    trial_var = _per_bar_sharpe_variance(trials, periods_per_year)
    out = {
        "sharpe": sharpe_ratio(r, periods_per_year),
        "sortino": sortino_ratio(r, periods_per_year),
        "calmar": calmar_ratio(r, periods_per_year),
        "total_log_return": float(r.sum()),
        "final_equity": float(np.exp(r.sum())),
        "max_drawdown": max_drawdown(r),
        "max_drawdown_duration": max_drawdown_duration(r),
        "turnover": turnover(p),
        "holding_period": holding_period(p),
        **exposure(p),
        "hit_rate": hit_rate(r if gross is None else gross, p),
        **alpha_beta(r, benchmark, periods_per_year),
        "psr": probabilistic_sharpe_ratio(sr_bar, n, skew, kurt),
        "dsr": deflated_sharpe_ratio(sr_bar, n, skew, kurt, max(len(trials), 1), trial_var),
        "n_trials": max(len(trials), 1),
        "n_steps": n,
    }
    if gross is not None and benchmark_gross is not None and cost_bps is not None:
        bench_pos = np.ones(n) if benchmark_positions is None else benchmark_positions
        out.update(
            cost_sensitivity(gross, p, benchmark_gross, bench_pos, cost_bps, periods_per_year)
        )
    return out
