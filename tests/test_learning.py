"""Learning: the quickstart config on synthetic bars, 3 seeds trained as one vmapped program."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from marl_jax.config import load_config
from marl_jax.env import evaluate, market
from marl_jax.mappo import make_train
from marl_jax.run.setup import env_params_for, load_market

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
SEEDS = (0, 1, 2)


def test_quickstart_learns_on_three_seeds():
    cfg = load_config(QUICKSTART)
    bars = load_market(cfg)
    train_params = env_params_for(cfg, bars, "train", None)
    test_params = env_params_for(cfg, bars, "test", market.get_normalisation(train_params))
    train = make_train(cfg, train_params)
    states, metrics = jax.jit(jax.vmap(train))(jax.vmap(jax.random.key)(jnp.array(SEEDS)))

    baselines = evaluate.evaluate_baselines(test_params, seed=0)
    random_sharpe = baselines["random"].metrics["sharpe"]
    flat_sharpe = baselines["flat"].metrics["sharpe"]
    act = jax.jit(lambda state, obs: train.algo.act(state, obs)[0])
    rewards = np.asarray(metrics["average_reward"])
    k = max(1, rewards.shape[1] // 10)
    for i, seed in enumerate(SEEDS):
        state = jax.tree.map(lambda x, i=i: x[i], states)
        run = evaluate.run_policy(lambda obs, s=state: np.asarray(act(s, obs)), test_params)
        sharpe = run.metrics["sharpe"]
        assert sharpe > random_sharpe, f"seed {seed}: Sharpe {sharpe:.2f} <= random"
        assert sharpe > flat_sharpe, f"seed {seed}: Sharpe {sharpe:.2f} <= flat"
        first, last = rewards[i, :k].mean(), rewards[i, -k:].mean()
        assert last > first, f"seed {seed}: reward fell from {first:.2e} to {last:.2e}"
