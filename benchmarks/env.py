"""Benchmark the env: features for 100k bars, and vmapped env steps per second.

    python benchmarks/env.py                       # default backend (GPU if JAX sees one)
    JAX_PLATFORMS=cpu python benchmarks/env.py     # force CPU

Prints a Markdown table; benchmarks/RESULTS.md records what it printed, with the machine.
Features run on one thread (element-wise NumPy, no BLAS calls). The env benchmark runs a
random policy in ``n_envs`` vmapped environments for ``steps`` steps inside one jitted
``lax.scan`` (actions drawn on the device, auto-reset included, every observation and the
bootstrap critic observation consumed) and reports env steps per second after compilation,
best of ``repeats``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp

from marl_jax.env.data import synthetic_bars
from marl_jax.env.features import compute_features
from marl_jax.env.market import make_env_params, reset, step


def bench_features(n_bars: int, repeats: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    bars = synthetic_bars(n_bars, seed=0)
    t_gen = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        compute_features(bars)
        best = min(best, time.perf_counter() - t0)
    return t_gen, best


def bench_env(n_envs: int, steps: int, repeats: int) -> tuple[float, float]:
    params = make_env_params(synthetic_bars(20_000, seed=0), "train", episode_len=256)
    vreset = jax.vmap(reset, in_axes=(0, None))
    vstep = jax.vmap(step, in_axes=(0, 0, 0, None))

    @jax.jit
    def rollout(key, state):
        def body(carry, _):
            key, state = carry
            key, k_act, k_step = jax.random.split(key, 3)
            actions = jax.random.randint(k_act, (n_envs, 3), 0, 3, dtype=jnp.int32)
            obs, state, reward, done, info = vstep(
                jax.random.split(k_step, n_envs), state, actions, params
            )
            # Consume every observation (and the bootstrap one), as a policy and the trainer
            # would; otherwise XLA drops the window gathers as dead code.
            seen = sum(x.sum() for x in obs.values()) + info["next_critic_obs"].sum()
            return (key, state), (reward.sum(), done.sum(), seen)

        (key, state), totals = jax.lax.scan(body, (key, state), None, length=steps)
        return state, totals

    key = jax.random.PRNGKey(0)
    _, state = jax.jit(vreset)(jax.random.split(key, n_envs), params)
    t0 = time.perf_counter()
    jax.block_until_ready(rollout(key, state))
    t_compile = time.perf_counter() - t0
    best = float("inf")
    for i in range(repeats):
        t0 = time.perf_counter()
        state, totals = rollout(jax.random.PRNGKey(i + 1), state)
        jax.block_until_ready(totals)
        best = min(best, time.perf_counter() - t0)
    return t_compile, n_envs * steps / best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=100_000)
    ap.add_argument("--envs", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-features", action="store_true")
    args = ap.parse_args()

    dev = jax.devices()[0]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; "
        f"JAX {jax.__version__} on {dev.platform} ({dev.device_kind})"
    )
    print()
    print("| benchmark | size | result |")
    print("|---|---|---|")
    if not args.skip_features:
        t_gen, t_feat = bench_features(args.bars, args.repeats)
        print(f"| synthetic_bars | {args.bars} bars | {t_gen:.2f} s |")
        print(
            f"| compute_features (one thread, best of {args.repeats}) | {args.bars} bars | "
            f"{t_feat:.2f} s |"
        )
    t_compile, sps = bench_env(args.envs, args.steps, args.repeats)
    print(
        f"| env compile (jit of vmap, scan of {args.steps} steps) | {args.envs} envs | "
        f"{t_compile:.1f} s |"
    )
    print(
        f"| env steps/s, random policy, {dev.platform} | {args.envs} envs x {args.steps} steps "
        f"| {sps:,.0f} |"
    )


if __name__ == "__main__":
    main()
