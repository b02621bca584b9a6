"""MAPPO trainer: training-mode rule, purity under vmap, traced hyperparameters, original API."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marl_jax.config import config_from_dict
from marl_jax.env import data, market
from marl_jax.mappo import MAPPO, Batch, HyperParams, MAPPOTrainer, make_train

TINY = {
    "agents": {
        name: {"hidden_dims": [8, 8, 8], "conv_channels": [4, 4, 4], "sequence_length": 8}
        for name in ("mlmi", "nwrqk", "mmd")
    },
    "critic": {"hidden_dims": [16, 8, 8]},
    "training": {
        "num_envs": 4,
        "rollout_len": 8,
        "total_timesteps": 64,
        "update_epochs": 2,
        "num_minibatches": 2,
    },
    "env": {"window": 8, "episode_len": 16, "synthetic_n_bars": 1500},
}


@pytest.fixture(scope="module")
def cfg():
    return config_from_dict(TINY, source="tests/test_mappo.py")


@pytest.fixture(scope="module")
def env_params(cfg):
    bars = data.synthetic_bars(cfg.env.synthetic_n_bars, seed=1)
    return market.make_env_params(
        bars, "train", window=cfg.env.window, episode_len=cfg.env.episode_len
    )


@pytest.fixture(scope="module")
def train_fn(cfg, env_params):
    return jax.jit(make_train(cfg, env_params))


def leaves_equal(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_rollout_and_loss_use_the_same_mode(cfg, env_params):
    """Before any update, the loss recomputes exactly the rollout's log-probabilities."""
    algo = MAPPO(cfg)
    state = jax.jit(algo.init)(jax.random.key(0), env_params)
    state, traj = jax.jit(algo.rollout)(state, env_params)
    adv, targets, _ = algo.advantages(state, traj)
    batch = jax.tree.map(
        lambda x: x.reshape(-1, *x.shape[2:]),
        Batch(traj.bar, traj.actions, traj.log_probs, traj.value, adv, targets),
    )
    _, metrics = jax.jit(algo.loss)(state.params, state.constants, batch, env_params, state.hparams)
    for name in ("mlmi", "nwrqk", "mmd"):
        assert float(metrics[f"{name}/approx_kl"]) < 1e-6
        assert float(metrics[f"{name}/clip_frac"]) == 0.0


def test_training_changes_params_but_not_batchnorm_statistics(cfg, env_params, train_fn):
    state, metrics = train_fn(jax.random.key(0))
    fresh = jax.jit(MAPPO(cfg).init)(jax.random.key(0), env_params)
    assert int(state.update_step) == MAPPO(cfg).num_updates == 2
    assert not leaves_equal(state.params["mlmi"], fresh.params["mlmi"])
    stats, fresh_stats = state.constants["mlmi"], fresh.constants["mlmi"]
    assert leaves_equal(stats["batch_stats"], fresh_stats["batch_stats"])
    assert np.isfinite(np.asarray(metrics["loss"])).all()
    assert metrics["average_reward"].shape == (MAPPO(cfg).num_updates,)


@pytest.fixture(scope="module")
def vtrain(train_fn):
    """``train`` vmapped over (rng, hparams), compiled once for both tests below."""
    return jax.jit(jax.vmap(train_fn, in_axes=(0, None, 0)))


def stacked(*hparams: HyperParams) -> HyperParams:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *hparams)


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


def test_hyperparameters_are_traced_and_vmappable(cfg, vtrain):
    base = HyperParams.from_config(cfg)
    rngs = jax.vmap(jax.random.key)(jnp.array([0, 0]))
    states, _ = vtrain(rngs, None, stacked(base, base.replace(gamma=jnp.float32(0.5))))
    np.testing.assert_allclose(np.asarray(states.hparams.gamma), [base.gamma, 0.5])
    assert not leaves_equal(
        jax.tree.map(lambda x: x[0], states.params), jax.tree.map(lambda x: x[1], states.params)
    )


def test_mappo_trainer_runs_the_original_loop(cfg, env_params, tmp_path):
    trainer = MAPPOTrainer(
        TINY["training"], agents=TINY["agents"], critic=TINY["critic"], checkpoint_dir=tmp_path
    )
    rewards = []
    for episode in range(2):
        experiences = trainer.collect_experience(env_params, n_steps=8)
        metrics = trainer.update_agents(experiences)
        rewards.append(metrics["average_reward"])
        trainer.save_checkpoint(metrics)
        assert {"loss", "value_loss", "mlmi/entropy"} <= set(metrics)
        assert episode + 1 == int(trainer.state.update_step)
    best = trainer.checkpoints.load_best_checkpoint()
    assert best["metrics"]["average_reward"] == pytest.approx(max(rewards))
    assert set(best["agents"]) == {"mlmi", "nwrqk", "mmd"}
