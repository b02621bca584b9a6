"""MAPPO trainer: training-mode rule, purity under vmap, traced hyperparameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny_config import TINY, tiny

from marl_jax.config import config_from_dict
from marl_jax.env import data, market
from marl_jax.hparams import HyperParams
from marl_jax.mappo import MAPPO
from marl_jax.ppo import scaled_targets


@pytest.fixture(scope="module")
def cfg():
    return config_from_dict(TINY, source="tests/test_mappo.py")


@pytest.fixture(scope="module")
def env_params(cfg):
    bars = data.synthetic_bars(cfg.env.synthetic_n_bars, seed=1)
    return market.make_env_params(
        bars, "train", window=cfg.env.window, episode_len=cfg.env.episode_len
    )


def build(config) -> MAPPO:
    return MAPPO(config, market.MARKET)


def next_return_targets(env_params, bars):
    """The auxiliary loss's targets on the market: the next bar's return over their spread."""
    return scaled_targets(market.MARKET.aux_targets(env_params, bars))


@pytest.fixture(scope="module")
def train_fn(cfg, env_params):
    algo = build(cfg)
    return jax.jit(lambda rng, init=None, hparams=None: algo.train(rng, env_params, init, hparams))


def leaves_equal(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.slow
def test_rollout_and_loss_use_the_same_mode(cfg, env_params):
    """Before any update, the loss recomputes exactly the rollout's log-probabilities."""
    algo = build(cfg)
    state, batch = rollout_batch(
        algo, jax.jit(algo.init)(jax.random.key(0), env_params), env_params
    )
    _, metrics = jax.jit(algo.loss)(state.params, state.constants, batch, env_params, state.hparams)
    for name in ("mlmi", "nwrqk", "mmd"):
        assert float(metrics[f"{name}/approx_kl"]) < 1e-6
        assert float(metrics[f"{name}/clip_frac"]) == 0.0


def rollout_batch(algo: MAPPO, state, env_params) -> tuple:
    """``(state after a rollout, its flattened Batch)``."""
    state, traj = jax.jit(algo.rollout)(state, env_params)
    return state, algo.batch(state, traj)[0]


@pytest.mark.slow
def test_the_auxiliary_return_loss_trains_the_actors_and_its_heads_only(cfg, env_params):
    """``training.aux_return_coef``: linear heads on each actor's last features predict the
    next bar's return; the loss adds coef x their squared error. The heads are drawn from
    their own key, trained with the actors, and never among the exported models."""
    off, on = build(cfg), build(config_from_dict(tiny(training={"aux_return_coef": 0.5})))
    state_off = jax.jit(off.init)(jax.random.key(0), env_params)
    state_on = jax.jit(on.init)(jax.random.key(0), env_params)
    heads = state_on.params.pop("aux")
    assert leaves_equal(state_on.params, state_off.params)
    assert "aux" not in state_off.params and "aux" not in state_off.opt_state
    assert set(heads) == {"mlmi", "nwrqk", "mmd"} and "aux" in state_on.opt_state
    assert leaves_equal(on.model_variables(state_on), off.model_variables(state_off))

    state, batch = rollout_batch(off, state_off, env_params)
    targets = np.asarray(next_return_targets(env_params, batch.obs_key))
    returns = np.asarray(env_params.log_returns)[np.asarray(batch.obs_key) + 1]
    np.testing.assert_allclose(targets * returns.std(), returns, rtol=1e-4, atol=1e-9)

    def grads(algo, params):
        return jax.jit(jax.grad(algo.loss, has_aux=True))(
            params, state.constants, batch, env_params, state.hparams
        )

    g_on, m_on = grads(on, {**state.params, "aux": heads})
    g_off, m_off = grads(off, state.params)
    for name in ("mlmi", "nwrqk", "mmd"):
        assert not leaves_equal(g_on[name], g_off[name]), name
        assert float(m_on[f"{name}/aux_loss"]) > 0, name
        assert np.any(np.asarray(g_on["aux"][name]["kernel"]) != 0), name  # (ReLU zeros)
        assert float(g_on["aux"][name]["bias"]) != 0, name
    assert leaves_equal(g_on["critic"], g_off["critic"])
    per_agent = sum(float(m_on[f"{n}/aux_loss"]) for n in ("mlmi", "nwrqk", "mmd"))
    assert float(m_on["aux_loss"]) == pytest.approx(per_agent, rel=1e-6)
    np.testing.assert_allclose(
        float(m_on["loss"]), float(m_off["loss"]) + 0.5 * per_agent, rtol=1e-5
    )


def test_auxiliary_targets_are_returns_over_their_spread_and_finite_without_one(env_params):
    returns = np.asarray(env_params.log_returns)
    bars = np.array([100, 200, 300])
    targets = np.asarray(next_return_targets(env_params, jnp.asarray(bars)))
    np.testing.assert_allclose(targets * returns[bars + 1].std(), returns[bars + 1], rtol=1e-5)
    # One transition (a minibatch of one row) has no spread: its return is kept, not blown up.
    one = np.asarray(next_return_targets(env_params, jnp.asarray([100])))
    assert returns[101] != 0 and one.tolist() == [returns[101]]


@pytest.mark.slow
def test_training_changes_params_but_not_batchnorm_statistics(cfg, env_params, train_fn):
    state, metrics = train_fn(jax.random.key(0))
    fresh = jax.jit(build(cfg).init)(jax.random.key(0), env_params)
    assert int(state.update_step) == build(cfg).num_updates == 2
    assert not leaves_equal(state.params["mlmi"], fresh.params["mlmi"])
    stats, fresh_stats = state.constants["mlmi"], fresh.constants["mlmi"]
    assert leaves_equal(stats["batch_stats"], fresh_stats["batch_stats"])
    assert np.isfinite(np.asarray(metrics["loss"])).all()
    assert metrics["average_reward"].shape == (build(cfg).num_updates,)


@pytest.fixture(scope="module")
def vtrain(train_fn):
    """``train`` vmapped over (rng, hparams), compiled once for both tests below."""
    return jax.jit(jax.vmap(train_fn, in_axes=(0, None, 0)))


def stacked(*hparams: HyperParams) -> HyperParams:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *hparams)


@pytest.mark.slow
def test_vmapped_seeds_equal_solo_runs(cfg, train_fn, vtrain):
    base = HyperParams.from_config(cfg)
    rngs = jax.vmap(jax.random.key)(jnp.array([3, 7]))
    both, both_metrics = vtrain(rngs, None, stacked(base, base))
    for i, seed in enumerate((3, 7)):
        solo, solo_metrics = train_fn(jax.random.key(seed))
        member = jax.tree.map(lambda x, i=i: x[i], both)
        for x, y in zip(jax.tree.leaves(member), jax.tree.leaves(solo), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(both_metrics["average_reward"][i]),
            np.asarray(solo_metrics["average_reward"]),
            rtol=1e-5,
            atol=1e-9,
        )
    assert not leaves_equal(
        jax.tree.map(lambda x: x[0], both.params), jax.tree.map(lambda x: x[1], both.params)
    )


@pytest.mark.slow
def test_hyperparameters_are_traced_and_vmappable(cfg, vtrain):
    base = HyperParams.from_config(cfg)
    rngs = jax.vmap(jax.random.key)(jnp.array([0, 0]))
    states, _ = vtrain(rngs, None, stacked(base, base.replace(gamma=jnp.float32(0.5))))
    np.testing.assert_allclose(np.asarray(states.hparams.gamma), [base.gamma, 0.5])
    assert not leaves_equal(
        jax.tree.map(lambda x: x[0], states.params), jax.tree.map(lambda x: x[1], states.params)
    )


@pytest.mark.slow
def test_each_policy_is_clipped_on_its_own(cfg, env_params):
    """A huge NWRQK gradient leaves the other models' steps exactly as they were.

    ``learn`` runs as written (GAE, shuffled minibatches, one clip and Adam per model) on a
    cheap quadratic loss in place of PPO's, which the clip never sees: compiling the models'
    backward passes twice would add a minute and test nothing more."""

    class Quiet(MAPPO):
        def loss(self, params, constants, batch, env_params, hp):
            del constants, env_params, hp
            # Depends on the batch, so each minibatch steps differently.
            scale = 1e-3 * (1.0 + jnp.mean(batch.advantages) ** 2)
            return scale * sum((x**2).sum() for x in jax.tree.leaves(params)), {}

    class Loud(Quiet):
        def loss(self, params, constants, batch, env_params, hp):
            total, metrics = super().loss(params, constants, batch, env_params, hp)
            return total + 1e6 * sum(x.sum() for x in jax.tree.leaves(params["nwrqk"])), metrics

    quiet, loud = Quiet(cfg, market.MARKET), Loud(cfg, market.MARKET)
    state = jax.jit(quiet.init)(jax.random.key(0), env_params)
    state, traj = jax.jit(quiet.rollout)(state, env_params)
    after_quiet, m_quiet = jax.jit(quiet.learn)(state, traj, env_params)
    after_loud, m_loud = jax.jit(loud.learn)(state, traj, env_params)
    assert float(m_loud["nwrqk/grad_norm"]) > 1e3 * cfg.training.max_grad_norm
    assert float(m_quiet["nwrqk/grad_norm"]) < cfg.training.max_grad_norm
    for name in ("mlmi", "mmd", "critic"):
        assert not leaves_equal(after_quiet.params[name], state.params[name]), name
        assert leaves_equal(after_quiet.params[name], after_loud.params[name]), name
    assert not leaves_equal(after_quiet.params["nwrqk"], after_loud.params["nwrqk"])


@pytest.mark.slow
def test_learning_rate_is_in_the_optimizer_state_and_anneals(cfg, env_params):
    annealed = config_from_dict(tiny(training={"anneal_lr": True, "actor_lr": 1e-3}))
    algo = build(annealed)
    state = jax.jit(algo.init)(jax.random.key(0), env_params)
    lr = optax.tree_utils.tree_get(state.opt_state["mlmi"], "learning_rate")
    assert float(lr) == pytest.approx(1e-3)
    assert float(optax.tree_utils.tree_get(state.opt_state["critic"], "learning_rate")) == (
        pytest.approx(annealed.training.critic_lr)
    )
    # The anneal factor reaches 0 after the run's last minibatch step.
    t = annealed.training
    schedule_steps = algo.num_updates * t.update_epochs * t.num_minibatches
    tx_state = state.opt_state["mlmi"][-1]
    assert int(tx_state.count) == 0 and schedule_steps == 8


@pytest.mark.slow
def test_unrolling_the_learn_loop_changes_the_program_not_the_result(env_params):
    # One epoch of two minibatches: the unrolled program holds two copies of the step, not
    # four, and compiles in half the time; the loops it removes are the same.
    rolled, unrolled = (
        build(config_from_dict(tiny(training={"update_epochs": 1, "unroll_learn": unroll})))
        for unroll in (False, True)
    )
    state = jax.jit(rolled.init)(jax.random.key(0), env_params)
    state, traj = jax.jit(rolled.rollout)(state, env_params)
    programs = {
        name: jax.jit(algo.learn).lower(state, traj, env_params).as_text()
        for name, algo in (("rolled", rolled), ("unrolled", unrolled))
    }
    # The epoch and minibatch loops are while loops only when rolled.
    assert programs["unrolled"].count("stablehlo.while") < programs["rolled"].count(
        "stablehlo.while"
    )
    after_rolled, m_rolled = jax.jit(rolled.learn)(state, traj, env_params)
    after_unrolled, m_unrolled = jax.jit(unrolled.learn)(state, traj, env_params)
    for x, y in zip(
        jax.tree.leaves(after_rolled.params), jax.tree.leaves(after_unrolled.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(m_rolled["loss"]), float(m_unrolled["loss"]), rtol=1e-5)


def test_the_entropy_anneal_reaches_zero_at_the_last_update(env_params):
    """``training.anneal_ent``: ``ent_coef`` at the first update, half of it halfway, 0 after
    the last; an update at the end learns as one with no entropy bonus."""
    annealed = build(config_from_dict(tiny(training={"anneal_ent": True, "ent_coef": 0.5})))
    plain = build(config_from_dict(tiny(training={"ent_coef": 0.5})))
    state = jax.jit(annealed.init)(jax.random.key(0), env_params)
    n = annealed.num_updates
    for step, factor in ((0, 1.0), (n // 2, 0.5), (n, 0.0), (n + 3, 0.0)):
        at = state.replace(update_step=jnp.asarray(step, state.update_step.dtype))
        assert float(annealed.hparams_now(at).ent_coef) == pytest.approx(0.5 * factor)
        assert float(plain.hparams_now(at).ent_coef) == pytest.approx(0.5)
    state, traj = jax.jit(annealed.rollout)(state, env_params)
    end = state.replace(update_step=jnp.asarray(n, state.update_step.dtype))
    # The first update with no bonus at all (the same compiled program).
    no_bonus = state.replace(hparams=state.hparams.replace(ent_coef=jnp.zeros((), jnp.float32)))
    learn = jax.jit(annealed.learn)
    after, _ = learn(end, traj, env_params)
    assert leaves_equal(after.params, learn(no_bonus, traj, env_params)[0].params)
    first, _ = learn(state, traj, env_params)  # at update 0 the bonus is whole: it changes things
    assert not leaves_equal(first.params, after.params)


def test_reward_scale_trains_on_the_rewards_times_the_factor(cfg, env_params):
    """``training.reward_scale``: the same advantages, value targets and ValueNorm state as an
    environment whose rewards are that many times larger, and not those of the rewards as
    they are (ValueNorm's variance floor keeps small rewards unnormalised)."""
    plain, scaled = build(cfg), build(config_from_dict(tiny(training={"reward_scale": 100.0})))
    state = jax.jit(plain.init)(jax.random.key(0), env_params)
    state, traj = jax.jit(plain.rollout)(state, env_params)
    by_key = scaled.advantages(state, traj)
    by_env = plain.advantages(state, traj.replace(reward=traj.reward * 100.0))
    for a, b in zip(jax.tree.leaves(by_key), jax.tree.leaves(by_env), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    adv, targets, _ = plain.advantages(state, traj)
    assert not np.allclose(np.asarray(adv), np.asarray(by_key[0]), atol=1e-3)
    assert not np.allclose(np.asarray(targets), np.asarray(by_key[1]))
