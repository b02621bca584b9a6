"""The training loop: one jitted update at a time, checkpoints, ``metrics.jsonl``, the progress
bar, TensorBoard, and the stop on a non-finite metric.

Updates are dispatched one by one rather than as a ``lax.scan`` over updates: on the CPU an
XLA while loop around a full-size update costs about half an update again
(``benchmarks/RESULTS.md``), while the dispatch from Python costs nothing in comparison.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from marl_jax.config import config_to_dict, config_yaml
from marl_jax.mappo import TrainState
from marl_jax.run.checkpointer import TrainCheckpointer
from marl_jax.run.files import atomic_write_text
from marl_jax.run.rundir import RunError
from marl_jax.run.setup import Run
from marl_jax.run.steps import restore_state, save_step

__all__ = ["read_metrics_log", "to_floats", "train_loop"]


def read_metrics_log(path: Path, up_to: int | None = None) -> list[dict]:
    """Records of ``metrics.jsonl`` (those with ``update <= up_to`` when given)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill: everything after it is unreliable
        if up_to is None or row.get("update", 0) <= up_to:
            rows.append(row)
    return rows


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """One update's metrics as Python floats."""
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="update", dynamic_ncols=True)


def _tensorboard_writer(path: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise RunError(
            "--tensorboard needs tensorboardX: pip install 'marl-jax[tensorboard]'"
        ) from None
    return SummaryWriter(str(path))


def _checkpointer(run: Run) -> TrainCheckpointer:
    k = run.cfg.checkpoint
    return TrainCheckpointer(
        run.dir.checkpoints, max_to_keep=k.max_to_keep, best_metric=k.best_metric, save_every=1
    )


def train_loop(run: Run, resume: bool, progress: bool, tensorboard: bool) -> TrainState:
    """Trains ``run`` to its configured number of updates (continuing the latest checkpoint
    when ``resume``); checkpoints every ``checkpoint.save_every`` updates and at the end."""
    cfg, algo = run.cfg, run.algo
    save_every = cfg.checkpoint.save_every
    total = algo.num_updates
    steps_per_update = cfg.training.num_envs * cfg.training.rollout_len
    checkpointer = _checkpointer(run)
    init_fn = jax.jit(algo.init)
    rng = jax.random.key(cfg.seed)
    metrics_path = run.dir.metrics
    if resume and checkpointer.latest_step() is not None:
        target = jax.eval_shape(init_fn, rng, run.train_params, run.init)
        state, _ = restore_state(checkpointer, algo, target)
        rows = read_metrics_log(metrics_path, up_to=int(state.update_step))
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
    else:
        state = init_fn(rng, run.train_params, run.init)
        atomic_write_text(metrics_path, "")
    atomic_write_text(run.dir.config, config_yaml(cfg))

    update = jax.jit(algo.update)
    writer = _tensorboard_writer(run.dir.tensorboard) if tensorboard else None
    bar = _progress(total, int(state.update_step), progress)
    config_dict = config_to_dict(cfg)
    last_good = checkpointer.latest_step()
    since_save: list[dict] = []
    if progress and int(state.update_step) < total:
        print("compiling the update (or loading it from the compilation cache)...", flush=True)
    try:
        while int(state.update_step) < total:
            started = time.perf_counter()
            new_state, metrics = update(state, run.train_params)
            jax.block_until_ready(new_state)
            elapsed = time.perf_counter() - started
            step = int(new_state.update_step)
            row = {"update": step, **to_floats(metrics)}
            bad = sorted(k for k, v in row.items() if not math.isfinite(v))
            if bad:
                where = (
                    f"the last good checkpoint is step {last_good} in "
                    f"{run.dir.checkpoints / str(last_good)}"
                    if last_good is not None
                    else "no checkpoint was written yet"
                )
                raise RunError(
                    f"non-finite {bad[0]} in update {step}; stopped, {where}. Lower the "
                    "learning rates or check the data"
                )
            state = new_state
            row["env_steps"] = step * steps_per_update
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            if writer is not None:
                for key, value in row.items():
                    writer.add_scalar(key, value, step)
            since_save.append(row)
            if step % save_every == 0 or step == total:
                means = {
                    k: float(np.mean([r[k] for r in since_save]))
                    for k in since_save[0]
                    if k != "update"
                }
                save_step(
                    checkpointer,
                    algo,
                    state,
                    config=config_dict,
                    norm=run.norm,
                    metrics={**means, "update": step},
                )
                last_good, since_save = step, []
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    env_steps=f"{step * steps_per_update:,}",
                    sps=f"{steps_per_update / elapsed:,.0f}",
                    avg_reward=f"{row['average_reward'] * 1e4:+.2f}bp",
                )
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        checkpointer.close()
    return state
