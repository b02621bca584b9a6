"""Sweeps: how a population scales with its size, and PBT against a grid of the same compute.

``--scaling 1,2,4,...``: for each population size P (seeds 0..P-1 of the config), the
sharded population program of ``marl_jax.sweep`` on every local device: the update compiled
ahead of time (reported apart), one warm-up update, then ``--updates`` timed updates. Prints
ms per update, env steps/s over the population, and the time per update relative to P=1.

    python benchmarks/sweep.py --config configs/quickstart.yaml --scaling 1,2,4,8,16,32,64

``--pbt-vs-grid``: ``--repeats`` repetitions (config seed r) of two sweeps with the same
members and updates over ``training.actor_lr`` x ``training.ent_coef``: a grid (4 x 2
values) and PBT (8 members drawn from the same ranges, exploit/explore every
``--interval`` updates). Prints the best and the median test-split Sharpe of each.

    python benchmarks/sweep.py --config configs/quickstart.yaml --pbt-vs-grid --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import yaml

from marl_jax.config import load_config
from marl_jax.hparams import HPARAM_NAMES
from marl_jax.run.setup import env_params_for, load_market
from marl_jax.sweep.population import PopulationProgram, member_mesh

GRID_LR = [3e-4, 1e-3, 3e-3, 1e-2]
GRID_ENT = [0.003, 0.03]


def scaling(args, cfg) -> None:
    params = env_params_for(cfg, load_market(cfg), "train", None)
    mesh = member_mesh()
    t = cfg.training
    steps = t.num_envs * t.rollout_len
    device = jax.devices()[0]
    print(
        f"JAX {jax.__version__} on {len(jax.devices())} {device.platform} device(s) "
        f"({device.device_kind}); {args.config}: {t.num_envs} envs x {t.rollout_len} steps, "
        f"{t.update_epochs} epochs x {t.num_minibatches} minibatches; {args.updates} timed "
        "updates after one warm-up update"
    )
    print("| members | compile s | ms/update | env steps/s | time vs 1 member |")
    print("|---|---|---|---|---|")
    base_ms = None
    for size in args.scaling:
        program = PopulationProgram(cfg, params, size, mesh)
        table = {k: np.full(size, float(getattr(t, k)), np.float32) for k in HPARAM_NAMES}
        pop = program.init(np.arange(size), table)
        start = time.perf_counter()
        update = program._update.lower(pop, program.env_params).compile()
        compile_s = time.perf_counter() - start
        pop, _ = update(pop, program.env_params)
        jax.block_until_ready(pop)
        start = time.perf_counter()
        for _ in range(args.updates):
            pop, metrics = update(pop, program.env_params)
        jax.block_until_ready(pop)
        ms = (time.perf_counter() - start) / args.updates * 1e3
        base_ms = base_ms or ms
        print(
            f"| {size} | {compile_s:.1f} | {ms:,.0f} | {size * steps / ms * 1e3:,.0f} "
            f"| {ms / base_ms:.2f}x |",
            flush=True,
        )


def pbt_vs_grid(args) -> None:
    from marl_jax.sweep.options import SweepOptions
    from marl_jax.sweep.spec import load_sweep
    from marl_jax.sweep.sweeper import run_sweep

    lo, hi = GRID_LR[0], GRID_LR[-1]
    sweeps = {
        "grid": {"grid": {"training.actor_lr": GRID_LR, "training.ent_coef": GRID_ENT}},
        "pbt": {
            "strategy": "pbt",
            "random": {
                "training.actor_lr": {"log_uniform": [lo, hi]},
                "training.ent_coef": {"log_uniform": [GRID_ENT[0], GRID_ENT[-1]]},
            },
            "samples": len(GRID_LR) * len(GRID_ENT),
            "pbt": {"interval": args.interval},
        },
    }
    results: dict[str, list[list[float]]] = {name: [] for name in sweeps}
    chosen: dict[str, list[float]] = {name: [] for name in sweeps}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            cfg = load_config(args.config, [*args.set, f"seed={rep}"])
            for name, body in sweeps.items():
                path = Path(tmp) / f"{name}{rep}.yaml"
                body = {**body, "sample_seed": rep} if name == "pbt" else body
                path.write_text(yaml.safe_dump(body))
                start = time.perf_counter()
                rows = run_sweep(
                    cfg,
                    load_sweep(path),
                    SweepOptions(out=Path(tmp) / f"out-{name}{rep}", progress=False),
                )
                sharpes = [r["test"]["sharpe"] for r in rows if r["status"] == "ok"]
                results[name].append(sharpes)
                chosen[name].append(rows[0]["test"]["sharpe"])
                print(
                    f"repeat {rep} {name}: {len(rows)} members in "
                    f"{time.perf_counter() - start:.0f} s; test Sharpe best "
                    f"{max(sharpes):.2f}, median {statistics.median(sharpes):.2f}, "
                    f"of the top-ranked member {rows[0]['test']['sharpe']:.2f}",
                    flush=True,
                )
    print(
        "| strategy | best test Sharpe (per repeat) | median test Sharpe | Sharpe of the member "
        "ranked first by training reward |"
    )
    print("|---|---|---|---|")
    for name, reps in results.items():
        best = ", ".join(f"{max(s):.2f}" for s in reps)
        median = ", ".join(f"{statistics.median(s):.2f}" for s in reps)
        top = ", ".join(f"{s:.2f}" for s in chosen[name])
        print(f"| {name} | {best} | {median} | {top} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument(
        "--scaling", type=lambda s: [int(v) for v in s.split(",")], help="population sizes"
    )
    ap.add_argument("--updates", type=int, default=3, help="timed updates per size")
    ap.add_argument("--pbt-vs-grid", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--interval", type=int, default=10, help="PBT interval (updates)")
    args = ap.parse_args()
    if args.scaling:
        scaling(args, load_config(args.config, args.set))
    if args.pbt_vs_grid:
        pbt_vs_grid(args)


if __name__ == "__main__":
    main()
