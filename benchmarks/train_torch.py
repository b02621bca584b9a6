"""A plain PyTorch MAPPO over ``bridge.torch_reference``: the baseline of ``train.py --vs-torch``.

Written the usual way (eager PyTorch, a NumPy environment vectorised over ``num_envs``, a
rollout buffer of observations), doing the same work per update as :class:`marl_jax.mappo.MAPPO`:

- rollout: ``rollout_len`` steps of ``num_envs`` environments; each step samples the three
  actors (eval mode, ``torch.no_grad()``) on the ``num_envs`` observations and runs the critic
  once on the ``2 * num_envs`` current and true-next (pre-reset) critic observations;
- GAE (same ``gamma``, ``gae_lambda``, truncation bootstraps, termination does not), ValueNorm
  (debiased EMA, beta 0.99999, variance floor 1e-2), advantage normalisation;
- ``update_epochs`` x ``num_minibatches`` shuffled minibatches: per-agent clipped surrogate,
  entropy bonus, clipped Huber value loss, all models in eval mode (no dropout, BatchNorm
  running statistics); one backward pass, then per model ``clip_grad_norm_(max_grad_norm)``
  and its own ``torch.optim.Adam(eps=adam_eps)`` at ``actor_lr`` / ``critic_lr``.

The environment is ``marl_jax.env.market`` in NumPy over the same feature table, log returns
and rolling means (taken from the ``EnvParams`` that ``marl_jax.run.setup.env_params_for``
builds). The models start from the JAX trainer's initial weights (``MAPPO(cfg, MARKET).init`` with
``jax.random.key(cfg.seed)``, converted with ``bridge.convert.flax_to_torch``). Sampling uses
PyTorch's and NumPy's generators, so the numbers differ from JAX's; the shapes and passes do not.

``device="cuda"`` runs the models on the GPU (cuDNN's LSTM/GRU; TF32 off unless the caller turns
it on) while the environment stays in NumPy on the host, as a PyTorch user's loop would. cuDNN's
RNN backward needs training mode, so the learn step puts the recurrent layers alone in training
mode with their inter-layer dropout set to 0: the same function as eval mode.

    python benchmarks/train_torch.py --config configs/quickstart.yaml --updates 3
    python benchmarks/train_torch.py --config configs/quickstart.yaml --check \\
        --set training.num_envs=8 --set training.rollout_len=4
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from bridge.convert import flax_to_torch
from bridge.torch_reference import AGENT_NAMES, build_reference_models
from marl_jax.config import Config, load_config
from marl_jax.env import market
from marl_jax.env.features import AGENT_FEATURES
from marl_jax.mappo import MAPPO, Batch, TrainState, Transition
from marl_jax.models.registry import model_kwargs

MODEL_NAMES = (*AGENT_NAMES, "critic")


def model_configs(cfg: Config) -> dict[str, dict]:
    """Constructor arguments of the four models, from the config's model sections."""
    return {name: model_kwargs(cfg, name) for name in MODEL_NAMES}


def jax_initial_state(cfg: Config, env_params: market.EnvParams) -> tuple[MAPPO, TrainState]:
    """The JAX trainer and its initial state (``jax.random.key(cfg.seed)``)."""
    algo = MAPPO(cfg, market.MARKET)
    return algo, jax.jit(algo.init)(jax.random.key(cfg.seed), env_params)


def torch_state_dicts(algo: MAPPO, state: TrainState) -> dict[str, dict[str, torch.Tensor]]:
    """Each model's weights in ``state`` as a PyTorch state dict."""
    return {
        name: flax_to_torch(
            jax.tree.map(np.asarray, algo.variables(state, name)), algo.modules[name]
        )
        for name in MODEL_NAMES
    }


# ----------------------------------------------------------------------------- environment


class NumpyMarketEnv:
    """``marl_jax.env.market`` vectorised over ``num_envs`` in NumPy, with automatic reset."""

    def __init__(self, params: market.EnvParams, num_envs: int, rng: np.random.Generator):
        self.features = np.asarray(params.features, np.float32)  # (T, 13), normalised
        self.log_returns = np.asarray(params.log_returns, np.float32)
        self.window_means = np.asarray(params.window_means, np.float32)
        self.start_lo = int(params.start_lo)
        self.start_hi = int(params.start_hi)
        self.last_bar = int(params.last_bar)
        self.episode_len = params.episode_len
        self.window = params.window
        self.cost = np.float32(params.cost_bps * 1e-4)
        self.num_envs = num_envs
        self.rng = rng
        self.offsets = np.arange(1 - self.window, 1)
        self.t = np.zeros(num_envs, np.int64)
        self.step_count = np.zeros(num_envs, np.int64)
        self.position = np.zeros(num_envs, np.float32)
        self.equity = np.ones(num_envs, np.float32)
        self.reset(np.ones(num_envs, bool))

    def reset(self, mask: np.ndarray) -> None:
        """Fresh episodes in the environments where ``mask`` is set."""
        n = int(mask.sum())
        self.t[mask] = self.rng.integers(self.start_lo, self.start_hi + 1, n)
        self.step_count[mask] = 0
        self.position[mask] = 0.0
        self.equity[mask] = 1.0

    def observations(self, t: np.ndarray) -> dict[str, np.ndarray]:
        """Windows ``(N, C, window)`` per agent and the critic's rolling means ``(N, 13)``."""
        chans = self.features[t[:, None] + self.offsets].transpose(0, 2, 1)  # (N, 13, window)
        obs = {name: np.ascontiguousarray(chans[:, a:b]) for name, (a, b) in AGENT_FEATURES.items()}
        obs["critic"] = self.window_means[t]
        return obs

    def step(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """Act at bar ``t`` with ``actions`` ``(N, 3)``; resets the finished environments."""
        position = (actions.astype(np.float32) - 1.0).mean(-1)
        next_t = self.t + 1
        reward = position * self.log_returns[next_t] - self.cost * np.abs(position - self.position)
        self.step_count += 1
        self.equity = (self.equity * np.exp(reward)).astype(np.float32)
        terminated = next_t >= self.last_bar
        truncated = (self.step_count >= self.episode_len) & ~terminated
        out = {
            "reward": reward.astype(np.float32),
            "terminated": terminated,
            "truncated": truncated,
            "position": position,
            "equity": self.equity.copy(),
            "next_critic_obs": self.window_means[next_t],
        }
        self.t = next_t
        self.position = position
        self.reset(terminated | truncated)
        return out


# ----------------------------------------------------------------------------- MAPPO pieces


class ValueNorm:
    """MAPPO's ValueNorm: debiased running mean and variance of the value targets."""

    def __init__(self, beta: float = 0.99999, epsilon: float = 1e-5, device: str = "cpu"):
        self.beta, self.epsilon = beta, epsilon
        self.running_mean = torch.zeros((), device=device)
        self.running_mean_sq = torch.zeros((), device=device)
        self.debiasing_term = torch.zeros((), device=device)

    def update(self, x: torch.Tensor) -> None:
        b = self.beta
        self.running_mean = b * self.running_mean + (1 - b) * x.mean()
        self.running_mean_sq = b * self.running_mean_sq + (1 - b) * (x**2).mean()
        self.debiasing_term = b * self.debiasing_term + (1 - b)

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        denom = self.debiasing_term.clamp(min=self.epsilon)
        mean = self.running_mean / denom
        var = (self.running_mean_sq / denom - mean**2).clamp(min=1e-2)
        return mean, var

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return (x - mean) / var.sqrt()

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return x * var.sqrt() + mean


def compute_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """GAE over ``(T, N)`` tensors; returns ``(advantages, returns)``."""
    not_term = 1.0 - terminated.float()
    not_done = 1.0 - (terminated | truncated).float()
    deltas = rewards + gamma * not_term * next_values - values
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        last = deltas[t] + gamma * lam * not_done[t] * last
        advantages[t] = last
    return advantages, advantages + values


class TorchMAPPO:
    """MAPPO over the ``bridge.torch_reference`` models and a NumPy environment."""

    def __init__(
        self,
        cfg: Config,
        env_params: market.EnvParams,
        state_dicts: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        seed: int | None = None,
        device: str = "cpu",
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        t = cfg.training
        seed = cfg.seed if seed is None else seed
        torch.manual_seed(seed)
        self.models = build_reference_models(model_configs(cfg))
        for name, model in self.models.items():
            if state_dicts is not None:
                model.load_state_dict(state_dicts[name], strict=True)
            model.to(self.device)
            model.eval()  # rollouts and losses in eval mode, as marl-jax
        self.rnns = [m for model in self.models.values() for m in model.modules()]
        self.rnns = [m for m in self.rnns if isinstance(m, torch.nn.RNNBase)]
        if self.device.type == "cuda":
            for rnn in self.rnns:
                rnn.dropout = 0.0  # eval mode's function, in the training mode cuDNN needs
        self.optimizers = {
            name: torch.optim.Adam(
                model.parameters(),
                lr=t.critic_lr if name == "critic" else t.actor_lr,
                eps=t.adam_eps,
            )
            for name, model in self.models.items()
        }
        self.base_lr = {name: opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()}
        self.num_updates = max(1, t.total_timesteps // (t.num_envs * t.rollout_len))
        self.anneal_steps = self.num_updates * t.update_epochs * t.num_minibatches
        self.minibatch_steps = 0
        self.env = NumpyMarketEnv(env_params, t.num_envs, np.random.default_rng(seed))
        self.value_norm = ValueNorm(device=device)

    # ------------------------------------------------------------------ rollout

    @torch.no_grad()
    def rollout(self) -> dict[str, torch.Tensor]:
        t = self.cfg.training
        n, steps = t.num_envs, t.rollout_len
        env = self.env
        obs_buf: dict[str, list[torch.Tensor]] = {name: [] for name in MODEL_NAMES}
        keys = ("actions", "log_probs", "values", "next_values", "rewards", "terminated")
        buf: dict[str, list] = {k: [] for k in (*keys, "truncated", "position", "equity", "bar")}
        for _ in range(steps):
            buf["bar"].append(self._tensor(env.t.copy()))
            obs = {k: self._tensor(v) for k, v in env.observations(env.t).items()}
            outs = [self.models[name](obs[name]) for name in AGENT_NAMES]
            actions = torch.stack([o["action"] for o in outs], -1)
            log_probs = torch.stack([o["log_prob"] for o in outs], -1)
            info = env.step(actions.cpu().numpy())
            both = torch.cat([obs["critic"], self._tensor(info["next_critic_obs"])])
            values = self.models["critic"](both)["value"]
            for name in MODEL_NAMES:
                obs_buf[name].append(obs[name])
            buf["actions"].append(actions)
            buf["log_probs"].append(log_probs)
            buf["values"].append(values[:n])
            buf["next_values"].append(values[n:])
            for k in ("reward", "terminated", "truncated", "position", "equity"):
                buf["rewards" if k == "reward" else k].append(self._tensor(info[k]))
        out = {f"obs/{name}": torch.stack(v) for name, v in obs_buf.items()}
        out.update({k: torch.stack(v) for k, v in buf.items()})
        return out

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ learning

    def loss(self, mb: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = self.cfg.training
        metrics = {}
        actor_loss = torch.zeros((), device=self.device)
        for i, name in enumerate(AGENT_NAMES):
            out = self.models[name].evaluate_actions(mb[f"obs/{name}"], mb["actions"][:, i])
            log_ratio = out["log_prob"] - mb["log_probs"][:, i]
            ratio = log_ratio.exp()
            adv = mb["advantages"]
            surrogate = torch.min(ratio * adv, ratio.clamp(1 - t.clip_eps, 1 + t.clip_eps) * adv)
            pg_loss = -surrogate.mean()
            entropy = out["entropy"].mean()
            actor_loss = actor_loss + pg_loss - t.ent_coef * entropy
            with torch.no_grad():
                metrics[f"{name}/policy_loss"] = pg_loss.detach()
                metrics[f"{name}/entropy"] = entropy.detach()
                metrics[f"{name}/approx_kl"] = ((ratio - 1) - log_ratio).mean()
                metrics[f"{name}/clip_frac"] = ((ratio - 1).abs() > t.clip_eps).float().mean()
        values = self.models["critic"](mb["obs/critic"])["value"]
        old, targets = mb["values"], mb["targets"]

        def elem(pred):
            if t.use_huber_loss:
                return F.huber_loss(pred, targets, reduction="none", delta=t.huber_delta)
            return 0.5 * (targets - pred) ** 2

        v_loss = elem(values)
        if t.use_clipped_value_loss:
            v_clipped = old + (values - old).clamp(-t.clip_eps, t.clip_eps)
            v_loss = torch.max(v_loss, elem(v_clipped))
        v_loss = v_loss.mean()
        total = actor_loss + t.value_loss_coef * v_loss
        metrics.update(
            value_loss=v_loss.detach(), actor_loss=actor_loss.detach(), loss=total.detach()
        )
        return total, metrics

    def prepare_batch(self, roll: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """GAE, ValueNorm update, advantage normalisation; the flattened training batch."""
        t = self.cfg.training
        vn = self.value_norm
        values, next_values = roll["values"], roll["next_values"]
        if t.use_valuenorm:
            values, next_values = vn.denormalise(values), vn.denormalise(next_values)
        adv, returns = compute_gae(
            roll["rewards"],
            values,
            next_values,
            roll["terminated"],
            roll["truncated"],
            t.gamma,
            t.gae_lambda,
        )
        if t.use_valuenorm:
            vn.update(returns)
            targets = vn.normalise(returns)
        else:
            targets = returns
        if t.normalise_advantages:
            adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
        batch = {k: v for k, v in roll.items() if k.startswith("obs/")}
        batch.update(
            bar=roll["bar"],
            actions=roll["actions"],
            log_probs=roll["log_probs"],
            values=roll["values"],
            advantages=adv,
            targets=targets,
        )
        return {k: v.flatten(0, 1) for k, v in batch.items()}

    def learn(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """``update_epochs`` x ``num_minibatches`` shuffled minibatch steps."""
        t = self.cfg.training
        size = batch["actions"].shape[0]
        if size % t.num_minibatches:
            raise ValueError(f"batch of {size} does not split into {t.num_minibatches} minibatches")
        history: dict[str, list[torch.Tensor]] = {}
        if self.device.type == "cuda":
            for rnn in self.rnns:
                rnn.train()
        for _ in range(t.update_epochs):
            for idx in torch.randperm(size, device=self.device).view(t.num_minibatches, -1):
                mb = {k: v[idx] for k, v in batch.items()}
                loss, metrics = self.loss(mb)
                for opt in self.optimizers.values():
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                self._set_learning_rates()
                for name, model in self.models.items():
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                    metrics[f"{name}/grad_norm"] = norm
                    self.optimizers[name].step()
                self.minibatch_steps += 1
                for k, v in metrics.items():
                    history.setdefault(k, []).append(v)
        for rnn in self.rnns:
            rnn.eval()
        return {k: float(torch.stack(v).mean()) for k, v in history.items()}

    def _set_learning_rates(self) -> None:
        if not self.cfg.training.anneal_lr:
            return
        frac = max(0.0, 1.0 - self.minibatch_steps / self.anneal_steps)
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = self.base_lr[name] * frac

    def update(self) -> dict[str, float]:
        """One MAPPO update: rollout, GAE, PPO epochs."""
        roll = self.rollout()
        metrics = self.learn(self.prepare_batch(roll))
        done = roll["terminated"] | roll["truncated"]
        metrics["average_reward"] = float(roll["rewards"].mean())
        metrics["mean_abs_position"] = float(roll["position"].abs().mean())
        metrics["episodes_done"] = float(done.sum())
        return metrics


# ----------------------------------------------------------------------------- checks


def run_checks(cfg: Config, env_params: market.EnvParams) -> bool:
    """Cheap correctness checks of the baseline against marl-jax; prints one line per check."""
    ok = True

    def report(name: str, passed: bool, detail: str) -> None:
        nonlocal ok
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'} {name}: {detail}")

    algo, state = jax_initial_state(cfg, env_params)
    trainer = TorchMAPPO(cfg, env_params, torch_state_dicts(algo, state))
    env = trainer.env

    # Observations: the NumPy windows equal marl-jax's at the same bars.
    obs_np = env.observations(env.t)
    obs_j = market.observations(env_params, env.t)
    diff = max(float(np.abs(obs_np[k] - np.asarray(obs_j[k])).max()) for k in MODEL_NAMES)
    report("env observations (NumPy vs market.observations)", diff == 0.0, f"max diff {diff:g}")

    # One step: rewards, flags and bootstrap observations equal market.step's.
    rng = np.random.default_rng(1)
    actions = rng.integers(0, 3, (env.num_envs, 3))
    env.position[:] = rng.uniform(-1, 1, env.num_envs).astype(np.float32)
    env.step_count[0] = cfg.env.episode_len - 1  # truncates
    env.t[-1] = env.last_bar - 1  # terminates
    env_state = market.EnvState(
        t=jnp.asarray(env.t, jnp.int32),
        start=jnp.asarray(env.t, jnp.int32),
        step_count=jnp.asarray(env.step_count, jnp.int32),
        position=jnp.asarray(env.position),
        equity=jnp.asarray(env.equity),
    )
    keys = jax.random.split(jax.random.key(0), env.num_envs)
    _, _, reward_j, _, info_j = jax.vmap(market.step, in_axes=(0, 0, 0, None))(
        keys, env_state, jnp.asarray(actions, jnp.int32), env_params
    )
    info = env.step(actions)
    diffs = [
        float(np.abs(info["reward"] - np.asarray(reward_j)).max()),
        float(np.abs(info["next_critic_obs"] - np.asarray(info_j["next_critic_obs"])).max()),
        float(np.abs(info["equity"] - np.asarray(info_j["equity"])).max()),
    ]
    flags = all(np.array_equal(info[k], np.asarray(info_j[k])) for k in ("terminated", "truncated"))
    report(
        "env step (NumPy vs market.step)",
        flags
        and max(diffs) < 1e-6
        and bool(info["terminated"][-1])
        and bool(env.num_envs < 2 or info["truncated"][0]),
        f"reward/next critic obs/equity max diff {diffs[0]:.1e}/{diffs[1]:.1e}/{diffs[2]:.1e}, "
        f"terminated/truncated {'equal' if flags else 'DIFFER'}",
    )

    # Initial models: same weights, same outputs on one observation batch.
    obs = env.observations(env.t)
    for name in AGENT_NAMES:
        out_j = algo.modules[name].apply(algo.variables(state, name), obs[name], deterministic=True)
        with torch.no_grad():
            out_t = trainer.models[name](torch.from_numpy(obs[name]), deterministic=True)
        diff = max(
            float(np.abs(np.asarray(out_j[key]) - out_t[key].numpy()).max())
            for key in ("action_probs", "log_prob", "value")
        )
        same = np.array_equal(np.asarray(out_j["action"]), out_t["action"].numpy())
        report(
            f"initial {name} outputs",
            same and diff < 1e-4,
            f"probs/log_prob/value max diff {diff:.1e}, greedy actions "
            f"{'equal' if same else 'DIFFER'}",
        )
    value_j = algo.team.critic_value(algo.variables(state, "critic"), obs["critic"])
    with torch.no_grad():
        value_t = trainer.models["critic"](torch.from_numpy(obs["critic"]))["value"].numpy()
    diff = float(np.abs(np.asarray(value_j) - value_t).max())
    report("initial critic value", diff < 1e-4, f"max diff {diff:.1e}")

    # GAE, ValueNorm and advantage normalisation on a PyTorch rollout.
    roll = trainer.rollout()
    traj = Transition(
        obs_key=jnp.asarray(roll["bar"].numpy(), jnp.int32),
        actions=jnp.asarray(roll["actions"].numpy(), jnp.int32),
        log_probs=jnp.asarray(roll["log_probs"].numpy()),
        value=jnp.asarray(roll["values"].numpy()),
        next_value=jnp.asarray(roll["next_values"].numpy()),
        reward=jnp.asarray(roll["rewards"].numpy()),
        terminated=jnp.asarray(roll["terminated"].numpy()),
        truncated=jnp.asarray(roll["truncated"].numpy()),
        stats={
            "position": jnp.asarray(roll["position"].numpy()),
            "equity": jnp.asarray(roll["equity"].numpy()),
        },
    )
    adv_j, targets_j, _ = algo.advantages(state, traj)
    batch = trainer.prepare_batch(roll)
    diffs = [
        float(np.abs(np.asarray(a).reshape(-1) - b.numpy()).max())
        for a, b in ((adv_j, batch["advantages"]), (targets_j, batch["targets"]))
    ]
    report(
        "advantages and value targets (vs MAPPO.advantages)",
        max(diffs) < 1e-4,
        f"max diff {diffs[0]:.1e} / {diffs[1]:.1e}",
    )

    # The loss and each model's gradient norm on one minibatch, same weights.
    idx = torch.arange(batch["actions"].shape[0] // cfg.training.num_minibatches)
    mb = {k: v[idx] for k, v in batch.items()}
    loss_t, metrics_t = trainer.loss(mb)
    for opt in trainer.optimizers.values():
        opt.zero_grad(set_to_none=True)
    loss_t.backward()
    batch_j = Batch(
        obs_key=jnp.asarray(mb["bar"].numpy(), jnp.int32),
        actions=jnp.asarray(mb["actions"].numpy(), jnp.int32),
        log_probs=jnp.asarray(mb["log_probs"].numpy()),
        value=jnp.asarray(mb["values"].numpy()),
        advantages=jnp.asarray(mb["advantages"].numpy()),
        targets=jnp.asarray(mb["targets"].numpy()),
    )
    grads_j, metrics_j = jax.grad(algo.loss, has_aux=True)(
        state.params, state.constants, batch_j, env_params, state.hparams
    )
    diffs = {
        k: abs(float(metrics_t[k]) - float(metrics_j[k]))
        for k in ("loss", "actor_loss", "value_loss")
    }
    for name, model in trainer.models.items():
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm_t = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        norm_j = float(optax.tree.norm(grads_j[name]))
        diffs[f"{name} grad norm"] = abs(norm_t - norm_j) / max(norm_j, 1e-12)
    report(
        "minibatch loss and gradient norms (vs MAPPO.loss)",
        max(diffs.values()) < 1e-3,
        ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + " (abs; grad norms relative)",
    )

    # One update: finite losses, every model's weights move.
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in trainer.models.items()}
    metrics = trainer.update()
    finite = all(np.isfinite(v) for v in metrics.values())
    report(
        "update losses finite",
        finite,
        ", ".join(f"{k} {metrics[k]:.4g}" for k in ("loss", "actor_loss", "value_loss")),
    )
    for name, model in trainer.models.items():
        moved = max(
            float((p.detach() - b).abs().max())
            for p, b in zip(model.parameters(), before[name], strict=True)
        )
        report(f"update moves {name}", moved > 0, f"max parameter change {moved:.2e}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="run the correctness checks and exit")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the models; the env is NumPy)")
    args = ap.parse_args()
    from marl_jax.run.setup import env_params_for, load_market

    cfg = load_config(args.config, args.set)
    env_params = env_params_for(cfg, load_market(cfg), "train", None)
    if args.check:
        sys.exit(0 if run_checks(cfg, env_params) else 1)
    algo, state = jax_initial_state(cfg, env_params)
    trainer = TorchMAPPO(cfg, env_params, torch_state_dicts(algo, state), device=args.device)
    t = cfg.training
    for i in range(args.updates + 1):
        start = time.perf_counter()
        metrics = trainer.update()  # float() of the metrics synchronises the device
        ms = (time.perf_counter() - start) * 1e3
        print(
            f"update {i}{' (warm-up)' if i == 0 else ''}: {ms:.0f} ms, "
            f"{t.num_envs * t.rollout_len / ms * 1e3:,.0f} env steps/s, "
            f"loss {metrics['loss']:.4g}, average reward {metrics['average_reward']:.2e}"
        )


if __name__ == "__main__":
    main()
