"""The original system's API over the run layer: ``MAPPOTrainer`` and ``CheckpointManager``.

``MAPPOTrainer(config["training"])`` keeps the original training loop's method names
(``collect_experience``, ``update_agents``, ``save_checkpoint``) over the pure functions of
:mod:`marl_jax.mappo`; ``CheckpointManager`` keeps the original checkpoint class's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from flax import struct

from marl_jax.agents import MODEL_NAMES
from marl_jax.config import Config, config_from_dict, config_to_dict
from marl_jax.env import market
from marl_jax.mappo import MAPPO, TrainState, Transition
from marl_jax.run.checkpointer import TrainCheckpointer

__all__ = ["CheckpointManager", "Experience", "MAPPOTrainer"]


@struct.dataclass
class Experience:
    """What :meth:`MAPPOTrainer.collect_experience` returns: a rollout and its market."""

    transitions: Transition
    env_params: market.EnvParams


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
            metrics=metrics,
            is_best=is_best,
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
        state, metrics = self._ckpt.restore(step)
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


class MAPPOTrainer:
    """The original's training-loop API over the pure functions of :class:`MAPPO`.

    ``MAPPOTrainer(config['training'])`` takes the original's ``training`` section (a dict or
    a :class:`~marl_jax.config.TrainingConfig`); ``checkpoint`` is the config's ``checkpoint``
    section (folder, how many to keep, the metric that ranks them), and ``checkpoint_dir``
    overrides its folder; ``env`` in :meth:`collect_experience` is a
    :class:`~marl_jax.env.market.EnvParams`. ``init`` maps model name to Flax variables to
    start from (e.g. ``load_pt_checkpoint(...)``'s agents and critic).
    """

    def __init__(
        self,
        training: Mapping[str, Any] | Any,
        *,
        agents: Mapping[str, Mapping[str, Any]] | None = None,
        critic: Mapping[str, Any] | None = None,
        checkpoint_dir: str | None = None,
        checkpoint: Mapping[str, Any] | None = None,
        seed: int = 0,
        init: Mapping[str, Mapping] | None = None,
    ):
        if not isinstance(training, Mapping):
            training = config_to_dict(Config(training=training))["training"]
        checkpoint_section = dict(checkpoint or {})
        if checkpoint_dir is not None:
            checkpoint_section["dir"] = str(checkpoint_dir)
        data = {"training": dict(training), "seed": seed, "checkpoint": checkpoint_section}
        if agents is not None:
            data["agents"] = {name: dict(cfg) for name, cfg in agents.items()}
        if critic is not None:
            data["critic"] = dict(critic)
        self.config = config_from_dict(data, source="MAPPOTrainer(training=...)")
        self.algo = MAPPO(self.config, market.MARKET)
        self.state: TrainState | None = None
        self._init = init
        self._rollout = jax.jit(self.algo.rollout, static_argnums=2)
        self._learn = jax.jit(self.algo.learn)
        k = self.config.checkpoint
        self.checkpoints = CheckpointManager(
            k.dir, max_checkpoints=k.max_to_keep, best_metric=k.best_metric
        )
        self._best = -float("inf")

    def collect_experience(self, env: market.EnvParams, n_steps: int) -> Experience:
        """Runs the agents in ``num_envs`` copies of ``env`` for ``n_steps`` steps."""
        if self.state is None:
            self.state = jax.jit(self.algo.init)(jax.random.key(self.config.seed), env, self._init)
        self.state, traj = self._rollout(self.state, env, int(n_steps))
        return Experience(transitions=traj, env_params=env)

    def update_agents(self, experiences: Experience) -> dict[str, float]:
        """GAE and PPO epochs on the collected experience; returns the metrics."""
        if self.state is None:
            raise RuntimeError("update_agents: call collect_experience first")
        self.state, metrics = self._learn(
            self.state, experiences.transitions, experiences.env_params
        )
        metrics = {**metrics, **self.algo.rollout_metrics(experiences.transitions)}
        return {name: float(value) for name, value in metrics.items()}

    def variables(self) -> dict[str, dict]:
        """Flax variables of the actors and the critic, by model name."""
        if self.state is None:
            raise RuntimeError("no training state yet: call collect_experience first")
        return {name: self.algo.variables(self.state, name) for name in MODEL_NAMES}

    def save_checkpoint(self, metrics: Mapping[str, float]) -> str:
        """Saves the models and metrics (Orbax); the best by ``checkpoint.best_metric`` is kept."""
        if self.state is None:
            raise RuntimeError("no training state yet: call collect_experience first")
        variables = self.algo.model_variables(self.state)
        score = float(metrics.get(self.config.checkpoint.best_metric, -float("inf")))
        is_best = score > self._best
        self._best = max(self._best, score)
        return self.checkpoints.save_checkpoint(
            agents=variables["agents"],
            critic=variables["critic"],
            metrics=dict(metrics),
            is_best=is_best,
        )
