"""Choosing a learner on planted files, on validation bars only (issue 31, item 3).

One planted development file (``--file``, fetched as ``benchmarks/learning.py`` does; default
backtesting.py's daily GOOG, which the planted benchmark's default grid does not use) is laid
out as one walk-forward fold without its test: train on the first 60% of the bars, validate on
the next 20% after a purge of ``window + 1`` bars; the last 20% is never read. The edge is
planted at the strength whose oracle net active IR over the whole file is ``--target``
(``benchmarks/planted.py``'s calibration), or at ``--strength``.

The seeds train as one vmapped program (``MAPPO.run`` in ``--chunks`` pieces). After each
piece, each seed's greedy policy runs over the validation bars, and the line shows its net
active IR against buy-and-hold, its capture (over the oracle's on the same bars), turnover,
the correlation of its position with the planted signal ``s`` (timing: a policy holding one
sign per span has none), its actors' mean entropy (uniform: 1.0986) and its mean position
sign. The baselines' figures on the same bars come first, then the linear baseline fitted on
one actor's inputs at a time (what each actor's current features say of the next return).
Below each line: the seeds' mean capture; the ensemble of the seeds (at each bar the mean of
their positions, scored with the same costs); and, under target actions without
``env.observe_position``, the expected vote (each actor's probability of long less its
probability of short, averaged over the actors, as the position) and the sampled votes (one
draw per actor and bar, as in training), per seed and as an ensemble. The config's
``ensemble`` is not read: the ``--seeds`` are the members, and both the seeds' mean and their
ensemble are printed.

    python benchmarks/planted_dev.py --set env.action_mode=delta --set training.gamma=0.3
    python benchmarks/planted_dev.py --file bt_eurusd_1h --signal revert --seeds 0,1,2

Time on the 2-core development machine: about 110 s for two seeds of
``configs/real_markets.yaml`` (100 updates), compilation included.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import planted as bench  # noqa: E402  (the planted benchmark beside this file)

DEFAULT_FILE = "bt_goog_1d"
TRAIN_SHARE, VAL_END_SHARE = 0.6, 0.8
BASELINES = ("oracle", "linear", "momentum", "buy_and_hold")


def dev_fold(n_bars: int, window: int, gap: int | None = None):
    """The development layout: train on ``[0, 0.6 n)``, validate on ``[0.6 n + gap, 0.8 n)``
    (``gap`` at least ``window + 1``, its default); the test range after it is never
    evaluated."""
    from marl_jax.walkforward.folds import Fold

    gap = window + 1 if gap is None else max(gap, window + 1)
    train_stop = int(TRAIN_SHARE * n_bars)
    val = (train_stop + gap, int(VAL_END_SHARE * n_bars))
    return Fold(0, (0, train_stop), val, (val[1] + gap, n_bars))


def scores(run, signal: np.ndarray, oracle_ir: float) -> dict[str, float]:
    """A validation run's net active IR, capture, turnover, correlation with ``s`` and mean
    position sign."""
    positions = np.asarray(run.positions, dtype=np.float64)
    s = signal[np.asarray(run.bar_index)]
    corr = float(np.corrcoef(positions, s)[0, 1]) if positions.std() > 0 else 0.0
    ir = float(run.metrics["active_ir"])
    return {
        "active_ir": ir,
        "capture": ir / oracle_ir if oracle_ir > 0 else float("nan"),
        "turnover": float(run.metrics["turnover"]),
        "corr": corr,
        "sign": float(np.mean(np.sign(positions))),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", default=DEFAULT_FILE, choices=sorted(bench.SOURCES))
    ap.add_argument("--signal", default="trend", choices=bench._signals())
    ap.add_argument("--target", type=float, default=2.0, help="oracle IR to calibrate to")
    ap.add_argument("--strength", type=float, default=None, help="instead of --target")
    ap.add_argument("--config", default=bench.DEFAULT_CONFIG)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument(
        "--gap",
        type=int,
        default=None,
        help="purge bars between train and validation (default and least: window + 1); "
        "fixes the validation bars when the window changes",
    )
    ap.add_argument("--chunks", type=int, default=4, help="validation reads during training")
    ap.add_argument("--cache", default=bench.learning.DEFAULT_CACHE)
    ap.add_argument(
        "--fit-batch-stats",
        action="store_true",
        help="an experiment: set the actors' BatchNorm running statistics (MLMI's convolutions) "
        "to the train span's before training",
    )
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from marl_jax.config import load_config
    from marl_jax.env import evaluate, market
    from marl_jax.env.data import load_bars
    from marl_jax.env.features import AGENT_FEATURES
    from marl_jax.env.plant import plant
    from marl_jax.mappo import MAPPO
    from marl_jax.walkforward.fold_run import fold_envs, greedy_policy_of

    cfg = load_config(args.config, args.set)
    path = bench.learning.fetch(args.file, Path(os.path.expanduser(args.cache)))
    bars = load_bars(str(path))
    strength = args.strength
    if strength is None:
        strength = bench.calibrate(bars, args.signal, [args.target])[args.target].strength
    planted = plant(bars, args.signal, strength)
    fold = dev_fold(len(bars), cfg.env.window, args.gap)
    envs = fold_envs(cfg, planted.bars, fold, oracle=planted.signal)
    algo = MAPPO(cfg, market.MARKET)
    seeds = [int(x) for x in args.seeds.split(",")]
    keys = jnp.stack([jax.random.key_data(jax.random.PRNGKey(s)) for s in seeds])
    per = cfg.training.num_updates // args.chunks
    init = jax.jit(jax.vmap(lambda k: algo.init(k, envs.train)))
    run = jax.jit(jax.vmap(lambda st: algo.run(st, envs.train, per)))
    policy_of = greedy_policy_of(algo)

    linear = evaluate.LinearBaseline.fit(envs.train)
    base = evaluate.evaluate_baselines(envs.val, seed=0, linear=linear, oracle=planted.signal)
    oracle_ir = float(base["oracle"].metrics["active_ir"])
    print(
        f"{args.file} {args.signal} strength {strength:.4g}: train {fold.train}, "
        f"validation {fold.val}, {cfg.training.num_updates} updates, seeds {seeds}"
    )
    for name in BASELINES:
        b = scores(base[name], planted.signal, oracle_ir)
        print(
            f"  {name:12s} active IR {b['active_ir']:+.2f}  turnover {b['turnover']:.3f}  "
            f"corr {b['corr']:+.2f}"
        )
    for name, (lo, hi) in AGENT_FEATURES.items():
        one = evaluate.LinearBaseline.fit(envs.train, columns=range(lo, hi))
        b = scores(evaluate.simulate(one.positions(envs.val), envs.val), planted.signal, oracle_ir)
        print(
            f"  linear, {name}'s inputs only: active IR {b['active_ir']:+.2f}  "
            f"turnover {b['turnover']:.3f}  corr {b['corr']:+.2f}"
        )
    plain_target = cfg.env.action_mode == "target" and not cfg.env.observe_position
    probs_of = vote_probs(algo, envs.val) if plain_target else None
    actor_votes = greedy_votes(algo, envs.val)
    started = time.monotonic()
    state = init(keys)
    if args.fit_batch_stats:
        state = jax.vmap(fitted_batch_stats(algo, envs.train))(state)
    for chunk in range(args.chunks):
        state, met = run(state)
        cells, greedy, captures = [], [], []
        for i in range(len(seeds)):
            one = jax.tree.map(lambda x, i=i: x[i], state)
            result = evaluate.run_policy(policy_of(one), envs.val, batch_size=256)
            sc = scores(result, planted.signal, oracle_ir)
            ent = float(np.mean([met[f"{a}/entropy"][i, -1] for a in ("mlmi", "nwrqk", "mmd")]))
            cells.append(
                f"IR {sc['active_ir']:+.2f} cap {sc['capture']:+.2f} to {sc['turnover']:.3f} "
                f"corr {sc['corr']:+.2f} H {ent:.2f} sign {sc['sign']:+.2f}"
            )
            greedy.append(result.positions)
            captures.append(sc["capture"])
        elapsed = time.monotonic() - started
        print(
            f"  update {per * (chunk + 1):4d} ({elapsed:4.0f} s): " + " | ".join(cells), flush=True
        )
        lines = {"seeds' mean capture": f"{np.mean(captures):+.2f}"}
        if len(seeds) > 1:
            ens = scores(evaluate.simulate(np.mean(greedy, 0), envs.val), planted.signal, oracle_ir)
            lines["ensemble of the seeds"] = _brief(ens)
        timing, tilt = per_actor(np.asarray(jax.vmap(actor_votes)(state)), planted.signal, envs.val)
        lines["each actor's timing (corr of its greedy vote with s), seeds' mean"] = _per(timing)
        lines["each actor's mean greedy vote, seeds' mean"] = _per(tilt)
        if probs_of is not None:
            probs = np.asarray(jax.vmap(probs_of)(state), dtype=np.float64)
            for label, pos in (
                ("expected vote", expected_positions(probs, envs.val)),
                ("sampled votes", sampled_positions(probs, envs.val)),
            ):
                each = [
                    scores(evaluate.simulate(v, envs.val), planted.signal, oracle_ir) for v in pos
                ]
                lines[f"{label}, seeds' mean capture"] = (
                    f"{np.mean([e['capture'] for e in each]):+.2f} "
                    f"(turnover {np.mean([e['turnover'] for e in each]):.3f})"
                )
                if len(seeds) > 1:
                    ens = evaluate.simulate(pos.mean(0), envs.val)
                    lines[f"{label}, ensemble"] = _brief(scores(ens, planted.signal, oracle_ir))
        for name, text in lines.items():
            print(f"    {name}: {text}", flush=True)
    return 0


def _brief(sc: dict[str, float]) -> str:
    return f"cap {sc['capture']:+.2f} corr {sc['corr']:+.2f} to {sc['turnover']:.3f}"


def fitted_batch_stats(algo, params, passes: int = 60):
    """``fit(state)``: ``state`` with every actor's BatchNorm running statistics moved to those
    of the observations at every train bar of ``params`` (``passes`` momentum-0.1 updates, as
    the original's train mode makes them). The trainer runs the models in eval mode, where
    these statistics never change, so without this MLMI's BatchNorm stays the identity."""
    import jax

    from marl_jax.agents import AGENT_NAMES
    from marl_jax.env import market
    from marl_jax.env.evaluate import eval_bars

    obs = market.observations(params, eval_bars(params))

    def fit(state):
        constants = dict(state.constants)
        for name in AGENT_NAMES:
            stats = constants[name].get("batch_stats")
            if not stats:
                continue
            for i in range(passes):
                variables = {**algo.variables(state, name), "batch_stats": stats}
                _, new = algo.modules[name].apply(
                    variables,
                    obs[name],
                    train=True,
                    deterministic=True,
                    attention_weights=False,
                    mutable=["batch_stats"],
                    rngs={"dropout": jax.random.key(i)},
                )
                stats = new["batch_stats"]
            constants[name] = {**constants[name], "batch_stats": stats}
        return state.replace(constants=constants)

    return fit


def _per(values: np.ndarray) -> str:
    from marl_jax.agents import AGENT_NAMES

    return ", ".join(f"{n} {v:+.2f}" for n, v in zip(AGENT_NAMES, values, strict=True))


def greedy_votes(algo, params):
    """``votes(state)``: each actor's greedy vote in {-1, 0, 1} ``(N, 3)`` at each evaluation
    bar of ``params`` (seen from a flat book under ``env.observe_position``)."""
    import jax

    from marl_jax.env import market
    from marl_jax.env.evaluate import eval_bars

    obs = market.observations(params, eval_bars(params))
    return jax.jit(lambda state: algo.act(state, obs)[0] - 1)


def per_actor(votes: np.ndarray, signal: np.ndarray, params) -> tuple[np.ndarray, np.ndarray]:
    """Each actor's timing (the correlation of its votes with ``s``; 0 for a constant vote)
    and mean vote, averaged over the seeds of ``votes`` ``(seeds, N, 3)``."""
    from marl_jax.env.evaluate import eval_bars

    s = signal[eval_bars(params)]
    corr = np.zeros(votes.shape[::2])
    for k in np.ndindex(*corr.shape):
        v = votes[k[0], :, k[1]].astype(np.float64)
        corr[k] = np.corrcoef(v, s)[0, 1] if v.std() > 0 else 0.0
    return corr.mean(0), votes.mean(axis=(0, 1))


def vote_probs(algo, params):
    """``probs(state)``: each actor's action probabilities (short, flat, long) at each
    evaluation bar of ``params``, ``(3 actors, N, 3)``."""
    import jax
    import jax.numpy as jnp

    from marl_jax.agents import AGENT_NAMES
    from marl_jax.env import market
    from marl_jax.env.evaluate import eval_bars

    obs = market.observations(params, eval_bars(params))

    def probs(state):
        return jnp.stack(
            [
                algo.team.apply(
                    name,
                    algo.variables(state, name),
                    obs[name],
                    deterministic=True,
                    attention_weights=False,
                )["action_probs"]
                for name in AGENT_NAMES
            ]
        )

    return jax.jit(probs)


def expected_positions(probs: np.ndarray, params) -> np.ndarray:
    """The mean over the actors of their probability of long less their probability of short
    (the position the sampled votes take on average), under target actions and fixed sizing;
    ``probs`` ``(..., 3 actors, N, 3)``."""
    from marl_jax.env.evaluate import eval_bars

    ts = eval_bars(params)
    return (probs[..., 2] - probs[..., 0]).mean(axis=-2) * np.asarray(params.vol_scale)[ts]


def sampled_positions(probs: np.ndarray, params, seed: int = 0) -> np.ndarray:
    """Positions of votes drawn from ``probs`` ``(..., 3 actors, N, 3)``, one draw per actor
    and bar (the stochastic policy as it trains), under target actions and fixed sizing."""
    from marl_jax.env.evaluate import eval_bars

    rng = np.random.default_rng(seed)
    cum = np.cumsum(probs, axis=-1)
    u = rng.random(probs.shape[:-1] + (1,))
    votes = (u > cum[..., :2]).sum(axis=-1) - 1
    ts = eval_bars(params)
    return votes.mean(axis=-2) * np.asarray(params.vol_scale)[ts]


if __name__ == "__main__":
    raise SystemExit(main())
