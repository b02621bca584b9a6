"""The training loop: one jitted update at a time, checkpoints, ``metrics.jsonl``, the progress
bar, TensorBoard, and the stop on a non-finite metric.

Updates are dispatched one by one rather than as a ``lax.scan`` over updates: on the CPU an
XLA while loop around a full-size update costs about half an update again
(``benchmarks/RESULTS.md``), while the dispatch from Python costs nothing in comparison.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import numpy as np

from marl_jax.config import config_yaml
from marl_jax.files import atomic_write_text
from marl_jax.mappo import TrainState
from marl_jax.run.checkpointer import TrainCheckpointer
from marl_jax.run.metrics_log import metrics_lines, to_floats, trim_metrics_log
from marl_jax.run.rundir import RunError
from marl_jax.run.setup import Run, data_label
from marl_jax.run.steps import (
    normalisation_metadata,
    restore_state,
    save_step,
    saved_normalisation,
)

__all__ = ["train_loop"]


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
        run.dir.checkpoints, max_to_keep=k.max_to_keep, best_metric=k.best_metric
    )


def _check_normalisation(run: Run, checkpointer: TrainCheckpointer, step: int) -> None:
    """A resume must see the market its checkpoint was trained on: the same normalisation (of
    every instrument, by name)."""
    saved = saved_normalisation(checkpointer, step)
    if saved is None or normalisation_metadata(saved) != normalisation_metadata(run.norms):
        raise RunError(
            f"{data_label(run.cfg)}: its feature normalisation differs from the one checkpoint "
            f"{run.dir.checkpoints / str(step)} was trained with; resume with the data the "
            "run started with, or start a new run"
        )


def train_loop(run: Run, resume: bool, progress: bool, tensorboard: bool) -> TrainState:
    """Trains ``run`` to its configured number of updates (continuing the latest checkpoint
    when ``resume``); checkpoints every ``checkpoint.save_every`` updates and at the end."""
    cfg, algo = run.cfg, run.algo
    save_every = cfg.checkpoint.save_every
    total = algo.num_updates
    steps_per_update = cfg.training.batch_size
    checkpointer = _checkpointer(run)
    init_fn = jax.jit(algo.init)
    rng = jax.random.key(cfg.seed)
    metrics_path = run.dir.metrics
    if resume and checkpointer.latest_step() is not None:
        target = jax.eval_shape(init_fn, rng, run.train_params, run.init)
        state, _ = restore_state(checkpointer, algo, target)
        step = int(state.update_step)
        try:
            _check_normalisation(run, checkpointer, step)
        except RunError:
            checkpointer.close()
            raise
        trim_metrics_log(metrics_path, lambda row: row.get("update", 0) <= step)
    else:
        state = init_fn(rng, run.train_params, run.init)
        atomic_write_text(metrics_path, "")
    atomic_write_text(run.dir.config, config_yaml(cfg))

    update = jax.jit(algo.update)
    writer = _tensorboard_writer(run.dir.tensorboard) if tensorboard else None
    bar = _progress(total, int(state.update_step), progress)
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
                fh.write(metrics_lines([row]))
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
                    norm=run.norms,
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
