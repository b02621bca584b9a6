"""MAPPO training throughput: environment steps per second of the jitted update loop.

Times ``--updates`` updates after a compiled warm-up chunk of the same size (so compile time
is reported separately), for a config and optional ``--set`` overrides.

    python benchmarks/train.py --config configs/quickstart.yaml --updates 10
    python benchmarks/train.py --config configs/strategic_marl_v1.yaml --set training.num_envs=256
"""

from __future__ import annotations

import argparse
import time

import jax

from marl_jax.config import load_config
from marl_jax.mappo import MAPPO
from marl_jax.run.setup import env_params_for, load_market


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--updates", type=int, default=10)
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    bars = load_market(cfg)
    params = env_params_for(cfg, bars, "train", None)
    algo = MAPPO(cfg)
    state = jax.jit(algo.init)(jax.random.key(0), params)
    run = jax.jit(algo.run, static_argnums=2)
    start = time.perf_counter()
    state, _ = run(state, params, args.updates)
    jax.block_until_ready(state)
    first = time.perf_counter() - start
    start = time.perf_counter()
    state, metrics = run(state, params, args.updates)
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start
    t = cfg.training
    steps = args.updates * t.num_envs * t.rollout_len
    print(
        f"{args.config} {' '.join(args.set)} on {jax.devices()[0].platform}: "
        f"{t.num_envs} envs x {t.rollout_len} steps, {t.update_epochs} epochs x "
        f"{t.num_minibatches} minibatches; compile+first chunk {first:.1f} s; "
        f"{args.updates} updates in {elapsed:.2f} s = {steps / elapsed:,.0f} env steps/s "
        f"({elapsed / args.updates * 1e3:.0f} ms/update)"
    )


if __name__ == "__main__":
    main()
