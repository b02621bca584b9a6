"""The training loop: one jitted update at a time, checkpoints, ``metrics.jsonl``, the progress
bar, the trackers (:mod:`marl_jax.run.tracking`: TensorBoard, MLflow), and the stop on a
non-finite metric.

Updates are dispatched one by one rather than as a ``lax.scan`` over updates: on the CPU an
XLA while loop around a full-size update costs about half an update again, while the dispatch
from Python costs nothing in comparison.
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
from marl_jax.run.tracking import (
    NO_TRACKER,
    TensorBoardTracker,
    Tracker,
    Trackers,
    log_metrics_log,
    update_metrics,
)

__all__ = ["train_loop"]


def _progress(total: int, initial: int, enabled: bool):
    """A tqdm bar over the updates, or None when ``enabled`` is false."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="update", dynamic_ncols=True)


def _checkpointer(run: Run) -> TrainCheckpointer:
    """The run's checkpointer, configured from its ``checkpoint`` section."""
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


def _start_or_resume(run: Run, resume: bool, checkpointer: TrainCheckpointer) -> TrainState:
    """The latest checkpoint's state with ``metrics.jsonl`` trimmed to it when ``resume`` finds
    one, else a fresh state with an empty ``metrics.jsonl``."""
    algo = run.algo
    init_fn = jax.jit(algo.init)
    rng = jax.random.key(run.cfg.seed)
    if resume and checkpointer.latest_step() is not None:
        target = jax.eval_shape(init_fn, rng, run.train_params, run.init)
        state, _ = restore_state(checkpointer, algo, target)
        step = int(state.update_step)
        try:
            _check_normalisation(run, checkpointer, step)
        except RunError:
            checkpointer.close()
            raise
        trim_metrics_log(run.dir.metrics, lambda row: row.get("update", 0) <= step)
        return state
    state = init_fn(rng, run.train_params, run.init)
    atomic_write_text(run.dir.metrics, "")
    return state


def _timed_update(update, state: TrainState, params) -> tuple[TrainState, dict, float]:
    """One update run to completion: the new state, its metrics and the seconds it took."""
    started = time.perf_counter()
    new_state, metrics = update(state, params)
    jax.block_until_ready(new_state)
    return new_state, metrics, time.perf_counter() - started


def _check_finite(row: dict[str, float], last_good: int | None, checkpoints: Path) -> None:
    """Raise :class:`RunError` naming the first non-finite metric of an update's ``row`` and the
    last good checkpoint."""
    bad = sorted(k for k, v in row.items() if not math.isfinite(v))
    if not bad:
        return
    where = (
        f"the last good checkpoint is step {last_good} in {checkpoints / str(last_good)}"
        if last_good is not None
        else "no checkpoint was written yet"
    )
    raise RunError(
        f"non-finite {bad[0]} in update {row['update']}; stopped, {where}. Lower the "
        "learning rates or check the data"
    )


def _log_row(metrics_path: Path, tracker: Tracker, row: dict[str, float]) -> None:
    """Append one update's ``row`` to ``metrics.jsonl`` and log it to ``tracker``."""
    with metrics_path.open("a") as fh:
        fh.write(metrics_lines([row]))
    tracker.log_metrics(update_metrics(row), step=int(row["update"]))


def _save(
    run: Run, checkpointer: TrainCheckpointer, state: TrainState, rows: list[dict], step: int
) -> None:
    """Checkpoint ``state`` with each metric's mean over ``rows``, the updates since the last
    save."""
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "update"}
    save_step(checkpointer, run.algo, state, norm=run.norms, metrics={**means, "update": step})


def _show_progress(bar, row: dict[str, float], steps_per_update: int, elapsed: float) -> None:
    """Advance the progress bar (if any) by one update, showing env steps, speed and reward."""
    if bar is None:
        return
    bar.update(1)
    bar.set_postfix(
        env_steps=f"{row['update'] * steps_per_update:,}",
        sps=f"{steps_per_update / elapsed:,.0f}",
        avg_reward=f"{row['average_reward'] * 1e4:+.2f}bp",
    )


def train_loop(
    run: Run,
    resume: bool,
    progress: bool,
    tensorboard: bool = False,
    tracker: Tracker = NO_TRACKER,
) -> TrainState:
    """Trains ``run`` to its configured number of updates (continuing the latest checkpoint
    when ``resume``); checkpoints every ``checkpoint.save_every`` updates and at the end.

    Each update's metrics go to ``tracker`` (started by the caller), which first gets those
    of the updates a resume starts after, and, with ``tensorboard``, to ``RUN/tensorboard``.
    """
    cfg = run.cfg
    save_every = cfg.checkpoint.save_every
    total = run.algo.num_updates
    steps_per_update = cfg.training.batch_size
    board = TensorBoardTracker() if tensorboard else NO_TRACKER  # tensorboardX is there
    checkpointer = _checkpointer(run)
    state = _start_or_resume(run, resume, checkpointer)
    atomic_write_text(run.dir.config, config_yaml(cfg))

    update = jax.jit(run.algo.update)
    board.start(run.dir.root.name, run.dir.tensorboard)
    sink = Trackers([tracker, board])
    bar = _progress(total, int(state.update_step), progress)
    last_good = checkpointer.latest_step()
    since_save: list[dict] = []
    if progress and int(state.update_step) < total:
        print("compiling the update (or loading it from the compilation cache)...", flush=True)
    try:
        log_metrics_log(tracker, run.dir.metrics)  # the updates before a resume's checkpoint
        while int(state.update_step) < total:
            new_state, metrics, elapsed = _timed_update(update, state, run.train_params)
            step = int(new_state.update_step)
            row = {"update": step, **to_floats(metrics)}
            _check_finite(row, last_good, run.dir.checkpoints)
            state = new_state
            row["env_steps"] = step * steps_per_update
            _log_row(run.dir.metrics, sink, row)
            since_save.append(row)
            if step % save_every == 0 or step == total:
                _save(run, checkpointer, state, since_save, step)
                last_good, since_save = step, []
            _show_progress(bar, row, steps_per_update, elapsed)
    finally:
        if bar is not None:
            bar.close()
        board.end()
        checkpointer.close()
    return state
