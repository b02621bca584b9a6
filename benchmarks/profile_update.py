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
    from marl_jax.mappo import MAPPO, Batch
    from marl_jax.run.setup import env_params_for, load_market

    cfg = load_config(args.config, args.set)
    params = env_params_for(cfg, load_market(cfg), "train", None)
    algo = MAPPO(cfg)
    state = jax.jit(algo.init)(jax.random.key(cfg.seed), params)

    def median_ms(fn, *xs) -> float:
        jax.block_until_ready(fn(*xs))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*xs))
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    rollout = jax.jit(algo.rollout)
    learn = jax.jit(algo.learn)
    update = jax.jit(algo.update)
    _, traj = rollout(state, params)
    adv, targets, _ = algo.advantages(state, traj)
    flat = jax.tree.map(
        lambda x: x.reshape(-1, *x.shape[2:]),
        Batch(traj.bar, traj.actions, traj.log_probs, traj.value, adv, targets),
    )
    t = cfg.training
    mb = jax.tree.map(lambda x: x[: t.minibatch_size], flat)
    loss = jax.jit(lambda p: algo.loss(p, state.constants, mb, params, state.hparams)[0])
    grad = jax.jit(jax.grad(lambda p: algo.loss(p, state.constants, mb, params, state.hparams)[0]))
    started = time.perf_counter()
    update = update.lower(state, params).compile()
    compile_s = time.perf_counter() - started
    rows = [
        ("update (rollout + learn)", median_ms(update, state, params)),
        (f"rollout ({t.rollout_len} steps x {t.num_envs} envs)", median_ms(rollout, state, params)),
        (
            f"learn ({t.update_epochs} epochs x {t.num_minibatches} minibatches)",
            median_ms(learn, state, traj, params),
        ),
        (f"one minibatch loss, forward ({t.minibatch_size} rows)", median_ms(loss, state.params)),
        (f"one minibatch loss, gradient ({t.minibatch_size} rows)", median_ms(grad, state.params)),
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
