"""Acceptance 3 (reward arithmetic) and 4 (jit/vmap), plus observations and episode logic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marl_jax.env.data import Bars, synthetic_bars
from marl_jax.env.features import WARMUP_BARS, FeatureNorm, compute_features
from marl_jax.env.market import (
    EnvParams,
    EnvState,
    fit_normalisation,
    get_normalisation,
    make_env_params,
    observation_at,
    reset,
    step,
)

BARS = synthetic_bars(1500, seed=2)
FRACTIONS = (0.7, 0.15, 0.15)


@pytest.fixture(scope="module")
def params() -> EnvParams:
    return make_env_params(BARS, "train", episode_len=16, cost_bps=2.0)


def _state(t, position=0.0, step_count=0, equity=1.0) -> EnvState:
    return EnvState(
        t=jnp.int32(t),
        start=jnp.int32(t),
        step_count=jnp.int32(step_count),
        position=jnp.float32(position),
        equity=jnp.float32(equity),
    )


def test_reward_position_cost_and_equity_by_hand():
    n = 260
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    t0 = 220
    close[t0 : t0 + 5] = [100.0, 110.0, 99.0, 99.0, 104.0]
    open_ = np.r_[close[0], close[:-1]]
    bars = Bars(
        timestamp=(np.arange(n) * 30).astype("datetime64[m]"),
        open=open_,
        high=np.maximum(open_, close) * 1.001,
        low=np.minimum(open_, close) * 0.999,
        close=close,
        volume=np.full(n, 10.0),
    )
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
