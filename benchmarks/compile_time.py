"""Compile and run time of one config's whole training program (``jax.jit(train)``).

Lowers the program, compiles it, then runs it once, and prints the seconds of each and the
number of fused kernels XLA made (the compile time grows with it on a CPU).

    python benchmarks/compile_time.py --config configs/quickstart.yaml
    python benchmarks/compile_time.py --config configs/quickstart.yaml --set env.window=8 \\
        --set training.num_envs=4 --set training.rollout_len=8 --set training.total_timesteps=64
"""

from __future__ import annotations

import argparse
import re
import time

import jax

from marl_jax.config import load_config
from marl_jax.env import market
from marl_jax.mappo import MAPPO
from marl_jax.run.setup import env_params_for, load_market


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    bars = load_market(cfg)
    algo, env_params = MAPPO(cfg, market.MARKET), env_params_for(cfg, bars, "train", None)

    def train(key):
        return algo.train(key, env_params)

    key = jax.random.key(cfg.seed)
    start = time.perf_counter()
    lowered = jax.jit(train).lower(key)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    jax.block_until_ready(compiled(key))
    ran_at = time.perf_counter()
    kernels = len(re.findall(r"\bfusion\(", compiled.as_text()))
    print(
        f"{args.config} {' '.join(args.set)}: lower {lowered_at - start:.1f} s, compile "
        f"{compiled_at - lowered_at:.1f} s ({kernels} fused kernels), run "
        f"{ran_at - compiled_at:.1f} s ({cfg.training.num_updates} updates)"
    )


if __name__ == "__main__":
    main()
