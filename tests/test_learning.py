"""Learning: the quickstart config on synthetic bars, 3 seeds trained as one vmapped program."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from xla_levels import FULL_OPTIMISATION

from marl_jax.config import load_config
from marl_jax.env import evaluate, market
from marl_jax.mappo import make_train
from marl_jax.run.setup import env_params_for, load_market

# Minutes of training on a CPU: the whole suite runs them, the fast subset (-m "not slow") not.
pytestmark = pytest.mark.slow

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
SEEDS = (0, 1, 2)


def _train_and_score(dtype: str, seeds: tuple[int, ...]) -> dict[str, Any]:
    """Trains the quickstart config (``training.compute_dtype=dtype``) on ``seeds`` as one
    vmapped program; returns per-update metrics and each seed's greedy test-split Sharpe."""
    cfg = load_config(QUICKSTART, [f"training.compute_dtype={dtype}"])
    bars = load_market(cfg)
    train_params = env_params_for(cfg, bars, "train", None)
    test_params = env_params_for(cfg, bars, "test", market.get_normalisation(train_params))
    train = make_train(cfg, train_params)
    # Minutes of running, not of compiling: XLA's default optimisation level (xla_levels.py).
    train_seeds = jax.jit(jax.vmap(train), compiler_options=FULL_OPTIMISATION)
    states, metrics = train_seeds(jax.vmap(jax.random.key)(jnp.array(seeds)))
    act = jax.jit(lambda state, obs: train.algo.act(state, obs)[0])
    sharpes = []
    for i in range(len(seeds)):
        state = jax.tree.map(lambda x, i=i: x[i], states)
        run = evaluate.run_policy(lambda obs, s=state: np.asarray(act(s, obs)), test_params)
        sharpes.append(run.metrics["sharpe"])
    baselines = evaluate.evaluate_baselines(test_params, seed=0)
    return {
        "metrics": {k: np.asarray(v) for k, v in metrics.items()},
        "sharpe": sharpes,
        "baselines": {k: b.metrics["sharpe"] for k, b in baselines.items()},
    }


@pytest.fixture(scope="module")
def float32_runs() -> dict[str, Any]:
    return _train_and_score("float32", SEEDS)


def _reward_rise(rewards: np.ndarray) -> tuple[float, float]:
    k = max(1, rewards.shape[-1] // 10)
    return float(rewards[..., :k].mean()), float(rewards[..., -k:].mean())


def test_quickstart_learns_on_three_seeds(float32_runs):
    runs = float32_runs
    rewards = runs["metrics"]["average_reward"]
    for i, seed in enumerate(SEEDS):
        sharpe = runs["sharpe"][i]
        assert sharpe > runs["baselines"]["random"], f"seed {seed}: Sharpe {sharpe:.2f} <= random"
        assert sharpe > runs["baselines"]["flat"], f"seed {seed}: Sharpe {sharpe:.2f} <= flat"
        first, last = _reward_rise(rewards[i])
        assert last > first, f"seed {seed}: reward fell from {first:.2e} to {last:.2e}"


def test_bfloat16_compute_learns_as_float32_does(float32_runs):
    """``training.compute_dtype: bfloat16`` (float32 master weights, losses and softmax) on
    seed 0: the first update's losses agree with float32's to bfloat16 precision, and the
    learning matches: its reward rises by at least half float32's rise, its final reward is
    no further from float32's (same seed) than float32's seeds are from each other (or a
    quarter of the rise), and its greedy policy beats the random and flat baselines on the
    test split."""
    bf16 = _train_and_score("bfloat16", SEEDS[:1])
    f32 = {k: v[0] for k, v in float32_runs["metrics"].items()}
    b16 = {k: v[0] for k, v in bf16["metrics"].items()}
    for key in ("loss", "value_loss", "mlmi/entropy", "nwrqk/entropy", "mmd/entropy"):
        np.testing.assert_allclose(b16[key][0], f32[key][0], rtol=0.05, err_msg=key)
    f_first, f_last = _reward_rise(f32["average_reward"])
    b_first, b_last = _reward_rise(b16["average_reward"])
    rise = f_last - f_first
    assert rise > 0
    assert b_last - b_first > 0.5 * rise, (b_first, b_last, f_first, f_last)
    seed_lasts = [_reward_rise(r)[1] for r in float32_runs["metrics"]["average_reward"]]
    spread = max(seed_lasts) - min(seed_lasts)
    assert abs(b_last - f_last) <= max(spread, 0.25 * rise), (b_last, seed_lasts, rise)
    sharpe = bf16["sharpe"][0]
    assert sharpe > bf16["baselines"]["random"], sharpe
    assert sharpe > bf16["baselines"]["flat"], sharpe
