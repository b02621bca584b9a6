"""A whole training run as one library call: prepare, train, report, export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from marl_jax.mappo import TrainState
from marl_jax.run import loop, report
from marl_jax.run.setup import Run, RunSpec, prepare
from marl_jax.run.tracking import NO_TRACKER, Tracker

__all__ = ["RunResult", "train_run"]


@dataclasses.dataclass
class RunResult:
    """What a finished run leaves: its resolved run, final state, report and ``.pt`` path."""

    run: Run
    state: TrainState
    report: dict
    exported: Path | None


def train_run(
    spec: RunSpec,
    *,
    progress: bool = True,
    tensorboard: bool = False,
    tracker: Tracker = NO_TRACKER,
) -> RunResult:
    """Trains the run ``spec`` asks for (see :class:`RunSpec`) and writes all its outputs;
    each update's metrics also go to ``tracker`` (started and ended by the caller).

    The run directory is locked for the duration; errors are :class:`~marl_jax.errors.
    MarlJaxError` with one-line messages.
    """
    run = prepare(spec)
    try:
        state = loop.train_loop(run, spec.resume, progress, tensorboard, tracker)
        config = str(run.dir.config) if spec.resume else spec.config
        result = report.write_report(run, state, config)
        exported = report.export_pt(run.dir.export_pt, run.algo, state, run.norms)
    finally:
        run.lock.release()
    return RunResult(run, state, result, exported)
