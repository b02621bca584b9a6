"""MAPPO for the three Strategic MARL actors and the centralized critic, as one XLA program.

Read top to bottom: the states (:class:`HyperParams`, :class:`TrainState`, :class:`Transition`,
:class:`Batch`), then :class:`MAPPO`'s pure pieces (``init``, ``rollout``,
``loss``, ``advantages``, ``learn``, ``update``, ``run``) and :func:`make_train`, which returns
them as :class:`TrainFns`. ``TrainFns.train(rng, init=None, hparams=None)`` is ``lax.scan`` over
updates; each update is a rollout (``lax.scan`` over ``rollout_len`` steps of ``num_envs``
vmapped environments), GAE, then ``update_epochs`` x ``num_minibatches`` shuffled minibatch
steps. ``jax.vmap(train)`` over rngs (and over :class:`HyperParams`) runs several seeds or
hyperparameter settings in one program. Nothing here touches the disk: see
:mod:`marl_jax.run`. Each model's optimizer: :mod:`marl_jax.optimizer`.

Loops: ``training.unroll_learn`` (on by default) unrolls the epoch x minibatch loop of the learn
step. On the CPU an XLA while loop around a large model's gradient costs about as much as the
gradient again (``benchmarks/RESULTS.md``: 1.55x faster full-size updates unrolled); the price
is a longer compile, which the quickstart config avoids by turning it off.

Training mode rule: rollouts and losses both run the models in **eval mode**
(``train=False``): no dropout, BatchNorm normalises with its running statistics. The
probability ratio then compares like with like (the rollout's log-probabilities are exactly
those the loss recomputes before any update), and the running statistics, which are not
trained, stay those of the loaded or initialised model, valid for export.

Transitions store the bar index, not the observation: the loss rebuilds the observations from
the environment's feature table, so the rollout buffer holds a few numbers per step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from marl_jax.agents import AGENT_NAMES, AUX, MODEL_NAMES
from marl_jax.config import Config
from marl_jax.env import market
from marl_jax.models.components import uniform_init
from marl_jax.models.recurrences import resolve_rnn_backend
from marl_jax.models.registry import build_module, init_variables, model_kwargs
from marl_jax.optimizer import learning_rates, make_optimizer, with_learning_rates
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
        return cls(**{name: jnp.asarray(getattr(t, name), jnp.float32) for name in HPARAM_NAMES})


HPARAM_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HyperParams))
"""The traced hyperparameters: ``training.<name>`` keys a population shares one program for."""


@struct.dataclass
class TrainState:
    """Everything a training run needs to continue exactly."""

    params: dict  # model name -> trainable params (and AUX -> the auxiliary return heads)
    constants: dict  # model name -> {'batch_stats', 'buffers'} (not trained)
    opt_state: dict  # model name -> optax state (own gradient clip, injected learning rate)
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


def cast_floats(tree: Any, dtype: Any) -> Any:
    """``tree`` with its floating-point leaves cast to ``dtype`` (other leaves as they are)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x,
        tree,
    )


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
    """The three actors and the critic from the config's model sections; the actors' LSTMs
    run on ``training.rnn_backend`` (``auto``: cuDNN on a CUDA GPU, else ``lax.scan``)."""
    backend = resolve_rnn_backend(config.training.rnn_backend)
    modules = {
        name: build_module(name, model_kwargs(config, name) | {"rnn_backend": backend})
        for name in AGENT_NAMES
    }
    modules["critic"] = build_module("critic", model_kwargs(config, "critic"))
    return modules


def next_return_targets(env_params: market.EnvParams, bars: Array) -> Array:
    """The auxiliary loss's targets: the next bar's log return after each of ``bars``, over
    their standard deviation in this batch (so the loss does not depend on the market's
    scale, and only bars that training visits set it). Returns that are all equal, as in a
    one-transition minibatch, have no spread to divide by and stay as they are."""
    returns = env_params.log_returns[bars + 1]
    std = jnp.std(returns)
    return returns / jnp.where(std > 0, std, 1.0)


class MAPPO:
    """The pure pieces of training: ``init``, ``rollout``, ``learn``, ``update``, ``run``."""

    def __init__(self, config: Config, modules: Mapping[str, nn.Module] | None = None):
        self.config = config
        t = config.training
        self.modules = dict(modules) if modules is not None else build_modules(config)
        self.num_envs = t.num_envs
        self.rollout_len = t.rollout_len
        self.num_updates = t.num_updates
        self.tx = make_optimizer(t, self.num_updates)
        self.compute_dtype = jnp.dtype(t.compute_dtype)

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
        hparams = hparams if hparams is not None else HyperParams.from_config(self.config)
        if self.config.training.aux_return_coef > 0:  # its own key: the models' draws stay
            params[AUX] = self.init_aux(jax.random.fold_in(model_rng, len(MODEL_NAMES)))
        opt_state = {name: self.tx.init(tree) for name, tree in params.items()}
        _, env_state = jax.vmap(market.reset, in_axes=(0, None))(
            jax.random.split(env_rng, self.num_envs), env_params
        )
        return TrainState(
            params=params,
            constants=constants,
            opt_state=with_learning_rates(opt_state, learning_rates(hparams)),
            value_norm=valuenorm_init(),
            env_state=env_state,
            hparams=hparams,
            rng=rng,
            update_step=jnp.zeros((), jnp.int32),
        )

    def init_aux(self, rng: Array) -> dict:
        """The auxiliary return heads: per actor, a linear map of its last features, the kernel
        drawn as PyTorch draws a ``Linear(width, 1)``'s weight, the bias zero."""
        heads = {}
        for key, name in zip(jax.random.split(rng, len(AGENT_NAMES)), AGENT_NAMES, strict=True):
            width = self.modules[name].hidden_dims[-1]
            kernel = uniform_init(1.0 / math.sqrt(width))(key, (width,))
            heads[name] = {"kernel": kernel, "bias": jnp.zeros((), jnp.float32)}
        return heads

    def variables(self, state: TrainState, name: str) -> dict:
        """Flax variables of model ``name`` in ``state``."""
        return {"params": state.params[name], **state.constants[name]}

    def model_variables(self, state: TrainState) -> dict[str, Any]:
        """``{'agents': {name: variables}, 'critic': variables}``: the models of ``state`` as a
        model directory and the original checkpoint hold them."""
        return {
            "agents": {name: self.variables(state, name) for name in AGENT_NAMES},
            "critic": self.variables(state, "critic"),
        }

    # ------------------------------------------------------------------ acting

    def act(
        self, state: TrainState, obs: Mapping[str, Array], rng: Array | None = None
    ) -> tuple[Array, Array]:
        """Actions ``(N, 3)`` and their log-probs; greedy when ``rng`` is None."""
        actions, log_probs = [], []
        keys = (
            jax.random.split(rng, len(AGENT_NAMES))
            if rng is not None
            else [None] * len(AGENT_NAMES)
        )
        for key, name in zip(keys, AGENT_NAMES, strict=True):
            out = self.apply(
                name,
                self.variables(state, name),
                obs[name],
                deterministic=key is None,
                rngs=None if key is None else {"action": jax.random.wrap_key_data(key)},
                attention_weights=False,
            )
            actions.append(out["action"])
            log_probs.append(out["log_prob"])
        return jnp.stack(actions, -1), jnp.stack(log_probs, -1)

    def actor_outputs(
        self,
        variables: Mapping[str, Mapping],
        obs: Mapping[str, Array],
        actions: Array,
        **kwargs: Any,
    ) -> dict[str, dict]:
        """Each actor's outputs for the given ``actions`` ``(N, 3)``: the log-prob and entropy
        of its column, under ``variables[name]``."""
        return {
            name: self.apply(
                name,
                variables[name],
                obs[name],
                actions=actions[:, i],
                attention_weights=False,
                **kwargs,
            )
            for i, name in enumerate(AGENT_NAMES)
        }

    def critic_value(self, state: TrainState, critic_obs: Array) -> Array:
        return self.apply("critic", self.variables(state, "critic"), critic_obs)["value"]

    def apply(self, name: str, variables: Mapping, inputs: Array, **kwargs: Any) -> dict:
        """Model ``name``'s outputs (floats as float32). The actors compute in
        ``training.compute_dtype``: with bfloat16 the parameters and inputs are cast for the
        call (the float32 master weights receive the gradient), while norms, softmax and
        log-probabilities stay float32 inside the models. The critic always computes in
        float32: near convergence its value errors are smaller than bfloat16 resolves, and in
        bfloat16 its gradient there turned away from float32's (benchmarks/RESULTS.md,
        "bfloat16 compute")."""
        if self.compute_dtype != jnp.float32 and name != "critic":
            cast = self.compute_dtype
            variables = {**variables, "params": cast_floats(variables["params"], cast)}
            inputs = inputs.astype(cast)
        out = self.modules[name].apply(variables, inputs, **kwargs)
        return cast_floats(out, jnp.float32)

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
        """MAPPO loss of one minibatch: per-agent clipped surrogates, entropy, value loss;
        with ``params[AUX]``, plus ``aux_return_coef`` x the auxiliary return loss (each actor's
        head's squared error on :func:`next_return_targets`)."""
        t = self.config.training
        obs = market.observations(env_params, batch.bar)
        metrics = {}
        actor_loss = jnp.zeros((), jnp.float32)
        aux = params.get(AUX)
        if aux is not None:
            aux_targets = next_return_targets(env_params, batch.bar)
            aux_loss = jnp.zeros((), jnp.float32)
        variables = {name: {"params": params[name], **constants[name]} for name in AGENT_NAMES}
        outs = self.actor_outputs(variables, obs, batch.actions, return_features=aux is not None)
        for i, name in enumerate(AGENT_NAMES):
            out = outs[name]
            if aux is not None:
                predicted = out["features"] @ aux[name]["kernel"] + aux[name]["bias"]
                agent_aux = jnp.mean((predicted - aux_targets) ** 2)
                aux_loss = aux_loss + agent_aux
                metrics[f"{name}/aux_loss"] = agent_aux
            pg_loss, pg_metrics = ppo_clip_loss(
                out["log_prob"], batch.log_probs[:, i], batch.advantages, hp.clip_eps
            )
            entropy = out["entropy"].mean()
            actor_loss = actor_loss + pg_loss - hp.ent_coef * entropy
            metrics[f"{name}/policy_loss"] = pg_loss
            metrics[f"{name}/entropy"] = entropy
            metrics[f"{name}/approx_kl"] = pg_metrics["approx_kl"]
            metrics[f"{name}/clip_frac"] = pg_metrics["clip_frac"]
        values = self.apply(
            "critic", {"params": params["critic"], **constants["critic"]}, obs["critic"]
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
        if aux is not None:
            metrics["aux_loss"] = aux_loss
            total = total + t.aux_return_coef * aux_loss
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

    def batch(self, state: TrainState, traj: Transition) -> tuple[Batch, ValueNormState]:
        """The rollout ``traj`` as one flat training batch (GAE advantages and value targets),
        and the ValueNorm state updated with its returns."""
        adv, targets, value_norm = self.advantages(state, traj)
        batch = Batch(
            bar=traj.bar,
            actions=traj.actions,
            log_probs=traj.log_probs,
            value=traj.value,
            advantages=adv,
            targets=targets,
        )
        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch), value_norm

    def learn(
        self, state: TrainState, traj: Transition, env_params: market.EnvParams
    ) -> tuple[TrainState, dict[str, Array]]:
        """GAE then ``update_epochs`` x ``num_minibatches`` shuffled minibatch steps."""
        t = self.config.training
        hp = state.hparams
        flat, value_norm = self.batch(state, traj)
        size = flat.bar.shape[0]
        n_mb = t.num_minibatches
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
            return jax.lax.scan(minibatch_step, carry, shuffled, unroll=t.unroll_learn)

        carry = (state.params, state.opt_state)
        (params, opt_state), metrics = jax.lax.scan(
            epoch, carry, jax.random.split(perm_rng, t.update_epochs), unroll=t.unroll_learn
        )
        metrics = jax.tree.map(jnp.mean, metrics)
        new_state = state.replace(
            params=params,
            opt_state=opt_state,
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


@dataclasses.dataclass(frozen=True)
class TrainFns:
    """The pure functions of a training run (each may be jitted or vmapped).

    ``init(rng, env_params, init=None, hparams=None) -> TrainState``;
    ``update(state, env_params) -> (state, metrics)``: one MAPPO update;
    ``run(state, env_params, num_updates) -> (state, metrics stacked over updates)``
    (``num_updates`` static); ``train(rng, init=None, hparams=None)``: ``init`` then ``run``
    over the configured number of updates, on the ``env_params`` given to :func:`make_train`.
    Calling the object calls ``train``.
    """

    algo: MAPPO
    init: Callable[..., TrainState]
    update: Callable[..., tuple[TrainState, dict[str, Array]]]
    run: Callable[..., tuple[TrainState, dict[str, Array]]]
    train: Callable[..., tuple[TrainState, dict[str, Array]]]

    def __call__(
        self,
        rng: Array,
        init: Mapping[str, Mapping] | None = None,
        hparams: HyperParams | None = None,
    ) -> tuple[TrainState, dict[str, Array]]:
        return self.train(rng, init, hparams)


def make_train(
    config: Config, env_params: market.EnvParams, modules: Mapping[str, nn.Module] | None = None
) -> TrainFns:
    """The pure functions of MAPPO training for ``config`` (see :class:`TrainFns`).

    ``init`` maps model name to Flax variables to start from (e.g. a converted ``.pt``);
    ``hparams`` overrides the config's numeric hyperparameters (traced, vmappable).
    """
    algo = MAPPO(config, modules)

    def train(
        rng: Array, init: Mapping[str, Mapping] | None = None, hparams: HyperParams | None = None
    ) -> tuple[TrainState, dict[str, Array]]:
        state = algo.init(rng, env_params, init, hparams)
        return algo.run(state, env_params, algo.num_updates)

    return TrainFns(algo=algo, init=algo.init, update=algo.update, run=algo.run, train=train)
