"""Does ``training.compute_dtype: bfloat16`` learn as float32 does, over seeds?

Trains ``--config`` (default the quickstart) on its synthetic market once per dtype, the seeds
vmapped in one program, then scores each seed's greedy policy on the test split. A seed
*learns* when its mean reward over the last tenth of the updates exceeds the first tenth's,
its test Sharpe beats the random and flat baselines, and its active information ratio against
buy-and-hold is positive, so that a constant position (a scaled buy-and-hold) does not count
(the learning test's criterion for float32). One run's outcome turns on rounding
(benchmarks/RESULTS.md, "bfloat16 compute"), so the two dtypes are compared over seeds here,
not one seed in the test suite.

    python benchmarks/bfloat16_learning.py --seeds 0,1,2,3,4,5   # minutes per dtype on a CPU
    python benchmarks/bfloat16_learning.py --gradients           # + the step-gradient table

``--gradients`` adds, at each float32 seed's initial and trained state, the cosine and norm
ratio of the two dtypes' gradients on one float32 rollout (what the learning test asserts).

Both rows are JAX; no PyTorch figure is claimed.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from marl_jax.agents import AGENT_NAMES
from marl_jax.config import config_from_dict, load_config
from marl_jax.env import evaluate, market
from marl_jax.mappo import MAPPO, TrainState, Transition, make_train
from marl_jax.run.setup import env_params_for, load_market


def train_and_score(
    config: str | Path,
    overrides: list[str],
    dtype: str,
    seeds: Sequence[int],
    compiler_options: dict | None = None,
) -> dict[str, Any]:
    """Trains ``config`` (``training.compute_dtype=dtype``) on ``seeds`` as one vmapped program
    (``compiler_options`` for its ``jax.jit``) and scores each seed's greedy policy on the test
    split. Returns the config, the train split's EnvParams, the initial and trained states
    (leading axis: seed), the per-update metrics, each seed's test Sharpe, turnover and active
    information ratio against buy-and-hold, the baselines' test Sharpes and the seconds the
    training took."""
    cfg = load_config(config, [*overrides, f"training.compute_dtype={dtype}"])
    bars = load_market(cfg)
    train_params = env_params_for(cfg, bars, "train", None)
    test_params = env_params_for(cfg, bars, "test", market.get_normalisation(train_params))
    train = make_train(cfg, train_params)
    keys = jax.vmap(jax.random.key)(jnp.array(list(seeds)))
    started = time.perf_counter()
    states, metrics = jax.jit(jax.vmap(train), compiler_options=compiler_options)(keys)
    metrics = {k: np.asarray(v) for k, v in metrics.items()}
    seconds = time.perf_counter() - started
    act = jax.jit(lambda state, obs: train.algo.act(state, obs)[0])
    runs = []
    for i in range(len(seeds)):
        state = jax.tree.map(lambda x, i=i: x[i], states)
        runs.append(evaluate.run_policy(lambda obs, s=state: np.asarray(act(s, obs)), test_params))
    baselines = evaluate.evaluate_baselines(test_params, seed=0)
    return {
        "config": cfg,
        "env_params": train_params,
        "initial": jax.jit(jax.vmap(lambda k: train.init(k, train_params)))(keys),
        "trained": states,
        "metrics": metrics,
        "sharpe": [float(run.metrics["sharpe"]) for run in runs],
        "turnover": [float(run.metrics["turnover"]) for run in runs],
        "active_ir": [float(run.metrics["active_ir"]) for run in runs],
        "baselines": {k: float(b.metrics["sharpe"]) for k, b in baselines.items()},
        "seeds": list(seeds),
        "seconds": seconds,
    }


def reward_tenths(rewards: np.ndarray) -> tuple[float, float]:
    """Mean reward over the first and over the last tenth of the updates (last axis)."""
    k = max(1, rewards.shape[-1] // 10)
    return float(rewards[..., :k].mean()), float(rewards[..., -k:].mean())


def learns(result: dict[str, Any], i: int) -> bool:
    """Seed ``i`` learned: its reward rose, its test Sharpe beats random's and flat's, and its
    active information ratio against buy-and-hold is positive."""
    first, last = reward_tenths(result["metrics"]["average_reward"][i])
    sharpe, base = result["sharpe"][i], result["baselines"]
    beats_baselines = sharpe > base["random"] and sharpe > base["flat"]
    return last > first and beats_baselines and result["active_ir"][i] > 0


def relabelled(algo: MAPPO, state: TrainState, traj: Transition, env_params) -> Transition:
    """The rollout's bars and sampled actions, with the behaviour log-probs and values that
    ``algo`` (in its own compute dtype) computes for them. The next bar is taken as
    ``bar + 1`` (one instrument, no episode end inside a rollout);
    :func:`gradient_agreement` reports how far that is from the rollout's own next values."""
    bars = traj.bar.reshape(-1)
    obs = market.observations(env_params, bars)
    actions = traj.actions.reshape(-1, len(AGENT_NAMES))
    variables = {name: algo.variables(state, name) for name in AGENT_NAMES}
    outs = algo.actor_outputs(variables, obs, actions)
    log_probs = jnp.stack([outs[name]["log_prob"] for name in AGENT_NAMES], -1)
    value = algo.critic_value(state, obs["critic"])
    next_value = algo.critic_value(state, market.observations(env_params, bars + 1)["critic"])
    return traj.replace(
        log_probs=log_probs.reshape(traj.log_probs.shape),
        value=value.reshape(traj.value.shape),
        next_value=next_value.reshape(traj.next_value.shape),
    )


def gradient_agreement(result: dict[str, Any]) -> list[dict[str, Any]]:
    """For a float32 :func:`train_and_score` result: at each seed's initial and trained state,
    one float32 rollout; each dtype relabels it (:func:`relabelled`) and takes the loss and
    its gradient on the whole rollout as one batch. One row per state and model: the cosine
    and norm ratio (bfloat16 over float32) of the gradients, both dtypes' loss metrics, and
    the largest difference between float32's relabelling and the rollout's own terms."""
    cfg, env_params = result["config"], result["env_params"]
    if cfg.training.compute_dtype != "float32":
        raise ValueError("gradient_agreement needs the float32 runs")
    f32 = MAPPO(cfg)
    b16 = MAPPO(config_from_dict(cfg.model_dump(), ["training.compute_dtype=bfloat16"]))

    @jax.jit
    def both(state: TrainState) -> tuple:
        _, traj = f32.rollout(state, env_params)
        own = {algo: relabelled(algo, state, traj, env_params) for algo in (f32, b16)}
        drift = jnp.max(
            jnp.stack(
                [
                    jnp.max(jnp.abs(getattr(own[f32], f) - getattr(traj, f)))
                    for f in ("log_probs", "value", "next_value")
                ]
            )
        )
        losses = [
            jax.value_and_grad(algo.loss, has_aux=True)(
                state.params,
                state.constants,
                algo.batch(state, own[algo])[0],
                env_params,
                state.hparams,
            )
            for algo in (f32, b16)
        ]
        return drift, losses

    rows = []
    seeds = result["seeds"]
    for when in ("initial", "trained"):
        for i, seed in enumerate(seeds):
            state = jax.tree.map(lambda x, i=i: x[i], result[when])
            drift, (((_, f_metrics), f_grads), ((_, b_metrics), b_grads)) = both(state)
            for name in f_grads:
                f = np.asarray(ravel_pytree(f_grads[name])[0], np.float64)
                b = np.asarray(ravel_pytree(b_grads[name])[0], np.float64)
                f_norm, b_norm = np.linalg.norm(f), np.linalg.norm(b)
                rows.append(
                    {
                        "when": when,
                        "seed": seed,
                        "model": name,
                        "float32_norm": float(f_norm),
                        "cosine": float(f @ b / (f_norm * b_norm)) if f_norm and b_norm else 0.0,
                        "norm_ratio": float(b_norm / f_norm) if f_norm else float("inf"),
                        "float32": {k: float(v) for k, v in f_metrics.items()},
                        "bfloat16": {k: float(v) for k, v in b_metrics.items()},
                        "relabel_drift": float(drift),
                    }
                )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated (0,1,2)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated")
    p.add_argument(
        "--gradients",
        action="store_true",
        help="also print the step-gradient table at the float32 runs' initial and trained states",
    )
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        f"JAX {jax.__version__} on {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} {jax.default_backend()} device(s); {args.config} {args.set}"
    )
    print(
        "| dtype | seed | reward, first tenth | last tenth | rise | test Sharpe | turnover "
        "| active IR vs buy-and-hold | learns |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    summary, float32 = [], None
    for dtype in args.dtypes.split(","):
        result = train_and_score(args.config, args.set, dtype, seeds)
        float32 = result if dtype == "float32" else float32
        rises = []
        for i, seed in enumerate(seeds):
            first, last = reward_tenths(result["metrics"]["average_reward"][i])
            rises.append(last - first)
            print(
                f"| {dtype} | {seed} | {first:.3e} | {last:.3e} | {last - first:+.3e} "
                f"| {result['sharpe'][i]:+.2f} | {result['turnover'][i]:.4f} "
                f"| {result['active_ir'][i]:+.2f} | {'yes' if learns(result, i) else 'no'} |",
                flush=True,
            )
        summary.append(
            f"{dtype}: learns on {sum(learns(result, i) for i in range(len(seeds)))} of "
            f"{len(seeds)} seeds, mean rise {np.mean(rises):+.3e}, "
            f"{result['seconds']:.0f} s to compile and train"
        )
    print("\n".join(summary))
    if args.gradients:
        if float32 is None:
            p.error("--gradients needs float32 among --dtypes")
        print("\n| state | seed | model | cosine | norm ratio, bf16/f32 | loss f32 | loss bf16 |")
        print("|---|---|---|---|---|---|---|")
        for r in gradient_agreement(float32):
            print(
                f"| {r['when']} | {r['seed']} | {r['model']} | {r['cosine']:.4f} "
                f"| {r['norm_ratio']:.3f} | {r['float32']['loss']:.4e} "
                f"| {r['bfloat16']['loss']:.4e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
