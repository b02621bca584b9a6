"""marl_jax.metrics against hand-computed values, a hand-written Newey-West estimator and the
Deflated Sharpe Ratio paper's own numerical example."""

import math

import numpy as np
import pytest

from marl_jax import metrics as M

# Four bars: net log returns, positions and gross returns.
R = np.array([0.1, -0.2, 0.05, 0.0])
POS = np.array([1.0, 1.0, -0.5, 0.0])
GROSS = np.array([0.1, -0.2, 0.06, 0.0])


def test_return_and_risk_by_hand():
    assert M.sharpe_ratio(R, 4) == pytest.approx(R.mean() / R.std(ddof=1) * 2)
    # Sortino: mean -0.0125 * 4 over the downside deviation sqrt(0.04 / 4) * sqrt(4).
    assert M.sortino_ratio(R, 4) == pytest.approx(-0.05 / 0.2)
    # Equity exp(cumsum): 1, e^.1, e^-.1, e^-.05, e^-.05; worst fall e^.1 -> e^-.1.
    assert M.max_drawdown(R) == pytest.approx(1 - math.exp(-0.2))
    assert M.max_drawdown_duration(R) == 3  # below the peak e^.1 from bar 2 to the end
    assert M.max_drawdown_duration([0.1, -0.1, 0.1, 0.05, -0.01]) == 1
    # Calmar: four bars at four a year is one year; growth e^-.05 - 1 over the drawdown.
    assert M.calmar_ratio(R, 4) == pytest.approx((math.exp(-0.05) - 1) / (1 - math.exp(-0.2)))
    assert M.turnover(POS) == pytest.approx((1 + 0 + 1.5 + 0.5) / 4)
    assert M.holding_period(POS) == pytest.approx((2 + 1) / 2)  # runs [1, 1] and [-0.5]
    assert M.holding_period([0.0, 1 / 3, 1 / 3, 1 / 3, 0.0, -1.0]) == pytest.approx(2.0)
    assert M.holding_period(np.zeros(5)) == 0.0
    assert M.exposure(POS) == {
        "long_share": 0.5,
        "short_share": 0.25,
        "flat_share": 0.25,
        "mean_abs_position": pytest.approx(2.5 / 4),
    }
    assert M.hit_rate(GROSS, POS) == pytest.approx(2 / 3)
    assert M.hit_rate(GROSS, np.zeros(4)) == 0.0


def test_riskless_returns_give_zero_ratios_not_nan():
    flat = np.zeros(50)
    for value in (
        M.sharpe_ratio(flat, 252),
        M.sortino_ratio(flat, 252),
        M.calmar_ratio(flat, 252),
        M.max_drawdown(flat),
    ):
        assert value == 0.0 and math.copysign(1, value) == 1  # not -0.0
    s = M.summary(flat, flat, np.full(50, 1e-3), 252)
    assert all(math.isfinite(v) for v in s.values())
    assert s["beta"] == 0.0 and s["active_ir"] == 0.0 and s["psr"] == 0.5


def test_net_returns_charge_the_position_changes():
    got = M.net_returns(GROSS, POS, cost_bps=10.0)
    np.testing.assert_allclose(got, GROSS - 1e-3 * np.array([1.0, 0.0, 1.5, 0.5]))
    assert M.net_returns(GROSS.astype(np.float32), POS.astype(np.float32), 1.0).dtype == (
        np.float32
    )


def test_hac_lags_follow_the_newey_west_rule():
    assert [M.hac_lags(n) for n in (100, 500, 10_000)] == [4, 5, 11]


def _newey_west_se(x: np.ndarray, y: np.ndarray, lags: int) -> np.ndarray:
    """Newey-West standard errors written out: Bartlett weights, n / (n - k) correction."""
    n = len(y)
    design = np.c_[np.ones(n), x]
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    u = design * (y - design @ coef)[:, None]
    s = u.T @ u
    for lag in range(1, lags + 1):
        g = u[lag:].T @ u[:-lag]
        s += (1 - lag / (lags + 1)) * (g + g.T)
    bread = np.linalg.inv(design.T @ design)
    return np.sqrt(np.diag(bread @ s @ bread * n / (n - 2)))


def test_alpha_beta_and_the_hac_t_statistic():
    rng = np.random.default_rng(0)
    n, ppy = 400, 252
    x = rng.normal(0, 0.01, n)
    noise = np.convolve(rng.normal(0, 0.004, n + 2), [1.0, 0.5, 0.3], "valid")  # MA(2)
    y = 1e-3 + 0.6 * x + noise
    got = M.alpha_beta(y, x, ppy)
    design = np.c_[np.ones(n), x]
    a, b = np.linalg.lstsq(design, y, rcond=None)[0]
    assert got["beta"] == pytest.approx(b) and got["alpha"] == pytest.approx(a * ppy)
    se = _newey_west_se(x, y, M.hac_lags(n))[0]
    assert got["alpha_t"] == pytest.approx(a / se)
    active = y - b * x
    assert got["active_ir"] == pytest.approx(active.mean() / active.std(ddof=1) * np.sqrt(ppy))
    assert got["active_ir"] > 1.0 and got["alpha_t"] > 1.0  # the alpha put in is found
    with pytest.raises(ValueError, match="differ in length"):
        M.alpha_beta(y, x[:-1], ppy)


def test_a_constant_third_long_is_a_scaled_buy_and_hold():
    rng = np.random.default_rng(1)
    r = rng.normal(2e-4, 1e-3, 3000).astype(np.float32)
    third, hold = np.full(3000, 1 / 3, np.float32), np.ones(3000, np.float32)
    net = M.net_returns(third * r, third, 1.0)
    bench = M.net_returns(r, hold, 1.0)
    s = M.summary(net, third, bench, 12096, gross=third * r, benchmark_gross=r, cost_bps=1.0)
    assert s["beta"] == pytest.approx(1 / 3, rel=1e-6)
    assert s["alpha"] == 0.0 and s["alpha_t"] == 0.0 and s["active_ir"] == 0.0
    for m in M.COST_MULTIPLES:
        assert s[f"active_ir_{m}x_cost"] == 0.0
    # ... while the same position plus a little timing skill is not.
    tilt = third + np.float32(0.2) * np.sign(r) * (rng.random(3000) < 0.1)  # 10% foresight
    skilled = M.summary(M.net_returns(tilt * r, tilt, 0.0), tilt, r, 12096)
    assert skilled["active_ir"] > 1.0 and skilled["alpha_t"] > 2.0


def test_probabilistic_sharpe_ratio_by_hand():
    # Normal returns (skew 0, kurtosis 3): Phi(0.1 * sqrt(100) / sqrt(1 + 0.1^2 / 2)).
    assert M.probabilistic_sharpe_ratio(0.1, 101, 0.0, 3.0) == pytest.approx(0.84074, abs=1e-5)
    assert M.probabilistic_sharpe_ratio(0.0, 101, 0.0, 3.0) == pytest.approx(0.5)
    # Negative skew and fat tails widen the Sharpe ratio's error: less confidence.
    assert M.probabilistic_sharpe_ratio(0.1, 101, -2.0, 9.0) < 0.84


def test_deflated_sharpe_ratio_matches_the_papers_example():
    """Bailey and Lopez de Prado (2014), "The Deflated Sharpe Ratio", J. Portfolio Management
    40(5), section "A numerical example": N = 100 trials whose annualised Sharpe ratios have
    variance 1/2, the best with annualised SR 2.5 over T = 1250 daily returns, skewness -3,
    kurtosis 10. The paper finds SR_0 = 0.1132 (daily) and DSR = 0.9004."""
    daily_var = 0.5 / 250
    assert M.expected_max_sharpe(100, daily_var) == pytest.approx(0.1132, abs=5e-5)
    dsr = M.deflated_sharpe_ratio(2.5 / math.sqrt(250), 1250, -3.0, 10.0, 100, daily_var)
    assert dsr == pytest.approx(0.9004, abs=5e-5)
    # One trial: nothing to deflate for.
    assert M.expected_max_sharpe(1, daily_var) == 0.0


def test_summary_deflates_for_the_trials_of_a_selection():
    rng = np.random.default_rng(2)
    r = rng.normal(3e-4, 1e-2, 1000)
    pos = np.ones(1000)
    alone = M.summary(r, pos, r, 252)
    assert alone["dsr"] == alone["psr"] and alone["n_trials"] == 1
    chosen = M.summary(r, pos, r, 252, trial_sharpes=[alone["sharpe"], 0.1, -0.5, 1.0, 0.0])
    assert chosen["n_trials"] == 5 and chosen["dsr"] < chosen["psr"] == alone["psr"]


def test_cost_sensitivity_and_summary_keys():
    rng = np.random.default_rng(3)
    r = rng.normal(0, 1e-3, 2000)
    pos = np.sign(rng.normal(size=2000)) * (rng.random(2000) < 0.6)  # trades most bars
    gross = pos * r
    s = M.summary(
        M.net_returns(gross, pos, 2.0), pos, M.net_returns(r, np.ones(2000), 2.0), 12096,
        gross=gross, benchmark_gross=r, cost_bps=2.0,
    )  # fmt: skip
    assert set(s) == set(M.SUMMARY_KEYS) | {
        f"{k}_{m}x_cost" for k in ("sharpe", "active_ir") for m in M.COST_MULTIPLES
    }
    assert s["sharpe_0x_cost"] == pytest.approx(M.sharpe_ratio(gross, 12096))
    assert s["sharpe_1x_cost"] == pytest.approx(s["sharpe"])
    assert s["sharpe_0x_cost"] > s["sharpe_1x_cost"] > s["sharpe_2x_cost"]
    assert s["active_ir_0x_cost"] > s["active_ir_1x_cost"] > s["active_ir_2x_cost"]
    assert "sharpe_1x_cost" not in M.summary(gross, pos, r, 12096)
    with pytest.raises(ValueError, match="no steps"):
        M.summary([], [], [], 252)
