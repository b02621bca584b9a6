"""Hyperparameter x seed sweep as ONE jitted program: ``jax.vmap(train)`` over a grid.

Prints, per grid point, the training-reward rise (mean of the last 10% of updates minus the
first 10%) and the greedy policy's test-split Sharpe (mean and min over seeds), next to the
random and momentum baselines.

    python benchmarks/sweep.py --config configs/quickstart.yaml --seeds 3 \
        --grid training.gamma=0.5,0.9,0.99 --grid training.actor_lr=5e-4,1e-3
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from marl_jax.config import load_config
from marl_jax.env import evaluate, market
from marl_jax.mappo import HyperParams, make_train
from marl_jax.run.setup import env_params_for, load_market

TRACED = {"actor_lr", "critic_lr", "ent_coef", "clip_eps", "gamma", "gae_lambda", "value_loss_coef"}


def parse_grid(items: list[str]) -> dict[str, list[float]]:
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        name = key.removeprefix("training.")
        if name not in TRACED:
            raise SystemExit(f"--grid {key}: only traced hyperparameters can be swept: {TRACED}")
        grid[name] = [float(v) for v in values.split(",")]
    return grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--grid", action="append", default=[])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    grid = parse_grid(args.grid)
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    points = points or [{}]
    bars = load_market(cfg)
    train_params = env_params_for(cfg, bars, "train", None)
    test_params = env_params_for(cfg, bars, "test", market.get_normalisation(train_params))
    train = make_train(cfg, train_params)
    algo = train.algo

    base = HyperParams.from_config(cfg)
    members = [(p, s) for p in points for s in range(args.seeds)]
    hparams = jax.tree.map(lambda *xs: jnp.stack(xs), *[base.replace(**p) for p, _ in members])
    rngs = jax.vmap(jax.random.key)(jnp.array([s for _, s in members]))
    start = time.perf_counter()
    states, metrics = jax.jit(jax.vmap(lambda r, h: train(r, None, h)))(rngs, hparams)
    jax.block_until_ready(states)
    elapsed = time.perf_counter() - start
    steps = len(members) * algo.num_updates * cfg.training.num_envs * cfg.training.rollout_len
    print(
        f"{len(members)} runs x {algo.num_updates} updates in {elapsed:.1f} s "
        f"(compile included), {steps / elapsed:,.0f} env steps/s, device {jax.devices()[0]}"
    )

    act = jax.jit(lambda state, obs: algo.act(state, obs)[0])
    base_metrics = evaluate.evaluate_baselines(test_params)
    rewards = np.asarray(metrics["average_reward"])
    k = max(1, rewards.shape[1] // 10)
    results: dict[int, list[tuple[float, float]]] = {}
    for i, (point, _) in enumerate(members):
        state = jax.tree.map(lambda x, i=i: x[i], states)
        run = evaluate.run_policy(lambda obs, s=state: np.asarray(act(s, obs)), test_params)
        rise = float(rewards[i, -k:].mean() - rewards[i, :k].mean())
        results.setdefault(points.index(point), []).append((rise, run.metrics["sharpe"]))
    print(f"{'point':45s} {'reward rise (bp)':>18s} {'sharpe mean':>12s} {'sharpe min':>11s}")
    for j, point in enumerate(points):
        rise = np.mean([r for r, _ in results[j]]) * 1e4
        sharpes = [s for _, s in results[j]]
        label = ", ".join(f"{k}={v:g}" for k, v in point.items()) or "config"
        print(f"{label:45s} {rise:18.3f} {np.mean(sharpes):12.3f} {np.min(sharpes):11.3f}")
    for name in ("random", "flat", "momentum", "buy_and_hold"):
        print(f"baseline {name:36s} {'':18s} {base_metrics[name].metrics['sharpe']:12.3f}")


if __name__ == "__main__":
    main()
