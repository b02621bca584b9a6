"""Orbax checkpoints of the training state: keep the latest N and the best, resume exactly.

Design: ONE ``orbax.checkpoint.CheckpointManager`` per run directory, using Orbax's own
retention and atomicity, nothing hand-rolled:

- Retention is a ``preservation_policy``: ``AnyPreservationPolicy([LatestN(max_to_keep),
  BestN(n=1)])``. A step survives when it is among the latest ``max_to_keep`` OR it is the
  single best one, so the best checkpoint outlives the rolling window. (The older
  ``max_to_keep``/``best_fn`` options cannot express "latest N plus the best": with
  ``best_fn`` set, ``max_to_keep`` keeps the N best instead of the N latest.)
- The ranking is Orbax's ``best_fn`` over a tiny metrics record that the manager writes
  with each step: ``{"score": metrics[best_metric]}`` (higher is better; a missing or NaN
  metric ranks lowest; ``is_best=True`` ranks +inf so an explicitly flagged save wins).
  ``best_fn`` also gives ``best_step()``.
- Each step folder holds the items ``state`` (the training pytree, ``StandardSave``, exact
  dtypes), ``norm`` (normalisation statistics pytree, ``StandardSave``; omitted when empty)
  and ``meta`` (``JsonSave``: the resolved config and the metrics).
- Atomicity: Orbax writes a step into ``<step>.orbax-checkpoint-tmp-*`` and renames it
  into place only when every item is written (plus a ``commit_success`` marker where renames
  are not atomic). Unfinalised folders are never listed by ``latest_step()``/``all_steps()``
  and are deleted when a manager opens the directory (``cleanup_tmp_directories``).
- Saves are asynchronous by default (the next training chunk overlaps the write);
  ``restore``, ``close`` and the original-style API wait for pending writes first.

``CheckpointManager`` on top reproduces the original PyTorch system's class
(``save_checkpoint(agents, critic, metrics, is_best)``, ``load_best_checkpoint()``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

__all__ = ["CheckpointManager", "TrainCheckpointer"]

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


def _rank(tracked: Mapping[str, Any]) -> float:
    return float(tracked.get(_SCORE, -math.inf))


class TrainCheckpointer:
    """Orbax checkpoints of a training-state pytree plus config, norm statistics and metrics.

    Args:
        directory: the run's checkpoint folder (created if missing).
        max_to_keep: how many of the latest steps to keep (the best step is kept besides).
        best_metric: key of ``metrics`` that ranks checkpoints; higher is better.
        save_every: ``save`` only writes steps that are multiples of this (``force=True``
            writes any step, e.g. the final one).
        async_save: write in a background thread (call ``wait_until_finished`` or
            ``close`` before reading the files from another process).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_to_keep: int = 5,
        best_metric: str = "average_reward",
        save_every: int = 1,
        *,
        async_save: bool = True,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self.best_metric = best_metric
        self.save_every = save_every
        preservation = ocm.AnyPreservationPolicy(
            [
                ocm.LatestN(n=max_to_keep),
                ocm.BestN(get_metric_fn=_rank, reverse=False, n=1),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            best_fn=_rank,
            best_mode="max",
            preservation_policy=preservation,
            save_decision_policy=ocm.FixedIntervalPolicy(save_every),
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # ------------------------------------------------------------------ queries

    def latest_step(self) -> int | None:
        """Newest finalised step, or None. Half-written (tmp) steps are never returned."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """Step with the highest ``best_metric`` (latest flagged ``is_best`` wins), or None."""
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_path(self, step: int) -> Path:
        return self.directory / str(step)

    def should_save(self, step: int) -> bool:
        return self._manager.should_save(step)

    # ------------------------------------------------------------------ save / restore

    def save(
        self,
        step: int,
        state_pytree: Any,
        *,
        config: Mapping[str, Any],
        norm: Any,
        metrics: Mapping[str, Any],
        is_best: bool = False,
        force: bool = False,
    ) -> bool:
        """Save ``step`` (if ``step % save_every == 0`` or ``force``); returns whether it did.

        ``state_pytree`` and ``norm`` are pytrees of arrays/scalars saved with their exact
        dtypes; ``config`` and ``metrics`` must be JSON-like (arrays become numbers/lists).
        """
        metrics_json = _to_json(dict(metrics))
        items: dict[str, Any] = {
            "state": ocp.args.StandardSave(state_pytree),
            "meta": ocp.args.JsonSave(
                {
                    "config": _to_json(dict(config)),
                    "metrics": metrics_json,
                    "has_norm": bool(jax.tree.leaves(norm)),
                }
            ),
        }
        if jax.tree.leaves(norm):
            items["norm"] = ocp.args.StandardSave(norm)
        tracked = {_SCORE: _score(metrics_json, self.best_metric, is_best)}
        return self._manager.save(
            step, args=ocp.args.Composite(**items), metrics=tracked, force=force
        )

    def restore(
        self,
        step: int | None = None,
        target: Any = None,
        *,
        norm_target: Any = None,
    ) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
        """Restore ``(state, config, norm, metrics)`` of ``step`` (default: the latest).

        ``target`` (concrete arrays or ``jax.ShapeDtypeStruct`` leaves) gives the tree
        structure, dtypes and placement of the state; without it, dicts and lists come
        back as saved with JAX arrays as leaves. ``norm`` is ``{}`` when none was saved.
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
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]
        items: dict[str, Any] = {"state": ocp.args.StandardRestore(target)}
        if meta.get("has_norm", False):
            items["norm"] = ocp.args.StandardRestore(norm_target)
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        norm = out["norm"] if meta.get("has_norm", False) else {}
        return out["state"], meta["config"], norm, meta["metrics"]

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


class CheckpointManager:
    """The original system's checkpoint API, stored as Orbax checkpoints.

    ``save_checkpoint`` writes a new step (0, 1, 2, ... continuing after any existing
    steps) holding ``{"agents": {name: variables}, "critic": variables}`` and the metrics.
    The latest ``max_checkpoints`` are kept, plus the best: the latest save flagged
    ``is_best=True`` if any, else the highest ``metrics[best_metric]``.
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str],
        max_checkpoints: int = 5,
        best_metric: str = "average_reward",
    ):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.max_checkpoints = max_checkpoints
        self.best_metric = best_metric
        self._ckpt = TrainCheckpointer(
            checkpoint_dir, max_to_keep=max_checkpoints, best_metric=best_metric, async_save=False
        )

    def save_checkpoint(
        self,
        agents: Mapping[str, Any],
        critic: Any,
        metrics: Mapping[str, Any],
        is_best: bool = False,
    ) -> str:
        """Save the agents' and critic's Flax variables; returns the step folder path."""
        latest = self._ckpt.latest_step()
        step = 0 if latest is None else latest + 1
        state = {"agents": dict(agents), "critic": critic}
        self._ckpt.save(
            step,
            state,
            config={"best_metric": self.best_metric, "is_best": is_best},
            norm={},
            metrics=metrics,
            is_best=is_best,
            force=True,
        )
        self._ckpt.wait_until_finished()
        return str(self._ckpt.step_path(step))

    def load_best_checkpoint(self) -> dict[str, Any] | None:
        """``{"agents", "critic", "metrics", "step"}`` of the best checkpoint, or None."""
        step = self._ckpt.best_step()
        if step is None:
            return None
        return self.load_checkpoint(step)

    def load_checkpoint(self, step: int | None = None) -> dict[str, Any]:
        """Like ``load_best_checkpoint`` for a given step (default: the latest)."""
        state, _, _, metrics = self._ckpt.restore(step)
        if step is None:
            step = self._ckpt.latest_step()
        return {
            "agents": state["agents"],
            "critic": state["critic"],
            "metrics": metrics,
            "step": step,
        }

    def list_checkpoints(self) -> list[int]:
        return self._ckpt.all_steps()

    def close(self) -> None:
        self._ckpt.close()
