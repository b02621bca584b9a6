"""Does ``training.compute_dtype: bfloat16`` learn as float32 does, over seeds?

Trains ``--config`` (default the quickstart) on its synthetic market once per dtype, the seeds
vmapped in one program, then scores each seed's greedy policy on the test split. A seed
*learns* when its mean reward over the last tenth of the updates exceeds the first tenth's,
its test Sharpe beats the random and flat baselines, and its active information ratio against
buy-and-hold is positive, so that a constant position (a scaled buy-and-hold) does not count.
One run's outcome turns on rounding, the host CPU's included (benchmarks/RESULTS.md,
"bfloat16 compute"), so whole runs are compared over seeds here, not in the test suite.

    python benchmarks/bfloat16_learning.py --seeds 0,1,2,3,4,5   # minutes per dtype on a CPU
    python benchmarks/bfloat16_learning.py --gradients           # + the step-gradient table
    python benchmarks/bfloat16_learning.py --dtypes float32 --require-all-learn

``--gradients`` adds, at each float32 seed's initial and trained state, the cosine and norm
ratio of the two dtypes' gradients on one float32 rollout. ``--require-all-learn`` exits with
status 1 unless every float32 seed learns: the end-to-end claim the learning test made while
it trained in the suite, true on some hosts and not on others.

The learning test (tests/test_learning.py) asserts at states saved with it, the same on every
host; this file writes them and reads them back:

    python benchmarks/bfloat16_learning.py --dtypes float32 --seeds 0,1,2 \\
        --save-states tests/data/quickstart_states.npz
    python benchmarks/bfloat16_learning.py --from-states tests/data/quickstart_states.npz

Both rows are JAX; no PyTorch figure is claimed.
"""

from __future__ import annotations

import argparse
import json
import os
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
from marl_jax.config import Config, config_from_dict, load_config
from marl_jax.env import evaluate, market
from marl_jax.mappo import MAPPO, TrainState, Transition
from marl_jax.run.setup import env_params_for, load_market

# The training state's parts that training changes and a step comparison needs. The rest is
# the seed's initial state: constants (BatchNorm statistics, buffers) and hyperparameters do not
# train (save_states checks), and the optimizer state is left out (a comparison takes no step;
# Adam's moments would double the file).
SAVED_FIELDS = ("params", "value_norm", "env_state", "rng", "update_step")


def make_algo(cfg: Config) -> MAPPO:
    """The MAPPO object for ``cfg``: every construction in this file goes through here."""
    return MAPPO(cfg, market.MARKET)


def initial_states(algo: MAPPO, env_params, seeds: Sequence[int]) -> TrainState:
    """Each seed's fresh training state (leading axis: seed), as its training starts."""
    keys = jax.vmap(jax.random.key)(jnp.array(list(seeds)))
    return jax.jit(jax.vmap(lambda k: algo.init(k, env_params)))(keys)


def train_seeds(
    cfg: Config, env_params, seeds: Sequence[int], compiler_options: dict | None = None
) -> tuple[MAPPO, TrainState, dict[str, np.ndarray], float]:
    """The one place this file trains: ``cfg``'s whole run on ``seeds`` as one vmapped program
    (``compiler_options`` for its ``jax.jit``). Returns the algorithm, the trained states
    (leading axis: seed), the per-update metrics and the seconds it took to compile and run."""
    algo = make_algo(cfg)
    keys = jax.vmap(jax.random.key)(jnp.array(list(seeds)))
    started = time.perf_counter()
    train = jax.vmap(lambda key: algo.train(key, env_params))
    states, metrics = jax.jit(train, compiler_options=compiler_options)(keys)
    metrics = {k: np.asarray(v) for k, v in metrics.items()}
    return algo, states, metrics, time.perf_counter() - started


def score(algo: MAPPO, states: TrainState, test_params) -> dict[str, Any]:
    """Each seed's greedy policy (``states``, leading axis: seed) on the split of
    ``test_params``: its Sharpe, turnover and active information ratio against buy-and-hold,
    and the baselines' Sharpes."""
    act = jax.jit(lambda state, obs: algo.act(state, obs)[0])
    runs = []
    for i in range(jax.tree.leaves(states.rng)[0].shape[0]):
        state = jax.tree.map(lambda x, i=i: x[i], states)
        runs.append(evaluate.run_policy(lambda obs, s=state: np.asarray(act(s, obs)), test_params))
    baselines = evaluate.evaluate_baselines(test_params, seed=0)
    return {
        "sharpe": [float(run.metrics["sharpe"]) for run in runs],
        "turnover": [float(run.metrics["turnover"]) for run in runs],
        "active_ir": [float(run.metrics["active_ir"]) for run in runs],
        "baselines": {k: float(b.metrics["sharpe"]) for k, b in baselines.items()},
    }


def splits(cfg: Config) -> tuple[Any, Any]:
    """``cfg``'s market as the train split's and the test split's EnvParams."""
    bars = load_market(cfg)
    train_params = env_params_for(cfg, bars, "train", None)
    test_params = env_params_for(cfg, bars, "test", market.get_normalisation(train_params))
    return train_params, test_params


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
    train_params, test_params = splits(cfg)
    algo, states, metrics, seconds = train_seeds(cfg, train_params, seeds, compiler_options)
    return {
        "config": cfg,
        "env_params": train_params,
        "initial": initial_states(algo, train_params, seeds),
        "trained": states,
        "metrics": metrics,
        **score(algo, states, test_params),
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
    bars = traj.obs_key.reshape(-1)
    obs = market.observations(env_params, bars)
    actions = traj.actions.reshape(-1, len(AGENT_NAMES))
    variables = {name: algo.variables(state, name) for name in AGENT_NAMES}
    outs = algo.team.actor_outputs(variables, obs, actions)
    log_probs = jnp.stack([outs[name]["log_prob"] for name in AGENT_NAMES], -1)
    critic = algo.variables(state, "critic")
    value = algo.team.critic_value(critic, obs["critic"])
    next_value = algo.team.critic_value(critic, market.observations(env_params, bars + 1)["critic"])
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
    f32 = make_algo(cfg)
    b16 = make_algo(config_from_dict(cfg.model_dump(), ["training.compute_dtype=bfloat16"]))

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


def _flat(tree: Any) -> dict[str, Any]:
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def save_states(result: dict[str, Any], path: str | Path) -> None:
    """Writes a float32 :func:`train_and_score` result's trained states (the
    :data:`SAVED_FIELDS`), the config it ran and a record of the run to ``path`` (``.npz``,
    compressed), atomically. :func:`load_states` reads it back."""
    cfg = result["config"]
    if cfg.training.compute_dtype != "float32":
        raise ValueError("save_states keeps float32 runs")
    initial, trained = result["initial"], result["trained"]
    for field in ("constants", "hparams"):  # not saved: loading takes them from the initial state
        pairs = zip(
            jax.tree.leaves(getattr(initial, field)),
            jax.tree.leaves(getattr(trained, field)),
            strict=True,
        )
        if not all(np.array_equal(a, b) for a, b in pairs):
            raise ValueError(f"training changed the state's {field}: they would not be restored")
    arrays = {
        f"{field}{key}": np.asarray(v)
        for field in SAVED_FIELDS
        for key, v in _flat(getattr(trained, field)).items()
    }
    firsts, lasts = zip(
        *(reward_tenths(r) for r in result["metrics"]["average_reward"]), strict=True
    )
    record = {
        "seeds": result["seeds"],
        "config": cfg.model_dump(mode="json"),
        "written_by": "python benchmarks/bfloat16_learning.py --save-states "
        f"{path} --seeds {','.join(map(str, result['seeds']))}",
        "jax": jax.__version__,
        "host": f"{platform.processor() or platform.machine()}, {jax.default_backend()}",
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "run": {
            "reward_first_tenth": list(firsts),
            "reward_last_tenth": list(lasts),
            "sharpe": result["sharpe"],
            "turnover": result["turnover"],
            "active_ir": result["active_ir"],
            "baselines": result["baselines"],
            "learns": [learns(result, i) for i in range(len(result["seeds"]))],
        },
    }
    arrays["record"] = np.array(json.dumps(record))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_states(path: str | Path) -> dict[str, Any]:
    """The states :func:`save_states` wrote, as a :func:`train_and_score` result (for
    :func:`gradient_agreement` and :func:`score`): the config they ran, its train and test
    splits' EnvParams, the algorithm, the seeds' initial states (recomputed: a fresh state is
    a function of the seed) and their trained states (each seed's initial state with the saved
    fields), and the file's record of the run that wrote them."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    record = json.loads(str(arrays.pop("record")))
    cfg = config_from_dict(record["config"])
    train_params, test_params = splits(cfg)
    algo = make_algo(cfg)
    initial = initial_states(algo, train_params, record["seeds"])
    restored = {}
    for field in SAVED_FIELDS:
        template = getattr(initial, field)
        leaves = []
        for key, like in _flat(template).items():
            name = f"{field}{key}"
            if name not in arrays or arrays[name].shape != like.shape:
                raise ValueError(
                    f"{path}: {name} is missing or of another shape than the code's state; "
                    f"regenerate it ({record['written_by']})"
                )
            leaves.append(jnp.asarray(arrays.pop(name), like.dtype))
        restored[field] = jax.tree.unflatten(jax.tree.structure(template), leaves)
    if arrays:
        raise ValueError(f"{path}: arrays the code's state has no place for: {sorted(arrays)}")
    return {
        "config": cfg,
        "env_params": train_params,
        "test_params": test_params,
        "algo": algo,
        "initial": initial,
        "trained": initial.replace(**restored),
        "seeds": record["seeds"],
        "record": record,
    }


def print_gradients(rows: list[dict[str, Any]]) -> None:
    print("\n| state | seed | model | cosine | norm ratio, bf16/f32 | loss f32 | loss bf16 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['when']} | {r['seed']} | {r['model']} | {r['cosine']:.4f} "
            f"| {r['norm_ratio']:.3f} | {r['float32']['loss']:.4e} "
            f"| {r['bfloat16']['loss']:.4e} |",
            flush=True,
        )
    print(f"lowest cosine {min(r['cosine'] for r in rows):.4f}")


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
    p.add_argument(
        "--require-all-learn",
        action="store_true",
        help="exit with status 1 unless every float32 seed learns (the end-to-end claim the "
        "learning test made until its states were saved: it holds on some hosts, not all)",
    )
    p.add_argument(
        "--save-states",
        metavar="PATH",
        help="write the float32 runs' trained states to PATH (.npz; the learning test's "
        "tests/data/quickstart_states.npz), at the matmul precision the test suite sets",
    )
    p.add_argument(
        "--from-states",
        metavar="PATH",
        help="train nothing: score the greedy policies of the states saved in PATH and print "
        "their step-gradient table (what tests/test_learning.py asserts)",
    )
    args = p.parse_args()
    print(
        f"JAX {jax.__version__} on {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} {jax.default_backend()} device(s); {args.config} {args.set}"
    )
    if args.from_states:
        saved = load_states(args.from_states)
        scores = score(saved["algo"], saved["trained"], saved["test_params"])
        print(f"{args.from_states}: {json.dumps(saved['record']['run'])}")
        print(f"scored here: {json.dumps(scores)}")
        print_gradients(gradient_agreement(saved))
        return
    if args.save_states:
        if "float32" not in args.dtypes.split(","):
            p.error("--save-states needs float32 among --dtypes")
        # As tests/conftest.py sets it for the suite, whose test loads these states.
        jax.config.update("jax_default_matmul_precision", "highest")
    seeds = [int(s) for s in args.seeds.split(",")]
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
    if args.save_states:
        save_states(float32, args.save_states)
        print(f"wrote {args.save_states} ({Path(args.save_states).stat().st_size:,} bytes)")
    if args.gradients:
        if float32 is None:
            p.error("--gradients needs float32 among --dtypes")
        print_gradients(gradient_agreement(float32))
    if args.require_all_learn:
        if float32 is None:
            p.error("--require-all-learn needs float32 among --dtypes")
        failed = [seed for i, seed in enumerate(seeds) if not learns(float32, i)]
        if failed:
            raise SystemExit(f"float32 does not learn on seeds {failed}")


if __name__ == "__main__":
    main()
