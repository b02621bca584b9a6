"""Acceptance 5 (learnable structure) and the evaluator's metrics, baselines (the linear one
included) and plot."""

import functools
import os

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from marl_jax import metrics
from marl_jax.env.data import Bars, synthetic_bars
from marl_jax.env.evaluate import (
    BASELINES,
    LinearBaseline,
    evaluate_baselines,
    evaluate_policy,
    evaluate_split,
    periods_per_year_at,
    run_baseline,
    simulate,
)
from marl_jax.env.features import AGENT_FEATURES, NUM_FEATURES, compute_features
from marl_jax.env.market import make_env_params
from marl_jax.run.plots import plot_returns

BARS = synthetic_bars(2500, seed=4)


@pytest.fixture(scope="module")
def params():
    # Annualised at the nominal calendar the params are given (not the bars' own, 365.25 x 48).
    return make_env_params(BARS, "test", cost_bps=3.0, periods_per_year=252 * 48)


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


def test_metrics_are_the_summary_against_buy_and_hold(params):
    lo, last = int(params.start_lo), int(params.last_bar)
    pos = np.random.default_rng(1).choice([-1, 0, 1 / 3, 1], size=last - lo).astype(np.float32)
    run = simulate(pos, params)
    next_r = np.asarray(params.log_returns)[lo + 1 : last + 1]
    hold = metrics.net_returns(next_r, np.ones_like(pos), 3.0)
    expected = metrics.summary(
        run.rewards, pos, hold, 252 * 48, gross=run.pnl, benchmark_gross=next_r, cost_bps=3.0
    )
    assert run.metrics == pytest.approx(expected)
    assert {"alpha_t", "active_ir", "psr", "sharpe_2x_cost"} <= set(run.metrics)
    assert periods_per_year_at(30) == 252 * 48
    # Without one, the bars' own calendar: synthetic bars come every 30 minutes, all year.
    assert make_env_params(BARS, "test").periods_per_year == pytest.approx(365.25 * 48)
    assert simulate(pos, params, 365.25 * 48).metrics["sharpe"] == pytest.approx(
        run.metrics["sharpe"] * np.sqrt(365.25 / 252)
    )
    third = simulate(np.full(last - lo, 1 / 3), params).metrics
    assert third["beta"] == pytest.approx(1 / 3, rel=1e-6) and third["active_ir"] == 0.0


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
    from_bars = evaluate_policy(
        always_long, BARS, "test", cost_bps=3.0, periods_per_year=params.periods_per_year
    )
    assert from_bars == pytest.approx(bh)


def test_evaluate_split_and_atomic_plot(tmp_path, params):
    def policy(obs):  # long when the latest normalised momentum_20 is positive
        up = np.asarray(obs["mlmi"][:, 2, -1]) > 0
        return np.repeat(np.where(up, 2, 0)[:, None], 3, axis=1)

    png = tmp_path / "plots" / "equity.png"
    policy_metrics, base, curves = evaluate_split(policy, params)
    n = int(params.last_bar) - int(params.start_lo)
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=n, freq="30min"),
            "fold": np.repeat([0, 1], [n // 2, n - n // 2]),
            "instrument": "synthetic",
            "position": np.sign(np.sin(np.arange(n) / 7.0)),
            **{k: np.diff(np.log(c)) for k, c in curves.items()},
        }
    )
    plot_returns(frame, png, "test split")
    assert set(base) == set(BASELINES) - {"linear"}  # no fitted linear model given
    for m in (policy_metrics, *base.values()):
        assert {"total_log_return", "sharpe", "max_drawdown", "hit_rate", "turnover"} <= set(m)
    assert set(curves) == {"policy", *base} and all(len(c) == n + 1 for c in curves.values())
    assert base["flat"]["total_log_return"] == 0 and base["buy_and_hold"]["turnover"] == 1 / n
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(png.parent) == ["equity.png"]  # no temp file left behind
    before = png.stat().st_size
    # Two instruments stitched: drawn on the bar count, not on dates that go back.
    plot_returns(pd.concat([frame, frame.assign(instrument="b")]), png, "two instruments")
    assert png.stat().st_size != before


def _planted(bars, split: str, feature: int, seed: int = 0):
    """The bars' params with random features and a next return that is a known linear
    function of one of them: ``r[t+1] = 1e-3 * features[t, feature] + noise``."""
    p = make_env_params(bars, split, cost_bps=1.0)
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(len(bars), NUM_FEATURES)).astype(np.float32)
    r = np.r_[0.0, 1e-3 * feats[:-1, feature] + rng.normal(0, 2e-3, len(bars) - 1)]
    return p.replace(features=jnp.asarray(feats), log_returns=jnp.asarray(r, jnp.float32))


def test_linear_baseline_finds_a_planted_linear_signal():
    bars = synthetic_bars(6000, seed=5)
    train, test = _planted(bars, "train", feature=6), _planted(bars, "test", feature=6)
    model = LinearBaseline.fit(train)
    assert int(np.argmax(np.abs(model.weights))) == 6 and model.weights[6] > 0
    assert model.weights[6] == pytest.approx(1e-3, rel=0.15)
    ts = np.arange(int(test.start_lo), int(test.last_bar))
    pred = model.predict(np.asarray(test.features)[ts])
    nxt = np.asarray(test.log_returns)[ts + 1]
    ic = np.corrcoef(np.argsort(np.argsort(pred)), np.argsort(np.argsort(nxt)))[0, 1]
    assert ic > 0.2  # rank IC out of sample
    base = evaluate_baselines(test, seed=0, linear=model)
    assert set(base) == set(BASELINES)
    lin = base["linear"].metrics
    assert lin["active_ir"] > 3.0 and lin["sharpe"] > base["buy_and_hold"].metrics["sharpe"]
    assert lin["turnover"] > 0.5  # flips about every other bar, and pays for it:
    assert lin["sharpe_0x_cost"] > lin["sharpe_1x_cost"] > lin["sharpe_2x_cost"]
    # Fitted on the train split only: later bars do not move it, its last target does.
    end = int(train.last_bar)
    later = train.replace(
        log_returns=train.log_returns.at[end + 1 :].set(0.05),
        features=train.features.at[end:].set(3.0),
    )
    np.testing.assert_array_equal(LinearBaseline.fit(later).weights, model.weights)
    last = train.replace(log_returns=train.log_returns.at[end].set(0.05))
    assert not np.array_equal(LinearBaseline.fit(last).weights, model.weights)
    with pytest.raises(ValueError, match="LinearBaseline.fit"):
        run_baseline("linear", test)


def test_linear_baseline_on_some_columns_reads_only_those():
    bars = synthetic_bars(3000, seed=6)
    train = _planted(bars, "train", feature=6)
    cols = [4, 5, 6, 7, 8, 9]  # NWRQK's slice holds the planted feature
    model = LinearBaseline.fit(train, columns=cols)
    others = np.setdiff1d(np.arange(NUM_FEATURES), cols)
    assert np.all(model.weights[others] == 0.0)
    assert int(np.argmax(np.abs(model.weights))) == 6
    # The same fit as on a table that holds only those columns.
    only = train.replace(features=train.features.at[:, others].set(0.0))
    np.testing.assert_allclose(
        LinearBaseline.fit(only).weights[cols], model.weights[cols], rtol=0.02
    )
    # Without the planted column it finds nothing like it.
    blind = LinearBaseline.fit(train, columns=[0, 1, 2, 3])
    assert np.abs(blind.weights).max() < 0.2 * model.weights[6]


def test_linear_baseline_pays_what_a_policy_holding_its_positions_pays():
    bars = synthetic_bars(3000, seed=6)
    test = _planted(bars, "test", feature=2)
    model = LinearBaseline.fit(_planted(bars, "train", feature=2))

    def same_as_linear(obs):  # the bar's 13 features are each agent's last window column
        feats = np.zeros((obs["critic"].shape[0], NUM_FEATURES))
        for name, (a, b) in AGENT_FEATURES.items():
            feats[:, a:b] = np.asarray(obs[name])[:, :, -1]
        side = np.sign(model.predict(feats)).astype(np.int64)
        return np.repeat((side + 1)[:, None], 3, axis=1)

    linear = run_baseline("linear", test, linear=model)
    assert evaluate_policy(same_as_linear, test) == pytest.approx(linear.metrics)
    pos = linear.positions
    expected = pos * np.asarray(test.log_returns)[linear.bar_index + 1] - 1e-4 * np.abs(
        np.diff(np.r_[0, pos])
    )
    np.testing.assert_allclose(linear.rewards, expected, atol=1e-7)
