"""MAPPO for three actors and a centralized critic on any :class:`Environment`, in one module.

One update reads top to bottom: 1. **rollout** (``rollout_len`` steps of ``num_envs`` vmapped
environments; the critic values the true next state, before any automatic reset, so truncated
episodes bootstrap); 2. **advantages** (GAE in return units, value targets, ValueNorm; per
actor under counterfactual credit); 3. **epochs** (``update_epochs`` x ``num_minibatches``
shuffled steps, one optimizer per model); 4. **losses** (per-actor clipped surrogates and
entropies, the critic's value loss, and an optional auxiliary term). Config switches are
read once, when :class:`MAPPO` is built; the numbers a population varies are traced
(:class:`~marl_jax.hparams.HyperParams`).

Training is driven one way: ``init``, then ``update`` (the run loop jits it one step at a time,
a population vmaps it) or ``run`` (``lax.scan`` over updates; ``train`` is ``init`` + ``run``).
Rollouts and losses run the models in eval mode (no dropout, BatchNorm's running statistics),
so the loss recomputes the rollout's log-probabilities exactly. Nothing here touches the disk.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from marl_jax import ppo
from marl_jax.agents import AGENT_NAMES, AUX, MODEL_NAMES
from marl_jax.config import Config
from marl_jax.env.interface import Environment
from marl_jax.hparams import HyperParams
from marl_jax.models.team import Team, as_key_data, build_modules
from marl_jax.optimizer import learning_rates, make_optimizer, with_learning_rates

Array = jax.Array


@struct.dataclass
class TrainState:
    """Everything a training run needs to continue exactly."""

    params: dict  # model name -> trainable params (and AUX -> the auxiliary return heads)
    constants: dict  # model name -> {'batch_stats', 'buffers'} (not trained)
    opt_state: dict  # model name -> optax state (own gradient clip, injected learning rate)
    value_norm: ppo.ValueNormState
    env_state: Any  # the environment's state, batched over num_envs
    hparams: HyperParams
    rng: Array  # uint32 (2,) key data
    update_step: Array  # int32: updates done


@struct.dataclass
class Transition:
    """One step of ``num_envs`` environments (leading axes ``(T, N)`` once stacked)."""

    obs_key: Any  # what the environment rebuilds the acting observation from (array or pytree)
    actions: Array  # int32 (..., 3)
    log_probs: Array  # float32 (..., 3)
    value: Array  # critic output at the state (normalised space with ValueNorm)
    next_value: Array  # critic output at the true next state (before auto-reset)
    reward: Array
    terminated: Array
    truncated: Array
    stats: dict  # the environment's step_stats, for rollout_metrics
    # Counterfactual credit: each actor's expected reward over its own actions, the others'
    # held (..., 3); None under shared credit.
    credit_baseline: Array | None = None


@struct.dataclass
class Batch:
    """A flattened training batch: transitions plus advantages and value targets."""

    obs_key: Any
    actions: Array
    log_probs: Array
    value: Array
    advantages: Array  # (...,) shared, or (..., 3) per actor under counterfactual credit
    targets: Array


class MAPPO:
    """MAPPO on ``env`` with the models of ``config`` (or ``modules``)."""

    def __init__(
        self, config: Config, env: Environment, modules: Mapping[str, nn.Module] | None = None
    ):
        training = config.training  # the switches, read here once
        self.config, self.env = config, env
        self.team = Team(dict(modules or build_modules(config)), jnp.dtype(training.compute_dtype))
        self.modules = self.team.modules
        self.num_envs, self.rollout_len = training.num_envs, training.rollout_len
        self.num_updates, self.update_epochs = training.num_updates, training.update_epochs
        self.num_minibatches, self.unroll = training.num_minibatches, training.unroll_learn
        self.tx = make_optimizer(training, self.num_updates)
        self.use_valuenorm = training.use_valuenorm
        self.normalise_advantages = training.normalise_advantages
        self.counterfactual = training.credit == "counterfactual"
        self.anneal_ent = training.anneal_ent
        self.reward_scale = float(training.reward_scale)
        self.value_loss = functools.partial(
            ppo.value_loss,
            use_clipped=training.use_clipped_value_loss,
            use_huber=training.use_huber_loss,
            huber_delta=training.huber_delta,
        )
        self.aux_coef = training.aux_return_coef  # 0: no auxiliary term, no heads

    # ------------------------------------------------------------------ state and acting

    def init(
        self,
        rng: Array,
        env_params: Any,
        init: Mapping[str, Mapping] | None = None,
        hparams: HyperParams | None = None,
    ) -> TrainState:
        """A fresh training state; ``init`` maps model name to Flax variables to start from."""
        self.team.check_inputs(self.env.observation_specs(env_params), type(self.env).__name__)
        rng, model_rng, env_rng = jax.random.split(as_key_data(rng), 3)
        params, constants = self.team.init_variables(model_rng, init)
        hparams = hparams if hparams is not None else HyperParams.from_config(self.config)
        if self.aux_coef > 0:  # its own key: the models' draws stay
            params[AUX] = self.team.init_aux_heads(jax.random.fold_in(model_rng, len(MODEL_NAMES)))
        opt_state = {name: self.tx.init(tree) for name, tree in params.items()}
        env_keys = jax.random.split(env_rng, self.num_envs)
        _, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(env_keys, env_params)
        return TrainState(
            params=params,
            constants=constants,
            opt_state=with_learning_rates(opt_state, learning_rates(hparams)),
            value_norm=ppo.valuenorm_init(),
            env_state=env_state,
            hparams=hparams,
            rng=rng,
            update_step=jnp.zeros((), jnp.int32),
        )

    def variables(self, state: TrainState, name: str) -> dict:
        """Flax variables of model ``name`` in ``state``."""
        return {"params": state.params[name], **state.constants[name]}

    def model_variables(self, state: TrainState) -> dict[str, Any]:
        """``{'agents': {name: variables}, 'critic': variables}``, as a model directory and the
        original checkpoint hold them."""
        agents = {name: self.variables(state, name) for name in AGENT_NAMES}
        return {"agents": agents, "critic": self.variables(state, "critic")}

    def act(self, state: TrainState, obs: Mapping[str, Array], rng: Array | None = None):
        """Actions ``(N, 3)`` and their log-probs; greedy when ``rng`` is None."""
        variables = {name: self.variables(state, name) for name in AGENT_NAMES}
        return self.team.act(variables, obs, rng)

    # ------------------------------------------------------------------ 1. rollout

    def rollout(
        self, state: TrainState, env_params: Any, num_steps: int | None = None
    ) -> tuple[TrainState, Transition]:
        """Steps the vmapped environments ``num_steps`` times (default ``rollout_len``)."""
        rng, roll_rng = jax.random.split(state.rng)
        critic = self.variables(state, "critic")

        def env_step(env_state: Any, key: Array) -> tuple[Any, Transition]:
            act_key, env_key = jax.random.split(key)
            obs_key = jax.vmap(self.env.obs_key, in_axes=(0, None))(env_state, env_params)
            obs = self.env.observe(env_params, obs_key)
            variables = {name: self.variables(state, name) for name in AGENT_NAMES}
            actions, log_probs, probs = self.team.act_with_probs(variables, obs, act_key)
            env_keys = jax.vmap(jax.random.wrap_key_data)(jax.random.split(env_key, self.num_envs))
            _, next_state, reward, _, info = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(
                env_keys, env_state, actions, env_params
            )
            baseline = None
            if self.counterfactual:  # (N, 3, num_actions) rewards, averaged under the policy
                cf = jax.vmap(self.env.counterfactual_rewards, in_axes=(0, 0, 0, None))(
                    env_keys, env_state, actions, env_params
                )
                baseline = (probs * cf).sum(-1)
            critic_obs = jnp.concatenate([obs["critic"], info["next_obs"]["critic"]], axis=0)
            both = self.team.critic_value(critic, critic_obs)
            return next_state, Transition(
                obs_key=obs_key,
                actions=actions,
                log_probs=log_probs,
                value=both[: self.num_envs],
                next_value=both[self.num_envs :],
                reward=reward,
                terminated=info["terminated"],
                truncated=info["truncated"],
                stats=self.env.step_stats(info),
                credit_baseline=baseline,
            )

        keys = jax.random.split(roll_rng, num_steps or self.rollout_len)
        env_state, traj = jax.lax.scan(env_step, state.env_state, keys)
        return state.replace(env_state=env_state, rng=rng), traj

    # ------------------------------------------------------------------ 2. advantages

    def advantages(
        self, state: TrainState, traj: Transition
    ) -> tuple[Array, Array, ppo.ValueNormState]:
        """GAE advantages, value targets (critic space) and the updated ValueNorm state.

        Under counterfactual credit actor ``i``'s advantage is the GAE advantage plus the
        state's value less its baseline ``b_i`` (the step's reward averaged over its own
        actions under the rollout policy, the others' held): ``r - b_i`` at ``gamma = 0``.
        ``b_i`` does not depend on actor ``i``'s action, so the policy gradient stays unbiased;
        it removes the others' votes from actor ``i``'s credit. Each actor's advantages are
        normalised on their own. Rewards (and ``b_i``) are multiplied by ``reward_scale``
        first: the critic learns, and ValueNorm normalises, the scaled returns."""
        vn = state.value_norm
        denorm = functools.partial(ppo.valuenorm_denormalise, vn)
        value, next_value = traj.value, traj.next_value
        if self.use_valuenorm:
            value, next_value = denorm(value), denorm(next_value)
        hp = state.hparams
        adv, returns = ppo.gae(
            traj.reward * self.reward_scale,
            value,
            next_value,
            traj.terminated,
            traj.truncated,
            hp.gamma,
            hp.gae_lambda,
        )
        targets = returns
        if self.use_valuenorm:
            vn = ppo.valuenorm_update(vn, returns)
            targets = ppo.valuenorm_normalise(vn, returns)
        if self.counterfactual:
            adv = (adv + value)[..., None] - traj.credit_baseline * self.reward_scale
        if self.normalise_advantages:
            per_actor = (0, 1) if self.counterfactual else None
            adv = ppo.normalise_advantages(adv, axis=per_actor)
        return adv, targets, vn

    def hparams_now(self, state: TrainState) -> HyperParams:
        """The hyperparameters of the update ``state`` is at: ``ent_coef`` scaled by
        ``1 - update_step / num_updates`` (at least 0) under ``anneal_ent``."""
        hp = state.hparams
        if not self.anneal_ent:
            return hp
        left = 1.0 - jnp.asarray(state.update_step, jnp.float32) / self.num_updates
        return hp.replace(ent_coef=hp.ent_coef * jnp.clip(left, 0.0, 1.0))

    def batch(self, state: TrainState, traj: Transition) -> tuple[Batch, ppo.ValueNormState]:
        """The rollout as one flat training batch, and the ValueNorm state after it."""
        adv, targets, value_norm = self.advantages(state, traj)
        batch = Batch(traj.obs_key, traj.actions, traj.log_probs, traj.value, adv, targets)
        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch), value_norm

    # ------------------------------------------------------------------ 3. epochs

    def learn(
        self, state: TrainState, traj: Transition, env_params: Any
    ) -> tuple[TrainState, dict[str, Array]]:
        """GAE then ``update_epochs`` x ``num_minibatches`` shuffled minibatch steps."""
        flat, value_norm = self.batch(state, traj)
        hp = self.hparams_now(state)
        size, n_mb = jax.tree.leaves(flat.obs_key)[0].shape[0], self.num_minibatches
        if size % n_mb:
            raise ValueError(f"batch of {size} transitions does not split into {n_mb} minibatches")
        rng, perm_rng = jax.random.split(state.rng)

        def minibatch_step(carry, mb: Batch):
            params, opt_state = carry
            grads, metrics = jax.grad(self.loss, has_aux=True)(
                params, state.constants, mb, env_params, hp
            )
            new_params, new_opt = {}, {}
            for name in params:  # the models, then the auxiliary heads when there are any
                # Of the raveled gradient, as the clip sees it: one reduction, not one per weight.
                metrics[f"{name}/grad_norm"] = jnp.linalg.norm(ravel_pytree(grads[name])[0])
                updates, new_opt[name] = self.tx.update(grads[name], opt_state[name], params[name])
                new_params[name] = optax.apply_updates(params[name], updates)
            return (new_params, new_opt), metrics

        def epoch(carry, key):
            perm = jax.random.permutation(key, size)
            shuffled = jax.tree.map(lambda x: x[perm].reshape(n_mb, -1, *x.shape[1:]), flat)
            return jax.lax.scan(minibatch_step, carry, shuffled, unroll=self.unroll)

        epoch_keys = jax.random.split(perm_rng, self.update_epochs)
        carry = (state.params, state.opt_state)
        (params, opt_state), metrics = jax.lax.scan(epoch, carry, epoch_keys, unroll=self.unroll)
        new_state = state.replace(
            params=params,
            opt_state=opt_state,
            value_norm=value_norm,
            rng=rng,
            update_step=state.update_step + 1,
        )
        return new_state, jax.tree.map(jnp.mean, metrics)

    # ------------------------------------------------------------------ 4. losses

    def loss(
        self, params: dict, constants: dict, batch: Batch, env_params: Any, hp: HyperParams
    ) -> tuple[Array, dict[str, Array]]:
        """MAPPO loss of one minibatch: per-actor clipped surrogates less ``ent_coef`` x their
        entropies, plus ``value_loss_coef`` x the critic's loss, plus ``aux_return_coef`` x
        :func:`~marl_jax.ppo.aux_return_loss` when it is on."""
        obs = self.env.observe(env_params, batch.obs_key)
        variables = {name: {"params": params[name], **constants[name]} for name in MODEL_NAMES}
        outs = self.team.actor_outputs(
            variables, obs, batch.actions, return_features=self.aux_coef > 0
        )
        metrics = {}
        actor_loss = jnp.zeros((), jnp.float32)
        for i, name in enumerate(AGENT_NAMES):
            out = outs[name]
            adv = batch.advantages[:, i] if self.counterfactual else batch.advantages
            pg_loss, pg_metrics = ppo.ppo_clip_loss(
                out["log_prob"], batch.log_probs[:, i], adv, hp.clip_eps
            )
            entropy = out["entropy"].mean()
            actor_loss = actor_loss + pg_loss - hp.ent_coef * entropy
            metrics[f"{name}/policy_loss"] = pg_loss
            metrics[f"{name}/entropy"] = entropy
            metrics[f"{name}/approx_kl"] = pg_metrics["approx_kl"]
            metrics[f"{name}/clip_frac"] = pg_metrics["clip_frac"]
        values = self.team.critic_value(variables["critic"], obs["critic"])
        v_loss = self.value_loss(values, batch.value, batch.targets, hp.clip_eps)
        total = actor_loss + hp.value_loss_coef * v_loss
        metrics["value_loss"], metrics["actor_loss"] = v_loss, actor_loss
        if self.aux_coef > 0:
            targets = ppo.scaled_targets(self.env.aux_targets(env_params, batch.obs_key))
            features = {name: outs[name]["features"] for name in AGENT_NAMES}
            aux_loss, aux_metrics = ppo.aux_return_loss(params[AUX], features, targets)
            total = total + self.aux_coef * aux_loss
            metrics.update(aux_metrics)
        metrics["loss"] = total
        return total, metrics

    # ------------------------------------------------------------------ driving

    def update(self, state: TrainState, env_params: Any) -> tuple[TrainState, dict[str, Array]]:
        """One MAPPO update: rollout, advantages, epochs. Returns per-update metrics."""
        state, traj = self.rollout(state, env_params)
        state, metrics = self.learn(state, traj, env_params)
        return state, {**metrics, **self.rollout_metrics(traj)}

    def run(
        self, state: TrainState, env_params: Any, num_updates: int
    ) -> tuple[TrainState, dict[str, Array]]:
        """``num_updates`` updates in one ``lax.scan``; metrics stacked over updates."""
        return jax.lax.scan(
            lambda s, _: self.update(s, env_params), state, None, length=num_updates
        )

    def train(
        self,
        rng: Array,
        env_params: Any,
        init: Mapping[str, Mapping] | None = None,
        hparams: HyperParams | None = None,
    ) -> tuple[TrainState, dict[str, Array]]:
        """``init`` then ``run`` over the configured number of updates (vmap it over ``rng``
        and ``hparams`` to train a population in one program)."""
        return self.run(self.init(rng, env_params, init, hparams), env_params, self.num_updates)

    def rollout_metrics(self, traj: Transition) -> dict[str, Array]:
        """The mean reward and the episodes ended in a rollout, and the environment's own."""
        done = traj.terminated | traj.truncated
        return {
            "average_reward": traj.reward.mean(),
            "episodes_done": done.sum().astype(jnp.float32),
            **self.env.rollout_metrics(traj.stats, done),
        }
