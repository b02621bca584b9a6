"""The chunked training loop: jitted chunks of updates, checkpoints, ``metrics.jsonl``, the
progress bar, TensorBoard, and the stop on a non-finite metric."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from marl_jax.config import config_to_dict, save_config
from marl_jax.mappo import TrainState
from marl_jax.run.checkpointer import TrainCheckpointer
from marl_jax.run.files import atomic_write_text
from marl_jax.run.rundir import RunError
from marl_jax.run.setup import Run
from marl_jax.run.steps import restore_state, save_step

__all__ = ["PROGRESS_EVERY", "read_metrics_log", "to_floats", "train_loop"]

PROGRESS_EVERY = 5  # updates per jitted chunk (a divisor of save_every, for exact resume)


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


def to_floats(metrics: Mapping[str, Any], index: int) -> dict[str, float]:
    """Row ``index`` of metrics stacked over updates, as Python floats."""
    return {k: float(np.asarray(v)[index]) for k, v in metrics.items()}


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
    chunk = math.gcd(save_every, PROGRESS_EVERY)
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
    save_config(cfg, run.dir.config)

    run_chunk = jax.jit(algo.run, static_argnums=2)
    writer = _tensorboard_writer(run.dir.tensorboard) if tensorboard else None
    bar = _progress(total, int(state.update_step), progress)
    config_dict = config_to_dict(cfg)
    last_good = checkpointer.latest_step()
    try:
        while int(state.update_step) < total:
            done = int(state.update_step)
            n = min(chunk - done % chunk, total - done)
            started = time.perf_counter()
            new_state, metrics = run_chunk(state, run.train_params, n)
            jax.block_until_ready(new_state)
            elapsed = time.perf_counter() - started
            rows = [{"update": done + i + 1, **to_floats(metrics, i)} for i in range(n)]
            bad = [k for r in rows for k, v in r.items() if not math.isfinite(v)]
            if bad:
                where = (
                    f"the last good checkpoint is step {last_good} in "
                    f"{run.dir.checkpoints / str(last_good)}"
                    if last_good is not None
                    else "no checkpoint was written yet"
                )
                raise RunError(
                    f"non-finite {sorted(set(bad))[0]} in updates {done + 1}-{done + n}; "
                    f"stopped, {where}. Lower the learning rates or check the data"
                )
            state = new_state
            with metrics_path.open("a") as fh:
                for row in rows:
                    row["env_steps"] = row["update"] * steps_per_update
                    fh.write(json.dumps(row) + "\n")
            if writer is not None:
                for row in rows:
                    for key, value in row.items():
                        writer.add_scalar(key, value, row["update"])
            chunk_metrics = {
                k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "update"
            }
            step = int(state.update_step)
            if step % save_every == 0 or step == total:
                save_step(
                    checkpointer,
                    algo,
                    state,
                    config=config_dict,
                    norm=run.norm,
                    metrics={**chunk_metrics, "update": step},
                )
                last_good = step
            if bar is not None:
                bar.update(n)
                bar.set_postfix(
                    env_steps=f"{step * steps_per_update:,}",
                    sps=f"{n * steps_per_update / elapsed:,.0f}",
                    avg_reward=f"{chunk_metrics['average_reward'] * 1e4:+.2f}bp",
                )
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        checkpointer.close()
    return state
