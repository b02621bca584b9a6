"""Folds x seeds as one population program, against the walk-forward's fold-by-fold training.

Issue 15 suggests training a walk-forward's folds and seeds as one vmapped program: each
fold's train environment is already padded to the file's length (``walkforward.fold_run``), so
its ``EnvParams`` differ only in array values and can be a vmapped axis. This script lays out
``--folds`` folds of the data as the walk-forward does (expanding windows, its default gap and
validation tail), builds every fold's train environment with the walk-forward's own
``fold_envs``, then trains the ``folds x seeds`` members for ``--updates`` updates two ways:

- **sequential**: one member after another through ``jax.jit(MAPPO.update)``, one compiled
  program for all (what ``python -m marl_jax.walkforward`` runs, one fold at a time);
- **population**: ``jax.jit(jax.vmap(MAPPO.update))`` over all members at once, each with its
  own fold's environment and seed.

It prints the compile time and the time per update of each (after one warm-up update, not
timed), their ratio, and the largest difference between a member's parameters trained the
two ways (vmapping reorders float32 sums, so they agree to rounding, not bit for bit).

    python benchmarks/fold_population.py --config configs/quickstart.yaml --folds 5 --seeds 3
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from marl_jax.config import load_config
from marl_jax.env import market
from marl_jax.env.features import WARMUP_BARS
from marl_jax.errors import cli_main
from marl_jax.mappo import MAPPO
from marl_jax.run.setup import data_overrides, load_market
from marl_jax.walkforward.fold_run import fold_envs
from marl_jax.walkforward.folds import make_folds


def _stack(trees: list) -> object:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _timed(fn, *args) -> tuple[object, float]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input (a missing file, too few bars for the folds) is one line, exit 2."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--data", default=None, help="one bar file (default: the config's market)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--updates", type=int, default=3, help="timed updates after one warm-up")
    args = ap.parse_args(argv)
    return cli_main(lambda: compare(args))


def compare(args: argparse.Namespace) -> int:
    """Trains the members both ways and prints the table."""
    cfg = load_config(args.config, data_overrides(args.data))
    bars = load_market(cfg)
    folds = make_folds(len(bars), args.folds, window=cfg.env.window, warmup=WARMUP_BARS)
    envs = [fold_envs(cfg, bars, fold).train for fold in folds]
    members = [(f, s) for f in range(len(folds)) for s in range(args.seeds)]
    algo = MAPPO(cfg, market.MARKET)
    init = jax.jit(algo.init)
    states = [init(jax.random.key(s), envs[f]) for f, s in members]

    solo = jax.jit(algo.update)
    start = time.perf_counter()
    solo_c = solo.lower(states[0], envs[0]).compile()
    solo_compile = time.perf_counter() - start
    seq_states, seq_time = list(states), 0.0
    for update in range(1 + args.updates):
        for i, (f, _) in enumerate(members):
            (seq_states[i], _), dt = _timed(solo_c, seq_states[i], envs[f])
            seq_time += dt if update else 0.0

    pop_state = _stack(states)
    pop_env = _stack([envs[f] for f, _ in members])
    start = time.perf_counter()
    pop_c = jax.jit(jax.vmap(algo.update)).lower(pop_state, pop_env).compile()
    pop_compile = time.perf_counter() - start
    pop_time = 0.0
    for update in range(1 + args.updates):
        (pop_state, _), dt = _timed(pop_c, pop_state, pop_env)
        pop_time += dt if update else 0.0

    diff = 0.0
    for i in range(len(members)):
        member = jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], pop_state.params))
        for a, b in zip(member, jax.tree.leaves(seq_states[i].params), strict=True):
            diff = max(diff, float(np.max(np.abs(np.asarray(a) - np.asarray(b)))))

    n = len(members)
    steps = cfg.training.num_envs * cfg.training.rollout_len * n * args.updates
    print(f"{len(folds)} folds x {args.seeds} seeds = {n} members, {args.updates} timed updates")
    print("| program | compile s | s per update (all members) | env steps/s |")
    print("|---|---|---|---|")
    for name, comp, total in (
        ("sequential (one member at a time)", solo_compile, seq_time),
        ("population (all members vmapped)", pop_compile, pop_time),
    ):
        print(f"| {name} | {comp:.1f} | {total / args.updates:.2f} | {steps / total:,.0f} |")
    print(f"population / sequential time per update: {pop_time / seq_time:.2f}x")
    print(f"largest |parameter difference| between the two ways: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
