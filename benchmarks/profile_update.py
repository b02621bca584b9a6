"""Where an update's time goes: rollout vs learn, and one minibatch's loss vs its gradient.

Each piece is jitted on its own and timed as the median of ``--repeats`` calls after warm-up.
``--dump DIR`` also writes the optimized HLO of the learn step (``XLA_FLAGS=--xla_dump_to``
is set before JAX starts) for reading which ops it runs.

    python benchmarks/profile_update.py --config configs/quickstart.yaml
    python benchmarks/profile_update.py --config configs/strategic_marl_v1.yaml \\
        --set training.num_envs=16 --set training.rollout_len=8 \\
        --set training.update_epochs=2 --set training.num_minibatches=2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace


def call_ms(fn, *args) -> float:
    """Milliseconds of one call of ``fn``, until its results are ready."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) * 1e3


def median_ms(repeats: int, fn, *args, warmup: int = 1) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        call_ms(fn, *args)
    return statistics.median(call_ms(fn, *args) for _ in range(repeats))


def setup(cfg, rows: int, steps: int | None = None) -> SimpleNamespace:
    """The algorithm, training environment and initial state of ``cfg``, a jitted rollout, its
    trajectory of ``steps`` steps (default the config's) and that trajectory's first ``rows``
    transitions as one learn-step ``minibatch``."""
    import jax

    from marl_jax.env import market
    from marl_jax.mappo import MAPPO
    from marl_jax.run.setup import env_params_for, load_market

    env_params = env_params_for(cfg, load_market(cfg), "train", None)
    algo = MAPPO(cfg, market.MARKET)
    state = jax.jit(algo.init)(jax.random.key(cfg.seed), env_params)
    rollout = jax.jit(algo.rollout, static_argnums=2)
    _, traj = rollout(state, env_params, steps)
    minibatch = jax.tree.map(lambda x: x[:rows], algo.batch(state, traj)[0])
    return SimpleNamespace(
        algo=algo,
        env_params=env_params,
        state=state,
        rollout=rollout,
        traj=traj,
        minibatch=minibatch,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dump", help="folder for XLA's HLO dumps")
    args = ap.parse_args()
    if args.dump:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={args.dump}"

    import jax

    from marl_jax.config import load_config

    cfg = load_config(args.config, args.set)
    t = cfg.training
    s = setup(cfg, t.minibatch_size)
    algo, params, state, mb = s.algo, s.env_params, s.state, s.minibatch
    learn = jax.jit(algo.learn)
    update = jax.jit(algo.update)
    loss = jax.jit(lambda p: algo.loss(p, state.constants, mb, params, state.hparams)[0])
    grad = jax.jit(jax.grad(lambda p: algo.loss(p, state.constants, mb, params, state.hparams)[0]))
    started = time.perf_counter()
    update = update.lower(state, params).compile()
    compile_s = time.perf_counter() - started
    n = args.repeats
    rows = [
        ("update (rollout + learn)", median_ms(n, update, state, params)),
        (
            f"rollout ({t.rollout_len} steps x {t.num_envs} envs)",
            median_ms(n, s.rollout, state, params, None),
        ),
        (
            f"learn ({t.update_epochs} epochs x {t.num_minibatches} minibatches)",
            median_ms(n, learn, state, s.traj, params),
        ),
        (
            f"one minibatch loss, forward ({t.minibatch_size} rows)",
            median_ms(n, loss, state.params),
        ),
        (
            f"one minibatch loss, gradient ({t.minibatch_size} rows)",
            median_ms(n, grad, state.params),
        ),
    ]
    print(
        f"JAX {jax.__version__} on {jax.devices()[0].platform}; {args.config} {' '.join(args.set)}"
    )
    print(f"{'piece':52s} {'ms':>10s}")
    for name, ms in rows:
        print(f"{name:52s} {ms:10.1f}")
    steps = t.update_epochs * t.num_minibatches
    print(f"gradient x {steps} minibatch steps = {rows[-1][1] * steps:.0f} ms of the learn step")
    print(f"compiling the update took {compile_s:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
