"""Orbax checkpoints of the training state: keep the latest N (and the best), resume exactly.

Design: ONE ``orbax.checkpoint.CheckpointManager`` per run directory, using Orbax's own
retention and atomicity, nothing hand-rolled:

- Retention is a ``preservation_policy``: ``AnyPreservationPolicy([LatestN(max_to_keep),
  BestN(n=1)])``. A step survives when it is among the latest ``max_to_keep`` OR it is the
  single best one, so the best checkpoint outlives the rolling window. (The older
  ``max_to_keep``/``best_fn`` options cannot express "latest N plus the best": with
  ``best_fn`` set, ``max_to_keep`` keeps the N best instead of the N latest.) Without a
  ``best_metric`` (a sweep: a step holds a whole population, which has no single score)
  there is no best: ``LatestN`` alone.
- The ranking is Orbax's ``best_fn`` over a tiny metrics record that the manager writes
  with each step: ``{"score": metrics[best_metric]}`` (higher is better; a missing or NaN
  metric ranks lowest; ``is_best=True`` ranks +inf so an explicitly flagged save wins).
  ``best_fn`` also gives ``best_step()``.
- Each step folder holds the items ``state`` (the training pytree, ``StandardSave``, exact
  dtypes) and ``meta`` (``JsonSave``: the metrics). A training run also saves the model items
  (``variables``, ``models``; see :mod:`marl_jax.run.modeldir`), so every step is a model
  directory that ``--init-from`` and ``bridge to-pt`` read directly. The config is not saved
  here: the run's ``config.yaml`` (a sweep's ``sweep.yaml``) beside the checkpoints holds it.
- The caller decides which updates to save (``checkpoint.save_every`` and the last one):
  ``save`` writes every step it is given.
- Atomicity: Orbax writes a step into ``<step>.orbax-checkpoint-tmp-*`` and renames it
  into place only when every item is written (plus a ``commit_success`` marker where renames
  are not atomic). Unfinalised folders are never listed by ``latest_step()``/``all_steps()``
  and are deleted when a manager opens the directory (``cleanup_tmp_directories``).
- Saves are asynchronous by default (the next training chunk overlaps the write);
  ``restore``, ``close`` and the original-style API wait for pending writes first.

The original PyTorch system's ``CheckpointManager`` is in :mod:`marl_jax.compat`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

__all__ = ["TrainCheckpointer"]

_SCORE = "score"


def _to_json(x: Any) -> Any:
    """Metrics/config -> JSON-ready Python values (arrays to floats or lists)."""
    if isinstance(x, Mapping):
        return {str(k): _to_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_to_json(v) for v in x]
    if isinstance(x, jax.Array | np.ndarray | np.generic):
        a = np.asarray(x)
        return a.item() if a.ndim == 0 else a.tolist()
    return x


def _score(metrics: Mapping[str, Any], best_metric: str, is_best: bool) -> float:
    if is_best:
        return math.inf
    v = metrics.get(best_metric)
    try:
        v = float(np.asarray(v))
    except (TypeError, ValueError):
        return -math.inf
    return v if not math.isnan(v) else -math.inf


@contextlib.contextmanager
def _quiet_absl(enabled: bool) -> Iterator[None]:
    """Raises the absl logger's level to ERROR for the duration, when ``enabled``."""
    logger = logging.getLogger("absl")
    level = logger.level
    if enabled:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _rank(tracked: Mapping[str, Any]) -> float:
    return float(tracked.get(_SCORE, -math.inf))


class TrainCheckpointer:
    """Orbax checkpoints of a training-state pytree plus its metrics (and any model items).

    Args:
        directory: the run's checkpoint folder (created if missing).
        max_to_keep: how many of the latest steps to keep (the best step is kept besides).
        best_metric: key of ``metrics`` that ranks checkpoints, higher is better; None: no
            best step, only the latest ``max_to_keep``.
        async_save: write in a background thread (call ``wait_until_finished`` or
            ``close`` before reading the files from another process).
        read_only: open an existing folder to read: nothing is created, cleaned or deleted.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_to_keep: int = 5,
        best_metric: str | None = "average_reward",
        *,
        async_save: bool = True,
        read_only: bool = False,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self.best_metric = best_metric
        policies: list[Any] = [ocm.LatestN(n=max_to_keep)]
        if best_metric is not None:
            policies.append(ocm.BestN(get_metric_fn=_rank, reverse=False, n=1))
        options = ocp.CheckpointManagerOptions(
            best_fn=_rank if best_metric is not None else None,
            best_mode="max",
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
        )
        with _quiet_absl(read_only):  # a read-only open warns that it is read-only, twice
            self._manager = ocp.CheckpointManager(self.directory, options=options)

    # ------------------------------------------------------------------ queries

    def latest_step(self) -> int | None:
        """Newest finalised step, or None. Half-written (tmp) steps are never returned."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """Step with the highest ``best_metric`` (latest flagged ``is_best`` wins), or None
        (also without a ``best_metric``)."""
        if self.best_metric is None:
            return None
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_path(self, step: int) -> Path:
        return self.directory / str(step)

    # ------------------------------------------------------------------ save / restore

    def save(
        self,
        step: int,
        state_pytree: Any,
        *,
        metrics: Mapping[str, Any],
        models: Mapping[str, Any] | None = None,
        is_best: bool = False,
    ) -> bool:
        """Saves ``step``; returns whether Orbax wrote it (False for a step already saved).

        ``state_pytree`` is a pytree of arrays/scalars saved with their exact dtypes;
        ``metrics`` must be JSON-like (arrays become numbers/lists). ``models`` are extra Orbax
        items saved in the same step (``modeldir.model_items``).
        """
        metrics_json = _to_json(dict(metrics))
        items: dict[str, Any] = {
            "state": ocp.args.StandardSave(state_pytree),
            "meta": ocp.args.JsonSave({"metrics": metrics_json}),
            **(models or {}),
        }
        tracked = None
        if self.best_metric is not None:
            tracked = {_SCORE: _score(metrics_json, self.best_metric, is_best)}
        return self._manager.save(
            step, args=ocp.args.Composite(**items), metrics=tracked, force=True
        )

    def restore(
        self,
        step: int | None = None,
        target: Any = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Restore ``(state, metrics)`` of ``step`` (default: the latest).

        ``target`` (concrete arrays or ``jax.ShapeDtypeStruct`` leaves) gives the tree
        structure, dtypes and placement of the state; without it, dicts and lists come
        back as saved with JAX arrays as leaves.
        """
        self.wait_until_finished()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
        elif step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; have {self.all_steps()}"
            )
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
        )
        out = self._manager.restore(step, args=args)
        return out["state"], out["meta"]["metrics"]

    def restore_item(
        self, step: int, name: str, target: Any = None, *, on_host: bool = False
    ) -> Any:
        """One pytree item (e.g. ``variables``) of ``step``, shaped like ``target`` if given.

        ``on_host=True`` (without ``target``) reads whole NumPy arrays, whatever devices the
        step was saved from."""
        self.wait_until_finished()
        if target is None and on_host:
            metadata = ocp.StandardCheckpointHandler().metadata(self.step_path(step) / name)
            target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata.tree)
        args = ocp.args.Composite(**{name: ocp.args.StandardRestore(target)})
        return self._manager.restore(step, args=args)[name]

    def restore_json(self, step: int, name: str) -> Any:
        """One JSON item (saved with ``ocp.args.JsonSave`` among ``models``) of ``step``."""
        self.wait_until_finished()
        args = ocp.args.Composite(**{name: ocp.args.JsonRestore()})
        return self._manager.restore(step, args=args)[name]

    def wait_until_finished(self) -> None:
        """Block until pending asynchronous saves are finalised on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> TrainCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
