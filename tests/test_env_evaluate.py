"""Acceptance 5 (learnable structure) and the evaluator's metrics, baselines and plot."""

import functools
import os

import jax.numpy as jnp
import numpy as np
import pytest

from marl_jax.env.data import Bars, synthetic_bars
from marl_jax.env.evaluate import (
    BASELINES,
    compute_metrics,
    evaluate_policy,
    evaluate_split,
    periods_per_year_for,
    run_baseline,
    simulate,
)
from marl_jax.env.features import compute_features
from marl_jax.env.market import make_env_params
from marl_jax.run.plots import plot_equity_curves

BARS = synthetic_bars(2500, seed=4)


@pytest.fixture(scope="module")
def params():
    return make_env_params(BARS, "test", cost_bps=3.0)


@functools.cache
def long_bars(seed: int) -> tuple[Bars, np.ndarray]:
    """20,000 synthetic bars and their features, computed once for both costs below."""
    bars = synthetic_bars(20_000, seed=seed)
    return bars, compute_features(bars)


@pytest.mark.parametrize("cost_bps", [0.0, 1.0])
def test_momentum_beats_random_on_synthetic_bars(cost_bps):
    for seed in range(4):
        bars, features = long_bars(seed)
        p = make_env_params(bars, "test", cost_bps=cost_bps, features=features)
        momentum = run_baseline("momentum", p, seed=seed).metrics["sharpe"]
        random = run_baseline("random", p, seed=seed).metrics["sharpe"]
        assert momentum > random + 1.0, (seed, momentum, random)
        assert momentum > 0


def test_metrics_by_hand():
    rewards = np.array([0.1, -0.2, 0.05, 0.0])
    positions = np.array([1.0, 1.0, -0.5, 0.0])
    pnl = np.array([0.1, -0.2, 0.06, 0.0])
    m = compute_metrics(rewards, positions, pnl, periods_per_year=4)
    assert m["total_log_return"] == pytest.approx(-0.05)
    assert m["sharpe"] == pytest.approx(rewards.mean() / rewards.std(ddof=1) * 2)
    assert m["max_drawdown"] == pytest.approx(1 - np.exp(-0.2))
    assert m["hit_rate"] == pytest.approx(2 / 3)
    assert m["turnover"] == pytest.approx((1 + 0 + 1.5 + 0.5) / 4)
    assert periods_per_year_for(30) == 252 * 48


def test_simulate_matches_the_environment_reward(params):
    lo, last = int(params.start_lo), int(params.last_bar)
    pos = np.random.default_rng(0).choice([-1, -1 / 3, 0, 1 / 3, 1], size=last - lo)
    run = simulate(pos, params)
    r = np.asarray(params.log_returns)
    expected = pos * r[lo + 1 : last + 1] - 3e-4 * np.abs(np.diff(np.r_[0, pos]))
    np.testing.assert_allclose(run.rewards, expected, atol=1e-7)
    np.testing.assert_allclose(run.equity[-1], np.exp(expected.sum()), rtol=1e-5)


def test_policy_equal_to_baselines_scores_the_same(params):
    def always_long(obs):
        assert obs["mlmi"].shape[1:] == (4, 48) and obs["critic"].shape[1:] == (13,)
        return jnp.full((obs["mlmi"].shape[0], 3), 2, jnp.int32)

    def flat(obs):
        return np.ones((obs["mmd"].shape[0], 3), np.int64)

    bh = run_baseline("buy_and_hold", params).metrics
    got = evaluate_policy(always_long, params, batch_size=100)  # several padded chunks
    assert got == pytest.approx(bh)
    assert evaluate_policy(flat, params)["total_log_return"] == 0.0
    # From bars: the same split and cost give the same numbers.
    assert evaluate_policy(always_long, BARS, "test", cost_bps=3.0) == pytest.approx(bh)


def test_evaluate_split_and_atomic_plot(tmp_path, params):
    def policy(obs):  # long when the latest normalised momentum_20 is positive
        up = np.asarray(obs["mlmi"][:, 2, -1]) > 0
        return np.repeat(np.where(up, 2, 0)[:, None], 3, axis=1)

    png = tmp_path / "plots" / "equity.png"
    metrics, base, curves = evaluate_split(policy, params)
    plot_equity_curves(curves, png)
    assert set(base) == set(BASELINES)
    for m in (metrics, *base.values()):
        assert {"total_log_return", "sharpe", "max_drawdown", "hit_rate", "turnover"} <= set(m)
    n = int(params.last_bar) - int(params.start_lo)
    assert set(curves) == {"policy", *BASELINES} and all(len(c) == n + 1 for c in curves.values())
    assert base["flat"]["total_log_return"] == 0 and base["buy_and_hold"]["turnover"] == 1 / n
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(png.parent) == ["equity.png"]  # no temp file left behind
    before = png.stat().st_size
    plot_equity_curves({"a": np.linspace(1, 2, 50)}, png)
    assert png.stat().st_size != before
