"""The original system's API over the run layer (:mod:`marl_jax.compat`): ``MAPPOTrainer``'s
training loop and ``CheckpointManager``'s checkpoints."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from test_checkpointer import assert_bit_exact
from tiny_config import TINY

from marl_jax.compat import CheckpointManager, MAPPOTrainer
from marl_jax.config import config_from_dict
from marl_jax.env import data
from marl_jax.run.setup import env_params_for


@pytest.fixture(scope="module")
def env_params():
    cfg = config_from_dict(TINY, source="tests/test_compat.py")
    return env_params_for(cfg, data.synthetic_bars(cfg.env.synthetic_n_bars, seed=1), "train", None)


@pytest.mark.slow
def test_mappo_trainer_runs_the_original_loop(env_params, tmp_path):
    trainer = MAPPOTrainer(
        TINY["training"],
        agents=TINY["agents"],
        critic=TINY["critic"],
        checkpoint={"dir": str(tmp_path / "ignored"), "max_to_keep": 1},
        checkpoint_dir=tmp_path,
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
    # checkpoint.max_to_keep=1 keeps the latest plus the best; checkpoint_dir wins over dir.
    assert trainer.checkpoints.list_checkpoints() == sorted({1, best["step"]})
    assert not (tmp_path / "ignored").exists()
    assert set(best["agents"]) == {"mlmi", "nwrqk", "mmd"}


@pytest.mark.slow
def test_mappo_trainer_ranks_by_the_configured_metric(env_params, tmp_path):
    trainer = MAPPOTrainer(
        TINY["training"],
        agents=TINY["agents"],
        critic=TINY["critic"],
        checkpoint={"dir": str(tmp_path), "best_metric": "rank_me"},
    )
    experiences = trainer.collect_experience(env_params, n_steps=8)
    metrics = trainer.update_agents(experiences)
    for score in (1.0, 5.0, 2.0):
        trainer.save_checkpoint({**metrics, "rank_me": score})
    best = trainer.checkpoints.load_best_checkpoint()
    assert best["metrics"]["rank_me"] == 5.0
    assert set(best["agents"]) == {"mlmi", "nwrqk", "mmd"}


def flax_vars(seed: int):
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "conv_layers_0": {"kernel": jnp.asarray(rng.normal(size=(3, 4, 8)), jnp.float32)},
            "temperature": jnp.asarray([1.0 + seed], jnp.float32),
        },
        "batch_stats": {
            "conv_layers_0": {"mean": jnp.asarray(rng.normal(size=8), jnp.float32)},
            "num_batches_tracked": jnp.asarray(seed, jnp.int32),
        },
    }


def test_original_api_roundtrip(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpts", max_checkpoints=5, best_metric="average_reward")
    assert mgr.load_best_checkpoint() is None
    saved = {}
    rewards = [0.2, 0.7, 0.1, 0.3, 0.6, 0.5, 0.4]
    for i, r in enumerate(rewards):
        agents = {n: flax_vars(10 * i + j) for j, n in enumerate(["mlmi", "nwrqk", "mmd"])}
        critic = flax_vars(100 + i)
        path = mgr.save_checkpoint(agents=agents, critic=critic, metrics={"average_reward": r})
        assert (tmp_path / "ckpts" / str(i)).resolve() == Path(path)
        saved[i] = (agents, critic)
    best = mgr.load_best_checkpoint()
    assert set(best) >= {"agents", "critic", "metrics"}
    assert best["metrics"]["average_reward"] == 0.7
    assert_bit_exact(best["agents"], saved[1][0])
    assert_bit_exact(best["critic"], saved[1][1])
    assert mgr.list_checkpoints() == [1, 2, 3, 4, 5, 6]
    # is_best=True marks a checkpoint as the best even with a lower metric
    agents = {n: flax_vars(77) for n in ["mlmi", "nwrqk", "mmd"]}
    mgr.save_checkpoint(agents, flax_vars(78), {"average_reward": 0.0}, is_best=True)
    best = mgr.load_best_checkpoint()
    assert best["step"] == 7
    assert_bit_exact(best["critic"], flax_vars(78))
    mgr.close()
    # reopened: numbering continues
    mgr2 = CheckpointManager(tmp_path / "ckpts")
    assert mgr2.load_best_checkpoint()["step"] == 7
    assert mgr2.save_checkpoint(agents, flax_vars(1), {"average_reward": 0.0}).endswith("/8")
    mgr2.close()
