"""Acceptance 3 (reward arithmetic) and 4 (jit/vmap), plus observations and episode logic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from xla_levels import FULL_OPTIMISATION

from marl_jax.env.data import Bars, synthetic_bars
from marl_jax.env.features import WARMUP_BARS, FeatureNorm, compute_features
from marl_jax.env.market import (
    EnvParams,
    EnvState,
    fit_normalisation,
    get_normalisation,
    get_return_stats,
    make_env_params,
    make_multi_env_params,
    net_returns,
    observation_at,
    observations,
    periods_per_year_at,
    positions_from_actions,
    reset,
    step,
)

BARS = synthetic_bars(1500, seed=2)
FRACTIONS = (0.7, 0.15, 0.15)


@pytest.fixture(scope="module")
def params() -> EnvParams:
    return make_env_params(BARS, "train", episode_len=16, cost_bps=2.0)


def _state(t, position=0.0, step_count=0, equity=1.0, dsr_b=0.0) -> EnvState:
    return EnvState(
        t=jnp.int32(t),
        start=jnp.int32(t),
        step_count=jnp.int32(step_count),
        position=jnp.float32(position),
        equity=jnp.float32(equity),
        signal=jnp.float32(position),
        dsr_a=jnp.float32(0.0),
        dsr_b=jnp.float32(dsr_b),
        instrument=jnp.int32(0),
    )


def _bars_from_close(close: np.ndarray) -> Bars:
    """30-minute bars that open at the previous close, with a narrow high-low range."""
    open_ = np.r_[close[0], close[:-1]]
    n = len(close)
    return Bars(
        timestamp=(np.arange(n) * 30).astype("datetime64[m]"),
        open=open_,
        high=np.maximum(open_, close) * 1.001,
        low=np.minimum(open_, close) * 0.999,
        close=close,
        volume=np.full(n, 10.0),
    )


def test_reward_position_cost_and_equity_by_hand():
    n = 260
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    t0 = 220
    close[t0 : t0 + 5] = [100.0, 110.0, 99.0, 99.0, 104.0]
    bars = _bars_from_close(close)
    p = make_env_params(bars, "train", cost_bps=10.0, split_fractions=(1.0, 0.0, 0.0))
    state = _state(t0)
    key = jax.random.PRNGKey(0)
    plan = [
        # actions, position, reward worked out by hand (cost 10 bps = 0.001 per unit traded)
        ([2, 2, 2], 1.0, np.log(110 / 100) - 0.001 * 1.0),
        ([0, 1, 2], 0.0, 0.0 * np.log(99 / 110) - 0.001 * 1.0),
        ([0, 0, 1], -2 / 3, -2 / 3 * np.log(99 / 99) - 0.001 * 2 / 3),
        ([0, 0, 0], -1.0, -1.0 * np.log(104 / 99) - 0.001 * 1 / 3),
    ]
    total = 0.0
    for i, (actions, position, expected) in enumerate(plan):
        _, state, reward, done, info = step(key, state, jnp.array(actions, jnp.int32), p)
        total += expected
        assert reward.dtype == jnp.float32 and reward.shape == ()
        np.testing.assert_allclose(float(info["position"]), position, atol=1e-7)
        np.testing.assert_allclose(float(reward), expected, atol=2e-6)
        np.testing.assert_allclose(
            float(info["cost"]),
            0.001 * abs(position - plan[i - 1][1] if i else position),
            atol=1e-8,
        )
        np.testing.assert_allclose(float(info["equity"]), np.exp(total), rtol=1e-5)
        assert int(info["bar_index"]) == t0 + i and int(state.t) == t0 + i + 1
        assert not bool(done)


def test_observation_windows_channels_first(params):
    t = 600
    obs = observation_at(params, t)
    feats = np.asarray(params.features)
    win = feats[t - 47 : t + 1].T
    np.testing.assert_array_equal(obs["mlmi"], win[0:4])
    np.testing.assert_array_equal(obs["nwrqk"], win[4:10])
    np.testing.assert_array_equal(obs["mmd"], win[10:13])
    np.testing.assert_allclose(obs["critic"], win.mean(axis=1), rtol=1e-6, atol=1e-7)
    for name, shape in {"mlmi": (4, 48), "nwrqk": (6, 48), "mmd": (3, 48), "critic": (13,)}.items():
        assert obs[name].shape == shape and obs[name].dtype == jnp.float32


def test_params_split_ranges_and_normalisation():
    train = make_env_params(BARS, "train", window=48)
    test = make_env_params(BARS, "test", norm=get_normalisation(train))
    assert int(train.start_lo) == WARMUP_BARS + 47
    assert int(train.last_bar) == 1049 and int(train.start_hi) == 1048
    assert (int(test.start_lo), int(test.last_bar)) == (1275, 1499)
    norm = fit_normalisation(BARS, FRACTIONS)
    raw = compute_features(BARS)
    np.testing.assert_allclose(np.asarray(train.features), norm.apply(raw), atol=1e-6)
    np.testing.assert_allclose(np.asarray(test.features), norm.apply(raw), atol=1e-6)
    restored = FeatureNorm.from_dict(get_normalisation(test).to_dict())
    np.testing.assert_allclose(restored.center, norm.center, rtol=1e-6)
    # A norm given explicitly is applied as is, not refitted.
    other = FeatureNorm(center=np.ones(13), scale=np.full(13, 2.0))
    p = make_env_params(BARS, "val", norm=other, features=raw)
    np.testing.assert_allclose(np.asarray(p.features), other.apply(raw), atol=1e-6)
    with pytest.raises(ValueError, match="use more bars"):
        make_env_params(BARS[:200], "train")


def test_reset_draws_valid_starts(params):
    keys = jax.random.split(jax.random.PRNGKey(1), 512)
    _, states = jax.jit(jax.vmap(reset, in_axes=(0, None)))(keys, params)
    t = np.asarray(states.t)
    assert t.min() >= int(params.start_lo) and t.max() <= int(params.start_hi)
    assert len(np.unique(t)) > 300
    assert np.all(np.asarray(states.position) == 0) and np.all(np.asarray(states.equity) == 1)


def test_truncation_termination_and_auto_reset(params):
    key = jax.random.PRNGKey(3)
    hold = jnp.array([2, 1, 2], jnp.int32)
    # Truncation: the 16th step of an episode that is far from the end of the split.
    s = _state(500, step_count=15, position=0.5)
    obs, s2, _, done, info = step(key, s, hold, params)
    assert bool(done) and bool(info["truncated"]) and not bool(info["terminated"])
    true_next = observation_at(params, 501)
    np.testing.assert_array_equal(info["next_critic_obs"], true_next["critic"])
    np.testing.assert_array_equal(info["next_obs"]["mmd"], true_next["mmd"])
    fresh_obs, fresh = reset(key, params)
    assert int(s2.t) == int(fresh.t) and int(s2.step_count) == 0 and float(s2.position) == 0
    np.testing.assert_array_equal(obs["nwrqk"], fresh_obs["nwrqk"])
    # Termination: the next bar is the last bar of the split, even mid-episode.
    last = int(params.last_bar)
    _, s3, _, done, info = step(key, _state(last - 1, step_count=15), hold, params)
    assert bool(done) and bool(info["terminated"]) and not bool(info["truncated"])
    np.testing.assert_array_equal(info["next_critic_obs"], observation_at(params, last)["critic"])
    # Neither: the episode carries on.
    _, s4, _, done, info = step(key, _state(500, step_count=3), hold, params)
    assert not bool(done) and int(s4.t) == 501 and int(s4.step_count) == 4
    assert float(s4.position) == pytest.approx(2 / 3)


@pytest.mark.slow
def test_jit_vmap_1024_envs_match_a_python_loop(params):
    n_env, n_steps = 1024, 40
    key = jax.random.PRNGKey(7)
    k_reset, k_act, k_step = jax.random.split(key, 3)
    reset_keys = jax.random.split(k_reset, n_env)
    actions = jax.random.randint(k_act, (n_steps, n_env, 3), 0, 3, dtype=jnp.int32)
    step_keys = jax.random.split(k_step, n_steps * n_env).reshape(n_steps, n_env, -1)

    vreset = jax.jit(jax.vmap(reset, in_axes=(0, None)))
    vstep = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, None)))
    obs, state = vreset(reset_keys, params)
    rewards, dones, truncs, positions = [], [], [], []
    for i in range(n_steps):
        obs, state, reward, done, info = vstep(step_keys[i], state, actions[i], params)
        rewards.append(reward)
        dones.append(done)
        truncs.append(info["truncated"])
        positions.append(info["position"])
    assert obs["mlmi"].shape == (n_env, 4, 48) and obs["critic"].shape == (n_env, 13)
    assert obs["nwrqk"].dtype == jnp.float32 and state.t.dtype == jnp.int32
    assert reward.shape == (n_env,) and reward.dtype == jnp.float32 and done.dtype == jnp.bool_
    assert info["next_critic_obs"].shape == (n_env, 13)
    assert np.asarray(truncs).any()  # episodes of 16 steps were auto-reset during the run

    rewards, dones, positions = np.asarray(rewards), np.asarray(dones), np.asarray(positions)
    final_t, final_count = np.asarray(state.t), np.asarray(state.step_count)
    final_equity, final_mmd = np.asarray(state.equity), np.asarray(obs["mmd"])
    step_keys, actions = np.asarray(step_keys), np.asarray(actions)
    # One env at a time, unbatched (the step jitted on its own, a different program).
    one_step = jax.jit(step)
    for env in (0, 321, 1023):
        o, s = reset(reset_keys[env], params)
        for i in range(n_steps):
            o, s, r, d, inf = one_step(step_keys[i, env], s, actions[i, env], params)
            np.testing.assert_allclose(float(r), rewards[i, env], rtol=1e-6, atol=1e-9)
            assert bool(d) == dones[i, env]
            assert float(inf["position"]) == positions[i, env]
        np.testing.assert_array_equal(o["mmd"], final_mmd[env])
        assert int(s.t) == final_t[env] and int(s.step_count) == final_count[env]
        np.testing.assert_allclose(float(s.equity), final_equity[env], rtol=1e-6)


# ----------------------------------------------------------------- rewards, actions, sizing


def _bars_from_returns(log_returns: np.ndarray) -> Bars:
    return _bars_from_close(100 * np.exp(np.cumsum(log_returns)))


# A drifting market: a constant long position earns the drift under the plain reward.
DRIFTING = _bars_from_returns(np.random.default_rng(5).normal(4e-4, 2e-3, 1500))


def _episode(params: EnvParams, actions: np.ndarray, t0: int):
    """Steps one environment from a fresh state at bar ``t0`` through ``actions`` (N, 3)."""
    start = reset(jax.random.PRNGKey(0), params)[1].replace(t=jnp.int32(t0), start=jnp.int32(t0))

    def one(state, a):
        _, state, reward, done, info = step(jax.random.PRNGKey(1), state, a, params)
        return state, (reward, done, info["position"], info["pnl"], info["cost"], info["equity"])

    # XLA's default level, as the helpers' replay below: it compares two programs bit for bit.
    scan = jax.jit(lambda s, a: jax.lax.scan(one, s, a), compiler_options=FULL_OPTIMISATION)
    _, out = scan(start, jnp.asarray(actions, jnp.int32))
    return [np.asarray(x) for x in out]


def _whole_split(params: EnvParams, actions: np.ndarray):
    """The rewards etc. of ``actions`` at every bar of the split, in one episode."""
    lo = int(params.start_lo)
    reward, done, *rest = _episode(params, actions, lo)
    assert not done[:-1].any() and done[-1]  # the last step reaches the split's last bar
    return (reward, *rest)


def test_excess_reward_pays_nothing_for_a_constant_position():
    kw = dict(episode_len=5000, cost_bps=1.0)
    pnl_p = make_env_params(DRIFTING, "train", **kw)
    excess = make_env_params(DRIFTING, "train", reward="excess", **kw)
    n = int(excess.last_bar) - int(excess.start_lo)
    long = np.full((n, 3), 2)
    plain = _whole_split(pnl_p, long)[0]
    got = _whole_split(excess, long)[0]
    assert plain.sum() > 0.2  # the drift pays the plain reward (n * 4e-4)
    assert abs(got.sum() + 1e-4) < 1e-5  # the excess reward: only the first trade's cost
    # mu is the mean of the returns the training split pays, and the other splits keep it.
    r = np.asarray(excess.log_returns, np.float64)
    mu = r[int(excess.start_lo) + 1 : int(excess.last_bar) + 1].mean()
    np.testing.assert_allclose(float(excess.return_mean), mu, rtol=1e-5)
    test = make_env_params(DRIFTING, "test", reward="excess", norm=get_normalisation(excess))
    assert get_return_stats(test) == get_return_stats(excess)
    assert abs(r[int(test.start_lo) + 1 : int(test.last_bar) + 1].mean() - mu) > 1e-6
    given = make_env_params(DRIFTING, "test", reward="excess", return_stats=(1e-3, 2e-5))
    assert get_return_stats(given) == pytest.approx((1e-3, 2e-5))
    # Short a bit at one bar: reward = position * (r[t+1] - mu) - cost.
    p = make_env_params(DRIFTING, "train", reward="excess", cost_bps=10.0)
    _, _, reward, _, info = step(jax.random.PRNGKey(0), _state(500), jnp.array([0, 1, 1]), p)
    expected = -1 / 3 * (r[501] - float(p.return_mean)) - 1e-3 / 3
    np.testing.assert_allclose(float(reward), expected, rtol=1e-5, atol=1e-9)
    assert float(info["pnl"]) == pytest.approx(-1 / 3 * r[501], rel=1e-5)


def _dsr_reference(net: np.ndarray, eta: float, b0: float) -> np.ndarray:
    """Moody and Saffell (2001): D_t = (B dA - A dB / 2) / (B - A^2)^1.5, EMAs updated after."""
    a, b, out = 0.0, b0, []
    for r in net.astype(np.float64):
        da, db = r - a, r * r - b
        var = max(b - a * a, 1e-2 * b0)
        out.append((b * da - 0.5 * a * db) / var**1.5)
        a, b = a + eta * da, b + eta * db
    return np.array(out)


@pytest.mark.parametrize("eta", [0.01, 0.2])
def test_differential_sharpe_matches_a_numpy_reference(eta):
    p = make_env_params(DRIFTING, "train", reward="differential_sharpe", dsr_eta=eta)
    actions = np.random.default_rng(3).integers(0, 3, size=(p.episode_len, 3))
    reward, done, _, pnl, cost, equity = _episode(p, actions, 400)
    assert done[-1] and not done[:-1].any()
    net = pnl.astype(np.float64) - cost
    m2 = float(p.return_sq)
    r = np.asarray(p.log_returns, np.float64)
    np.testing.assert_allclose(m2, np.mean(r[int(p.start_lo) + 1 : int(p.last_bar) + 1] ** 2))
    np.testing.assert_allclose(reward, _dsr_reference(net, eta, m2), rtol=2e-3, atol=1e-3)
    assert np.abs(reward).max() > 0.1  # of the order of a return over its volatility
    # The equity follows the net return whatever the reward.
    np.testing.assert_allclose(equity[-1], np.exp(net.sum()), rtol=1e-5)


def test_delta_actions_step_hold_and_clip():
    p = make_env_params(DRIFTING, "train", action_mode="delta", delta_step=0.5, cost_bps=10.0)
    plan = [  # actions, position: the mean vote times the step, added and clipped to [-1, 1]
        ([2, 2, 2], 0.5),
        ([1, 1, 1], 0.5),  # all neutral: the position is held, at no cost
        ([2, 1, 1], 0.5 + 0.5 / 3),
        ([2, 2, 2], 1.0),
        ([2, 2, 2], 1.0),
        ([0, 0, 1], 2 / 3),
        ([0, 0, 0], 1 / 6),
        ([0, 0, 0], -1 / 3),
        ([0, 0, 0], -5 / 6),
        ([0, 0, 0], -1.0),
    ]
    actions = np.array([a for a, _ in plan])
    _, _, positions, _, cost, _ = _episode(p, actions, 300)
    expected = np.array([x for _, x in plan])
    np.testing.assert_allclose(positions, expected, atol=1e-6)
    np.testing.assert_allclose(cost, 1e-3 * np.abs(np.diff(np.r_[0, expected])), atol=1e-8)
    assert cost[1] == 0 and cost[4] == 0
    # The target mode maps the same actions to the mean vote instead.
    target = make_env_params(DRIFTING, "train", cost_bps=10.0)
    np.testing.assert_allclose(_episode(target, actions, 300)[2], (actions - 1).mean(1))


def _ewma_reference(r: np.ndarray, span: int) -> np.ndarray:
    import pandas as pd

    var = pd.Series(r[1:] ** 2).ewm(span=span, adjust=True).mean().to_numpy()
    return np.r_[np.nan, var]


def test_vol_target_scales_down_in_high_vol_and_respects_the_cap():
    rng = np.random.default_rng(8)
    calm = rng.normal(0, 1e-4, 800)
    wild = rng.normal(0, 5e-3, 700)
    bars = _bars_from_returns(np.r_[calm, wild])
    kw = dict(split="train", position_sizing="vol_target", vol_span=30, target_vol=0.1)
    kw["max_leverage"] = 3.0
    p = make_env_params(bars, **kw)
    scale = np.asarray(p.vol_scale)
    r = np.asarray(p.log_returns, np.float64)
    # Annualised at the bars' own calendar (30-minute bars round the clock).
    assert p.periods_per_year == pytest.approx(365.25 * 48)
    sigma = np.sqrt(_ewma_reference(r, 30) * 365.25 * 48)
    expected = np.minimum(0.1 / sigma[1:], 3.0)
    np.testing.assert_allclose(scale[1:], expected, rtol=1e-5)
    assert scale.max() <= 3.0 + 1e-6 and scale[400:800].min() == pytest.approx(3.0)  # capped
    assert scale[900:].max() < 0.2 * scale[400:800].min()  # scaled down in the wild regime
    # Causal: changing the returns from bar 800 on (r[800] = log(close[800] / close[799]))
    # leaves the scale up to bar 799 unchanged; bar 800's scale uses its own return.
    later = np.asarray(make_env_params(_bars_from_returns(np.r_[calm, wild * 3]), **kw).vol_scale)
    np.testing.assert_array_equal(later[:800], scale[:800])
    assert later[800] < scale[800]
    # The environment's position is the signal times the scale (cost on the sized change).
    long = np.full((4, 3), 2)
    _, _, positions, _, cost, _ = _episode(p, long, 900)
    np.testing.assert_allclose(positions, scale[900:904], rtol=1e-6)
    np.testing.assert_allclose(cost[1:], 1e-4 * np.abs(np.diff(scale[900:904])), rtol=1e-4)
    fixed = make_env_params(bars, "train")
    np.testing.assert_array_equal(np.asarray(fixed.vol_scale), 1.0)


def test_evaluation_helpers_replay_the_environment():
    p = make_env_params(
        DRIFTING,
        "train",
        action_mode="delta",
        delta_step=0.4,
        position_sizing="vol_target",
        cost_bps=5.0,
        max_leverage=1.5,
    )
    actions = np.random.default_rng(9).integers(0, 3, size=(p.episode_len, 3))
    _, _, positions, pnl, cost, _ = _episode(p, actions, 350)
    bars = np.arange(350, 350 + len(actions))
    got = jax.jit(positions_from_actions, compiler_options=FULL_OPTIMISATION)(actions, p, bars)
    np.testing.assert_array_equal(np.asarray(got), positions)
    got_pnl, got_cost = jax.jit(net_returns, compiler_options=FULL_OPTIMISATION)(got, p, bars)
    np.testing.assert_array_equal(np.asarray(got_pnl), pnl)
    np.testing.assert_allclose(np.asarray(got_cost), cost, rtol=1e-6, atol=1e-12)


def test_the_evaluator_scores_what_the_environment_pays():
    from marl_jax.env.evaluate import run_policy

    p = make_env_params(
        DRIFTING, "val", action_mode="delta", position_sizing="vol_target", episode_len=5000
    )

    def policy(obs):  # a deterministic policy of the observation
        f = np.asarray(obs["mmd"])[:, :, -1]
        return np.stack([(f[:, i] > 0) + (f[:, i] > 0.5) for i in range(3)], 1)

    run = run_policy(policy, p)
    _, positions, pnl, cost, _ = _whole_split(p, policy(observations(p, run.bar_index)))
    np.testing.assert_array_equal(run.positions, positions)
    np.testing.assert_allclose(run.rewards, pnl - cost, atol=1e-9)
    assert len(np.unique(positions)) > 5


def test_unknown_modes_are_refused():
    for key in ("reward", "action_mode", "position_sizing"):
        with pytest.raises(ValueError, match=f"{key} 'nope' is unknown"):
            make_env_params(DRIFTING, "train", **{key: "nope"})


def test_the_config_keys_reach_the_environment():
    from tiny_config import tiny

    from marl_jax.config import config_from_dict
    from marl_jax.run.setup import env_params_for

    env = {
        "reward": "differential_sharpe",
        "dsr_eta": 0.05,
        "action_mode": "delta",
        "delta_step": 0.25,
        "position_sizing": "vol_target",
        "vol_span": 10,
        "target_vol": 0.2,
        "max_leverage": 1.5,
    }
    cfg = config_from_dict(tiny(env=env))
    p = env_params_for(cfg, DRIFTING, "train", None)
    assert (p.reward, p.dsr_eta, p.action_mode, p.delta_step) == (
        "differential_sharpe",
        0.05,
        "delta",
        0.25,
    )
    # The synthetic market's config: its nominal calendar, 252 days of 24 hours.
    assert p.periods_per_year == periods_per_year_at(30)
    direct = make_env_params(
        DRIFTING,
        "train",
        window=8,
        periods_per_year=periods_per_year_at(30),
        position_sizing="vol_target",
        vol_span=10,
        target_vol=0.2,
        max_leverage=1.5,
    )
    np.testing.assert_array_equal(np.asarray(p.vol_scale), np.asarray(direct.vol_scale))
    assert np.asarray(p.vol_scale).max() == pytest.approx(1.5)


# ----------------------------------------------------------------- several instruments


def test_several_instruments_normalise_apart_and_draw_at_reset():
    other = _bars_from_returns(np.random.default_rng(6).normal(-3e-4, 8e-3, 1200)[::-1])
    multi, parts = make_multi_env_params(
        [DRIFTING, other], "train", reward="excess", episode_len=16, cost_bps=0.0
    )
    n0 = len(DRIFTING)
    # Each instrument keeps its own normalisation and statistics, fitted on its own train split.
    for k, (bars, part, offset) in enumerate([(DRIFTING, parts[0], 0), (other, parts[1], n0)]):
        norm = fit_normalisation(bars, FRACTIONS)
        np.testing.assert_allclose(np.asarray(multi.norm_center[k]), norm.center, rtol=1e-5)
        rows = np.asarray(multi.features)[offset : offset + len(bars)]
        np.testing.assert_allclose(rows, norm.apply(compute_features(bars)), atol=1e-5)
        assert float(multi.return_mean[k]) == float(part.return_mean)
        assert int(multi.start_lo[k]) == int(part.start_lo) + offset
        assert int(multi.last_bar[k]) == int(part.last_bar) + offset
    assert float(multi.return_mean[0]) > 0 > float(multi.return_mean[1])
    assert float(multi.log_returns[n0]) == 0.0  # no return across the seam
    # reset draws both instruments, and starts inside the drawn one's training split.
    keys = jax.random.split(jax.random.PRNGKey(4), 1000)
    _, states = jax.jit(jax.vmap(reset, in_axes=(0, None)))(keys, multi)
    k, t = np.asarray(states.instrument), np.asarray(states.t)
    assert 400 < (k == 1).sum() < 600
    lo, hi = np.asarray(multi.start_lo)[k], np.asarray(multi.start_hi)[k]
    assert np.all((lo <= t) & (t <= hi))
    np.testing.assert_allclose(np.asarray(states.dsr_b), np.asarray(multi.return_sq)[k])
    # An episode ends at its own instrument's last bar and earns its own instrument's excess.
    long, jstep = jnp.array([2, 2, 2]), jax.jit(step)
    last0 = int(multi.last_bar[0])
    _, _, _, done, info = jstep(keys[0], _state(last0 - 1), long, multi)
    assert bool(info["terminated"]) and bool(done)
    t1 = n0 + 500
    s1 = _state(t1).replace(instrument=jnp.int32(1))
    _, s2, reward, done, info = jstep(keys[0], s1, long, multi)
    assert not bool(done) and int(s2.instrument) == 1
    r = float(multi.log_returns[t1 + 1])
    np.testing.assert_allclose(float(reward), r - float(multi.return_mean[1]), rtol=1e-5)
    obs = observation_at(multi, t1)
    np.testing.assert_array_equal(obs["mmd"], observation_at(parts[1], 500)["mmd"])
