"""MAPPO for the three Strategic MARL actors and the centralized critic, as one XLA program.

``make_train(config, env_params)`` returns a pure ``train(rng, init=None, hparams=None)``:
``lax.scan`` over updates; each update is a rollout (``lax.scan`` over ``rollout_len`` steps
of ``num_envs`` vmapped environments), GAE, then ``update_epochs`` x ``num_minibatches``
shuffled minibatch steps. ``jax.vmap(train)`` over rngs (and over :class:`HyperParams`)
runs several seeds or hyperparameter settings in one program.

Training mode rule: rollouts and losses both run the models in **eval mode**
(``train=False``): no dropout, BatchNorm normalises with its running statistics. The
probability ratio then compares like with like (the rollout's log-probabilities are exactly
those the loss recomputes before any update), and the running statistics, which are not
trained, stay those of the loaded or initialised model, valid for export.

Transitions store the bar index, not the observation: the loss rebuilds the observations from
the environment's feature table, so the rollout buffer holds a few numbers per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from marl_jax.config import Config
from marl_jax.env import market
from marl_jax.models.actors import AGENT_ORDER
from marl_jax.models.registry import build_module, init_variables
from marl_jax.ppo import (
    ValueNormState,
    gae,
    normalize_advantages,
    ppo_clip_loss,
    value_loss,
    valuenorm_denormalize,
    valuenorm_init,
    valuenorm_normalize,
    valuenorm_update,
)

Array = jax.Array
MODEL_NAMES = (*AGENT_ORDER, "critic")


@struct.dataclass
class HyperParams:
    """Numeric hyperparameters, traced (so ``jax.vmap`` can sweep them)."""

    actor_lr: Array
    critic_lr: Array
    ent_coef: Array
    clip_eps: Array
    gamma: Array
    gae_lambda: Array
    value_loss_coef: Array

    @classmethod
    def from_config(cls, config: Config) -> HyperParams:
        t = config.training
        return cls(
            **{
                name: jnp.asarray(getattr(t, name), jnp.float32)
                for name in (
                    "actor_lr",
                    "critic_lr",
                    "ent_coef",
                    "clip_eps",
                    "gamma",
                    "gae_lambda",
                    "value_loss_coef",
                )
            }
        )


@struct.dataclass
class TrainState:
    """Everything a training run needs to continue exactly."""

    params: dict  # model name -> trainable params
    constants: dict  # model name -> {'batch_stats', 'buffers'} (not trained)
    actor_opt_state: Any
    critic_opt_state: Any
    value_norm: ValueNormState
    env_state: market.EnvState  # batched over num_envs
    hparams: HyperParams
    rng: Array  # uint32 (2,) key data
    update_step: Array  # int32: updates done


@struct.dataclass
class Transition:
    """One step of ``num_envs`` environments (leading axes ``(T, N)`` once stacked)."""

    bar: Array  # int32 bar index the agents acted at
    actions: Array  # int32 (..., 3)
    log_probs: Array  # float32 (..., 3)
    value: Array  # critic output at the state (normalised space with ValueNorm)
    next_value: Array  # critic output at the true next state (before auto-reset)
    reward: Array
    terminated: Array
    truncated: Array
    position: Array
    equity: Array


@struct.dataclass
class Batch:
    """A flattened training batch: transitions plus advantages and value targets."""

    bar: Array
    actions: Array
    log_probs: Array
    value: Array
    advantages: Array
    targets: Array


def split_variables(variables: Mapping) -> tuple[dict, dict]:
    """``(params, constants)`` of a Flax variables dict."""
    params = variables["params"]
    return params, {k: v for k, v in variables.items() if k != "params"}


def as_key_data(rng: Array) -> Array:
    """uint32 key data from a typed key or raw key data."""
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    return rng.astype(jnp.uint32)


def build_modules(config: Config) -> dict[str, nn.Module]:
    """The three actors and the critic from the config's model sections."""
    modules = {
        name: build_module(name, getattr(config.agents, name).to_kwargs()) for name in AGENT_ORDER
    }
    modules["critic"] = build_module("critic", config.critic.to_kwargs())
    return modules


class MAPPO:
    """The pure pieces of training: ``init``, ``rollout``, ``learn``, ``update``, ``run``."""

    def __init__(self, config: Config, modules: Mapping[str, nn.Module] | None = None):
        self.config = config
        t = config.training
        self.modules = dict(modules) if modules is not None else build_modules(config)
        self.num_envs = t.num_envs
        self.rollout_len = t.rollout_len
        self.num_updates = max(1, t.total_timesteps // (t.num_envs * t.rollout_len))
        self.actor_tx = optax.chain(
            optax.clip_by_global_norm(t.max_grad_norm), optax.scale_by_adam(eps=t.adam_eps)
        )
        self.critic_tx = optax.chain(
            optax.clip_by_global_norm(t.max_grad_norm), optax.scale_by_adam(eps=t.adam_eps)
        )

    # ------------------------------------------------------------------ state

    def init(
        self,
        rng: Array,
        env_params: market.EnvParams,
        init: Mapping[str, Mapping] | None = None,
        hparams: HyperParams | None = None,
    ) -> TrainState:
        """A fresh training state; ``init`` maps model name to Flax variables to start from."""
        rng = as_key_data(rng)
        rng, model_rng, env_rng = jax.random.split(rng, 3)
        model_keys = jax.random.split(model_rng, len(MODEL_NAMES))
        params, constants = {}, {}
        for key, name in zip(model_keys, MODEL_NAMES, strict=True):
            if init is not None and name in init:
                variables = init[name]
            else:
                variables = init_variables(self.modules[name], jax.random.wrap_key_data(key))
            params[name], constants[name] = split_variables(variables)
        actor_params = {name: params[name] for name in AGENT_ORDER}
        _, env_state = jax.vmap(market.reset, in_axes=(0, None))(
            jax.random.split(env_rng, self.num_envs), env_params
        )
        return TrainState(
            params=params,
            constants=constants,
            actor_opt_state=self.actor_tx.init(actor_params),
            critic_opt_state=self.critic_tx.init(params["critic"]),
            value_norm=valuenorm_init(),
            env_state=env_state,
            hparams=hparams if hparams is not None else HyperParams.from_config(self.config),
            rng=rng,
            update_step=jnp.zeros((), jnp.int32),
        )

    def variables(self, state: TrainState, name: str) -> dict:
        """Flax variables of model ``name`` in ``state``."""
        return {"params": state.params[name], **state.constants[name]}

    # ------------------------------------------------------------------ acting

    def act(
        self, state: TrainState, obs: Mapping[str, Array], rng: Array | None = None
    ) -> tuple[Array, Array]:
        """Actions ``(N, 3)`` and their log-probs; greedy when ``rng`` is None."""
        actions, log_probs = [], []
        keys = (
            jax.random.split(rng, len(AGENT_ORDER))
            if rng is not None
            else [None] * len(AGENT_ORDER)
        )
        for key, name in zip(keys, AGENT_ORDER, strict=True):
            out = self.modules[name].apply(
                self.variables(state, name),
                obs[name],
                deterministic=key is None,
                rngs=None if key is None else {"action": jax.random.wrap_key_data(key)},
            )
            actions.append(out["action"])
            log_probs.append(out["log_prob"])
        return jnp.stack(actions, -1), jnp.stack(log_probs, -1)

    def critic_value(self, state: TrainState, critic_obs: Array) -> Array:
        return self.modules["critic"].apply(self.variables(state, "critic"), critic_obs)["value"]

    # ------------------------------------------------------------------ rollout

    def rollout(
        self, state: TrainState, env_params: market.EnvParams, num_steps: int | None = None
    ) -> tuple[TrainState, Transition]:
        """Steps the vmapped environments ``num_steps`` times (default ``rollout_len``)."""
        num_steps = num_steps or self.rollout_len
        rng, roll_rng = jax.random.split(state.rng)

        def env_step(env_state: market.EnvState, key: Array):
            act_key, env_key = jax.random.split(key)
            obs = market.observations(env_params, env_state.t)
            actions, log_probs = self.act(state, obs, act_key)
            env_keys = jax.vmap(jax.random.wrap_key_data)(jax.random.split(env_key, self.num_envs))
            _, next_state, reward, _, info = jax.vmap(market.step, in_axes=(0, 0, 0, None))(
                env_keys, env_state, actions, env_params
            )
            both = self.critic_value(
                state, jnp.concatenate([obs["critic"], info["next_critic_obs"]], axis=0)
            )
            transition = Transition(
                bar=env_state.t,
                actions=actions,
                log_probs=log_probs,
                value=both[: self.num_envs],
                next_value=both[self.num_envs :],
                reward=reward,
                terminated=info["terminated"],
                truncated=info["truncated"],
                position=info["position"],
                equity=info["equity"],
            )
            return next_state, transition

        env_state, traj = jax.lax.scan(
            env_step, state.env_state, jax.random.split(roll_rng, num_steps)
        )
        return state.replace(env_state=env_state, rng=rng), traj

    # ------------------------------------------------------------------ learning

    def loss(
        self,
        params: dict,
        constants: dict,
        batch: Batch,
        env_params: market.EnvParams,
        hp: HyperParams,
    ) -> tuple[Array, dict[str, Array]]:
        """MAPPO loss of one minibatch: per-agent clipped surrogates, entropy, value loss."""
        t = self.config.training
        obs = market.observations(env_params, batch.bar)
        metrics = {}
        actor_loss = jnp.zeros((), jnp.float32)
        for i, name in enumerate(AGENT_ORDER):
            out = self.modules[name].apply(
                {"params": params[name], **constants[name]}, obs[name], actions=batch.actions[:, i]
            )
            pg_loss, pg_metrics = ppo_clip_loss(
                out["log_prob"], batch.log_probs[:, i], batch.advantages, hp.clip_eps
            )
            entropy = out["entropy"].mean()
            actor_loss = actor_loss + pg_loss - hp.ent_coef * entropy
            metrics[f"{name}/policy_loss"] = pg_loss
            metrics[f"{name}/entropy"] = entropy
            metrics[f"{name}/approx_kl"] = pg_metrics["approx_kl"]
            metrics[f"{name}/clip_frac"] = pg_metrics["clip_frac"]
        values = self.modules["critic"].apply(
            {"params": params["critic"], **constants["critic"]}, obs["critic"]
        )["value"]
        v_loss = value_loss(
            values,
            batch.value,
            batch.targets,
            hp.clip_eps,
            use_clipped=t.use_clipped_value_loss,
            use_huber=t.use_huber_loss,
            huber_delta=t.huber_delta,
        )
        metrics["value_loss"] = v_loss
        metrics["actor_loss"] = actor_loss
        total = actor_loss + hp.value_loss_coef * v_loss
        metrics["loss"] = total
        return total, metrics

    def advantages(
        self, state: TrainState, traj: Transition
    ) -> tuple[Array, Array, ValueNormState]:
        """GAE advantages, value targets (critic space) and the updated ValueNorm state."""
        t = self.config.training
        vn = state.value_norm
        denorm = (lambda v: valuenorm_denormalize(vn, v)) if t.use_valuenorm else (lambda v: v)
        adv, returns = gae(
            traj.reward,
            denorm(traj.value),
            denorm(traj.next_value),
            traj.terminated,
            traj.truncated,
            state.hparams.gamma,
            state.hparams.gae_lambda,
        )
        if t.use_valuenorm:
            vn = valuenorm_update(vn, returns)
            targets = valuenorm_normalize(vn, returns)
        else:
            targets = returns
        if t.normalize_advantages:
            adv = normalize_advantages(adv)
        return adv, targets, vn

    def learn(
        self, state: TrainState, traj: Transition, env_params: market.EnvParams
    ) -> tuple[TrainState, dict[str, Array]]:
        """GAE then ``update_epochs`` x ``num_minibatches`` shuffled minibatch steps."""
        t = self.config.training
        hp = state.hparams
        adv, targets, value_norm = self.advantages(state, traj)
        flat = Batch(
            bar=traj.bar,
            actions=traj.actions,
            log_probs=traj.log_probs,
            value=traj.value,
            advantages=adv,
            targets=targets,
        )
        flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), flat)
        size = flat.bar.shape[0]
        n_mb = t.num_minibatches
        if size % n_mb:
            raise ValueError(f"batch of {size} transitions does not split into {n_mb} minibatches")
        if t.anneal_lr:
            frac = 1.0 - state.update_step.astype(jnp.float32) / self.num_updates
        else:
            frac = jnp.ones((), jnp.float32)
        actor_lr, critic_lr = hp.actor_lr * frac, hp.critic_lr * frac
        rng, perm_rng = jax.random.split(state.rng)

        def minibatch_step(carry, mb: Batch):
            params, actor_opt, critic_opt = carry
            grads, metrics = jax.grad(self.loss, has_aux=True)(
                params, state.constants, mb, env_params, hp
            )
            actor_params = {name: params[name] for name in AGENT_ORDER}
            actor_grads = {name: grads[name] for name in AGENT_ORDER}
            metrics["actor_grad_norm"] = optax.tree.norm(actor_grads)
            metrics["critic_grad_norm"] = optax.tree.norm(grads["critic"])
            a_upd, actor_opt = self.actor_tx.update(actor_grads, actor_opt, actor_params)
            c_upd, critic_opt = self.critic_tx.update(grads["critic"], critic_opt, params["critic"])
            actor_params = jax.tree.map(lambda p, u: p - actor_lr * u, actor_params, a_upd)
            critic_params = jax.tree.map(lambda p, u: p - critic_lr * u, params["critic"], c_upd)
            return ({**actor_params, "critic": critic_params}, actor_opt, critic_opt), metrics

        def epoch(carry, key):
            perm = jax.random.permutation(key, size)
            shuffled = jax.tree.map(lambda x: x[perm].reshape(n_mb, -1, *x.shape[1:]), flat)
            return jax.lax.scan(minibatch_step, carry, shuffled)

        carry = (state.params, state.actor_opt_state, state.critic_opt_state)
        (params, actor_opt, critic_opt), metrics = jax.lax.scan(
            epoch, carry, jax.random.split(perm_rng, t.update_epochs)
        )
        metrics = jax.tree.map(jnp.mean, metrics)
        new_state = state.replace(
            params=params,
            actor_opt_state=actor_opt,
            critic_opt_state=critic_opt,
            value_norm=value_norm,
            rng=rng,
            update_step=state.update_step + 1,
        )
        return new_state, metrics

    def update(
        self, state: TrainState, env_params: market.EnvParams
    ) -> tuple[TrainState, dict[str, Array]]:
        """One MAPPO update: rollout, GAE, PPO epochs. Returns per-update metrics."""
        state, traj = self.rollout(state, env_params)
        state, metrics = self.learn(state, traj, env_params)
        return state, {**metrics, **rollout_metrics(traj)}

    def run(
        self, state: TrainState, env_params: market.EnvParams, num_updates: int
    ) -> tuple[TrainState, dict[str, Array]]:
        """``num_updates`` updates in one ``lax.scan``; metrics stacked over updates."""
        return jax.lax.scan(
            lambda s, _: self.update(s, env_params), state, None, length=num_updates
        )


def rollout_metrics(traj: Transition) -> dict[str, Array]:
    """Reward and episode statistics of a rollout."""
    done = traj.terminated | traj.truncated
    n_done = done.sum()
    log_equity = jnp.where(done, jnp.log(traj.equity), 0.0).sum()
    return {
        "average_reward": traj.reward.mean(),
        "mean_abs_position": jnp.abs(traj.position).mean(),
        "episodes_done": n_done.astype(jnp.float32),
        "episode_log_return": log_equity / jnp.maximum(n_done, 1),
    }


def make_train(
    config: Config, env_params: market.EnvParams, modules: Mapping[str, nn.Module] | None = None
) -> Callable[..., tuple[TrainState, dict[str, Array]]]:
    """A pure ``train(rng, init=None, hparams=None) -> (TrainState, metrics)``.

    ``init`` maps model name to Flax variables to start from (e.g. a converted ``.pt``);
    ``hparams`` overrides the config's numeric hyperparameters (traced, vmappable).
    """
    algo = MAPPO(config, modules)

    def train(
        rng: Array, init: Mapping[str, Mapping] | None = None, hparams: HyperParams | None = None
    ) -> tuple[TrainState, dict[str, Array]]:
        state = algo.init(rng, env_params, init, hparams)
        return algo.run(state, env_params, algo.num_updates)

    train.algo = algo
    return train


@struct.dataclass
class Experience:
    """What :meth:`MAPPOTrainer.collect_experience` returns: a rollout and its market."""

    transitions: Transition
    env_params: market.EnvParams


class MAPPOTrainer:
    """The original's training-loop API over the pure functions of :class:`MAPPO`.

    ``MAPPOTrainer(config['training'])`` takes the original's ``training`` section (a dict or
    a :class:`~marl_jax.config.TrainingConfig`); ``env`` in :meth:`collect_experience` is a
    :class:`~marl_jax.env.market.EnvParams`. ``init`` maps model name to Flax variables to
    start from (e.g. ``load_pt_checkpoint(...)``'s agents and critic).
    """

    def __init__(
        self,
        training: Mapping[str, Any] | Any,
        *,
        agents: Mapping[str, Mapping[str, Any]] | None = None,
        critic: Mapping[str, Any] | None = None,
        checkpoint_dir: str = "checkpoints",
        seed: int = 0,
        init: Mapping[str, Mapping] | None = None,
    ):
        from marl_jax.checkpoint import CheckpointManager
        from marl_jax.config import config_from_dict, config_to_dict

        if not isinstance(training, Mapping):
            training = config_to_dict(Config(training=training))["training"]
        data = {
            "training": dict(training),
            "seed": seed,
            "checkpoint": {"dir": str(checkpoint_dir)},
        }
        if agents is not None:
            data["agents"] = {name: dict(cfg) for name, cfg in agents.items()}
        if critic is not None:
            data["critic"] = dict(critic)
        self.config = config_from_dict(data, source="MAPPOTrainer(training=...)")
        self.algo = MAPPO(self.config)
        self.state: TrainState | None = None
        self._init = init
        self._rollout = jax.jit(self.algo.rollout, static_argnums=2)
        self._learn = jax.jit(self.algo.learn)
        self.checkpoints = CheckpointManager(
            checkpoint_dir, max_checkpoints=5, best_metric="average_reward"
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
        metrics = {**metrics, **rollout_metrics(experiences.transitions)}
        return {name: float(value) for name, value in metrics.items()}

    def variables(self) -> dict[str, dict]:
        """Flax variables of the actors and the critic, by model name."""
        if self.state is None:
            raise RuntimeError("no training state yet: call collect_experience first")
        return {name: self.algo.variables(self.state, name) for name in MODEL_NAMES}

    def save_checkpoint(self, metrics: Mapping[str, float]) -> str:
        """Saves the models and metrics (Orbax); the best ``average_reward`` is kept."""
        variables = self.variables()
        score = float(metrics.get("average_reward", -float("inf")))
        is_best = score > self._best
        self._best = max(self._best, score)
        return self.checkpoints.save_checkpoint(
            agents={name: variables[name] for name in AGENT_ORDER},
            critic=variables["critic"],
            metrics=dict(metrics),
            is_best=is_best,
        )
