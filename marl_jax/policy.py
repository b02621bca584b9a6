"""A trained policy on new bars: decide at a bar, decide at many.

A :class:`Policy` holds the models, their variables, the feature normalisation and window they
were trained with, and the run config they act under (if any), all in memory; it reads no model,
checkpoint or config file. :func:`marl_jax.run.deploy.load_policy` builds one from any model
source (a run, ``RUN:STEP``, a checkpoint step, a model directory or a ``.pt``).
``policy.load_bars(path)`` is :func:`marl_jax.env.data.load_bars` at the file's own interval,
resampled where the run config sets ``env.resample_minutes`` (one line on stderr says so).
``policy.decide(bars, at=None, *, position=None)`` computes the 13
features causally from only the tail of the bars that the decision bar's window needs
(``WARMUP_BARS + window`` bars), normalises them, and runs the three actors greedily (eval
mode, as the trainer's greedy evaluation) and the critic. ``policy.decide_many(bars, start,
stop, *, position=None)`` decides at every bar of a range in one batched, jitted call per chunk.

The decision is one pure function of the models' variables and a batch of normalised feature
windows ``(B, window, 13)`` (:func:`decision_from_windows`), which ``python -m
marl_jax.export`` serialises; its position is the agents' vote ``mean(actions - 1)``.
``Policy`` turns the actions into the environment's position under the modes of the model's
run config (``policy.config``; a policy without one acts with the defaults ``target`` and
``fixed``), with the environment's own
functions (:mod:`marl_jax.env.market`):

- ``env.action_mode: target``: the signal is the vote. ``delta``: the signal is the previous
  one moved by ``delta_step`` times the vote, clipped to [-1, 1]; ``decide`` needs the current
  holding ``position`` (the previous decision's ``signal``), ``decide_many`` starts from
  ``position``, flat by default, at ``start`` as an episode does.
- ``env.position_sizing: fixed``: the position is the signal. ``vol_target``: the signal times
  the bar's volatility scale ``min(target_vol / sigma_t, max_leverage)``. The environment runs
  its EWMA of squared log returns from the file's first bar; a decision reads the closes of
  only the last ``VOL_SPANS_READ * vol_span + 1`` bars (``vol_history``; 1201 for the default
  span 60) and the file's bars per year (:meth:`Policy.periods_per_year`). The older
  returns' weight in the environment's EWMA is ``(1 - 2 / (span + 1)) ** (20 span) <=
  1e-17``, so the scale is the environment's to float32 rounding (a test checks it is equal,
  bar by bar).

A model trained with ``env.observe_position`` (its inputs one wider than the agent table's:
:attr:`Policy.observe_position`; its :attr:`Policy.run_config` says so whatever the run config
it came with) also reads the signal held at the decision bar, as one more actor channel and
critic feature: ``decide`` needs ``position`` then, whatever the action mode, and
``decide_many`` runs the bars one after another in a ``lax.scan``, each observing the signal
the decisions before it set.

The critic reads each window's mean, as the environment's critic observation. The critic's
value is its raw output: in ValueNorm units when the model was trained with
``training.use_valuenorm``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from marl_jax.agents import AGENT_NAMES, FEATURE_NAMES
from marl_jax.config import Config, config_from_dict, config_to_dict
from marl_jax.env import data as bar_data
from marl_jax.env.evaluate import EvalRun, TracedPolicy, run_policy, simulate
from marl_jax.env.features import (
    AGENT_FEATURES,
    NUM_FEATURES,
    WARMUP_BARS,
    FeatureNorm,
    compute_features,
)
from marl_jax.env.market import (
    EnvParams,
    bars_per_year,
    combined_vote,
    env_modes,
    next_signal,
    positions_from_actions,
    vol_scale,
    with_position,
)
from marl_jax.errors import MarlJaxError
from marl_jax.models.registry import module_config, observes_position

__all__ = [
    "ACTION_NAMES",
    "Decision",
    "Ensemble",
    "EnsembleDecision",
    "Policy",
    "PolicyError",
    "decision_from_obs",
    "decision_from_windows",
    "feature_windows",
]

ACTION_NAMES = ("bearish", "neutral", "bullish")
_CHUNK = 1024
# Under env.position_sizing vol_target a decision reads the closes of this many EWMA spans of
# returns before the bar: the weight the environment's EWMA (from the file's first bar) puts on
# older returns is (1 - 2 / (span + 1)) ** (20 * span) <= 1e-17 (span >= 2; span 1 weighs the
# last return only), far below float32 rounding.
VOL_SPANS_READ = 20
_DEFAULTS = Config()  # a model without a run config acts with the default env modes


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


class PolicyError(MarlJaxError, ValueError):
    """A model, bar file or decision request that does not fit; the message is one line."""


@struct.dataclass
class Decision:
    """Decisions at ``B`` bars (leading axis ``B``; NumPy arrays once returned to the caller)."""

    actions: Any  # int32 (B, 3): each agent's action, agents in AGENT_NAMES order
    probs: Any  # float32 (B, 3, 3): each agent's probabilities of actions 0, 1, 2
    position: Any  # float32 (B,): the environment's position (signal x volatility scale);
    # from decision_from_windows alone, the joint vote mean(actions - 1)
    value: Any  # float32 (B,): the critic's value
    signal: Any = None  # float32 (B,): the signal in [-1, 1] before sizing (target: the vote;
    # delta: the previous signal moved by delta_step x the vote)
    bar_index: Any = None  # int (B,): the bars decided at (set by Policy)
    timestamp: Any = None  # datetime64[ns] (B,)

    def __len__(self) -> int:
        return len(self.position)

    def row(self, i: int = -1) -> dict[str, Any]:
        """Decision ``i`` as plain JSON-able values."""
        agents = {
            name: {
                "action": int(self.actions[i, k]),
                "action_name": ACTION_NAMES[int(self.actions[i, k])],
                "probs": [float(p) for p in self.probs[i, k]],
            }
            for k, name in enumerate(AGENT_NAMES)
        }
        out: dict[str, Any] = {}
        if self.timestamp is not None:
            out["timestamp"] = str(np.datetime_as_string(self.timestamp[i], unit="s"))
        if self.bar_index is not None:
            out["bar_index"] = int(self.bar_index[i])
        out |= {"agents": agents, "position": float(self.position[i])}
        if self.signal is not None:
            out["signal"] = float(self.signal[i])
        out["value"] = float(self.value[i])
        return out


@dataclasses.dataclass(frozen=True)
class _Signals:
    """What :func:`marl_jax.env.market.positions_from_actions` reads of ``EnvParams`` to turn
    actions into signals: the action mode and a unit volatility scale."""

    action_mode: str
    delta_step: float
    vol_scale: jax.Array


@functools.partial(jax.jit, static_argnames="delta_step")
def _delta_signals(actions: jax.Array, holding: jax.Array, delta_step: float) -> jax.Array:
    """The environment's ``delta`` signals ``(N,)`` for actions ``(N, 3)`` at consecutive bars,
    moved from the signal ``holding``."""
    steps = jnp.arange(actions.shape[0])
    rule = _Signals("delta", delta_step, jnp.ones(actions.shape[0], jnp.float32))
    return positions_from_actions(actions, rule, steps, holding)


def decision_from_obs(
    modules: Mapping[str, nn.Module], variables: Mapping[str, Mapping], obs: Mapping[str, Any]
) -> Decision:
    """The greedy joint decision for an observation dict batched over ``B`` (the
    environment's keys and per-step shapes): actors and critic in eval mode, attending from
    the last step only, as the trainer acts."""
    actions, probs = [], []
    for name in AGENT_NAMES:
        out = modules[name].apply(
            variables[name], obs[name], deterministic=True, attention_weights=False
        )
        actions.append(out["action"])
        probs.append(out["action_probs"])
    actions = jnp.stack(actions, axis=1)
    value = modules["critic"].apply(variables["critic"], obs["critic"])["value"]
    vote = combined_vote(actions)
    return Decision(
        actions=actions, probs=jnp.stack(probs, axis=1), position=vote, value=value, signal=vote
    )


def obs_from_windows(windows: jax.Array, position: jax.Array | None = None) -> dict[str, jax.Array]:
    """The environment's observation dict from normalised feature windows ``(B, W, 13)``;
    with the held signal ``position`` ``(B,)`` appended (``env.observe_position``) when given."""
    chans = jnp.swapaxes(windows, 1, 2)  # (B, 13, W)
    obs = {name: chans[:, a:b] for name, (a, b) in AGENT_FEATURES.items()}
    obs["critic"] = jnp.mean(windows, axis=1)
    return obs if position is None else with_position(obs, position)


def decision_from_windows(
    modules: Mapping[str, nn.Module],
    variables: Mapping[str, Mapping],
    windows: jax.Array,
    position: jax.Array | None = None,
) -> Decision:
    """The joint decision for normalised feature windows ``(B, window, 13)`` (oldest first),
    and for a model that observes its position, the signal ``position`` ``(B,)`` held at each."""
    return decision_from_obs(modules, variables, obs_from_windows(windows, position))


def held_decisions(
    modules: Mapping[str, nn.Module],
    variables: Mapping[str, Mapping],
    windows: jax.Array,
    holding: jax.Array,
    action_mode: str,
    delta_step: float,
) -> Decision:
    """Decisions at consecutive bars (windows ``(N, window, 13)``) of a model that observes its
    position: each bar observes the signal the decisions before it set, the first ``holding``;
    ``signal`` is each decision's new signal (the environment's ``next_signal``)."""
    rule = _Signals(action_mode, delta_step, jnp.ones((1,), jnp.float32))

    def one(held, window):
        d = decision_from_windows(modules, variables, window[None], held[None])
        signal = next_signal(held, d.actions[0], rule)
        return signal, jax.tree.map(lambda x: x[0], d.replace(signal=signal[None]))

    return jax.lax.scan(one, jnp.asarray(holding, jnp.float32), windows)[1]


def feature_windows(features: np.ndarray, window: int, rows: np.ndarray) -> np.ndarray:
    """``(len(rows), window, 13)``: the windows of ``features`` ending at each of ``rows``."""
    offsets = np.arange(-window + 1, 1)
    return np.ascontiguousarray(features[np.asarray(rows)[:, None] + offsets])


@dataclasses.dataclass
class Policy:
    """Three actors and a critic with the normalisation and window they were trained with, and
    the run config they act under (None: the default env modes); built in memory, or from a
    model source by :func:`marl_jax.run.deploy.load_policy`."""

    modules: dict[str, nn.Module]
    variables: dict[str, dict]
    norm: FeatureNorm
    window: int
    description: str
    config: Config | None = None

    def __post_init__(self) -> None:
        self._programs: tuple[Any, Callable, Callable, Callable] | None = None
        configs = {name: module_config(m) for name, m in self.modules.items()}
        try:
            self.observe_position = observes_position(configs)
        except ValueError as err:
            raise PolicyError(f"{self.description}: {err}") from None
        self._run_config: tuple[Config | None, Config] | None = None

    def _compiled(self) -> tuple[Callable, TracedPolicy, Callable]:
        """The jitted decision ((windows, held signals or None) -> Decision), the greedy
        actions (obs -> actions, a :class:`~marl_jax.env.evaluate.TracedPolicy`) and the
        decisions at consecutive bars of a model that observes its position, with this
        policy's variables as constants of the decision programs: XLA then prepares the
        weights once, at compile time, not at every call (benchmarks/decide.py). Rebuilt if
        ``variables`` is replaced."""
        if self._programs is None or self._programs[0] is not self.variables:
            modules, variables = self.modules, self.variables
            decide = jax.jit(
                lambda windows, held: decision_from_windows(modules, variables, windows, held)
            )
            act = TracedPolicy(
                lambda _, obs: decision_from_obs(modules, variables, obs).actions, None
            )
            held = jax.jit(
                lambda windows, holding, mode, step: held_decisions(
                    modules, variables, windows, holding, mode, step
                ),
                static_argnums=(2, 3),
            )
            self._programs = (variables, decide, act, held)
        return self._programs[1], self._programs[2], self._programs[3]

    # ------------------------------------------------------------------ bars

    @property
    def history(self) -> int:
        """Bars a decision needs: the features' warm-up plus the window."""
        return WARMUP_BARS + self.window

    def load_bars(
        self, path: str | Path, say: Callable[[str], None] | None = _to_stderr
    ) -> bar_data.Bars:
        """A bar file at its own interval, resampled as the model's run config's
        ``env.resample_minutes`` asks (``say`` gets the line saying so)."""
        resample = None if self.config is None else self.config.env.resample_minutes
        return bar_data.load_bars(path, resample_minutes=resample, say=say)

    def periods_per_year(self, bars: bar_data.Bars) -> float:
        """Bars per year on ``bars``: the run config's ``env.periods_per_year`` when set, else
        measured on their train split (:func:`marl_jax.env.market.bars_per_year`)."""
        cfg = self.run_config
        given = cfg.env.periods_per_year
        return float(given) if given is not None else bars_per_year(bars, cfg.env.split_fractions)

    def bar_at(self, bars: bar_data.Bars, at: Any = None, source: str = "bars") -> int:
        """The index of the bar stamped ``at`` (a timestamp or a string; default the last)."""
        if at is None:
            return len(bars) - 1
        try:
            stamp = np.datetime64(at, "ns")
        except ValueError:
            raise PolicyError(
                f"{source}: {at!r} is not a timestamp (e.g. 2024-01-31T14:00)"
            ) from None
        index = int(np.searchsorted(bars.timestamp, stamp))
        if index >= len(bars) or bars.timestamp[index] != stamp:
            first, last = (np.datetime_as_string(bars.timestamp[i], unit="s") for i in (0, -1))
            raise PolicyError(
                f"{source}: no bar is stamped {at} (bars run from {first} to {last}); give the "
                "timestamp of a bar in the file"
            )
        return index

    def _check_history(self, index: int, source: str) -> None:
        if index < self.history - 1:
            raise PolicyError(
                f"{source}: a decision at bar {index} has {index + 1} bars up to it, but needs "
                f"{self.history} (feature warm-up {WARMUP_BARS} + window {self.window}); give "
                "more history"
            )

    # ------------------------------------------------------------------ the environment's position

    @property
    def run_config(self) -> Config:
        """The model's run config, else the default config (a model without one acts with
        its environment settings: ``target``, ``fixed``, 1 bp, 70/15/15 splits); its
        ``env.observe_position`` is always what the models' inputs say."""
        if self._run_config is None or self._run_config[0] is not self.config:
            cfg = self.config or _DEFAULTS
            if cfg.env.observe_position != self.observe_position:  # the models' inputs decide
                data = config_to_dict(cfg)
                data["env"]["observe_position"] = self.observe_position
                cfg = config_from_dict(data, source=f"{self.description} (its models' inputs)")
            self._run_config = (self.config, cfg)
        return self._run_config[1]

    @property
    def modes(self) -> dict[str, Any]:
        """The environment keywords that turn actions into a position (``env.action_mode``,
        ``env.position_sizing`` and their parameters) of :attr:`run_config`."""
        return env_modes(self.run_config)

    def describe_modes(self) -> str:
        """The modes in words, and where they come from."""
        m = self.modes
        mode = m["action_mode"] + (f" (step {m['delta_step']:g})" if self.delta else "")
        sizing = m["position_sizing"]
        if sizing == "vol_target":
            sizing += (
                f" (span {m['vol_span']}, target {m['target_vol']:g}, cap {m['max_leverage']:g})"
            )
        where = "the run config" if self.config else "the defaults: the model has no run config"
        return f"env.action_mode {mode}, env.position_sizing {sizing} ({where})"

    @property
    def delta(self) -> bool:
        """Whether a position depends on the previous one (``env.action_mode: delta``)."""
        return self.modes["action_mode"] == "delta"

    @property
    def vol_history(self) -> int:
        """Bars of closes the volatility scale reads up to a decision bar under
        ``vol_target`` (``VOL_SPANS_READ`` spans of returns); 1 under ``fixed``."""
        m = self.modes
        return VOL_SPANS_READ * m["vol_span"] + 1 if m["position_sizing"] == "vol_target" else 1

    def vol_scale(self, bars: bar_data.Bars, start: int, stop: int) -> np.ndarray:
        """``(stop - start,)`` float32: the position per unit of signal at the bars ``[start,
        stop)``, as the environment built on ``bars`` has it: 1 under ``fixed``; under
        ``vol_target`` the environment's EWMA of squared log returns, run from
        ``vol_history`` bars before ``start`` (from the first bar when the file is shorter:
        then it is the environment's exactly), annualised at :meth:`periods_per_year`."""
        m = self.modes
        if m["position_sizing"] != "vol_target":
            return np.ones(stop - start, np.float32)
        first = max(0, start + 1 - self.vol_history)
        log_returns = np.r_[0.0, np.diff(np.log(bars.close[first:stop]))]
        spans = (
            m["vol_span"],
            m["target_vol"],
            m["max_leverage"],
            self.periods_per_year(bars),
        )
        return vol_scale(log_returns, *spans)[start - first :].astype(np.float32)

    def _holding(self, position: float | None, required: bool) -> float:
        """The signal a decision starts from: ``position`` checked, else flat (an error when
        ``required`` under ``delta`` or for a model that observes its position)."""
        if position is None:
            if required and self.delta:
                raise PolicyError(
                    "the model acts with env.action_mode delta: a decision moves the current "
                    "holding, so pass --position P (position= in Python): the current holding "
                    "before volatility sizing, in [-1, 1] (the previous decision's signal)"
                )
            if required and self.observe_position:
                raise PolicyError(
                    "the model observes its position (env.observe_position): pass --position P "
                    "(position= in Python), the current holding before volatility sizing, in "
                    "[-1, 1] (the previous decision's signal; 0 when flat)"
                )
            return 0.0
        value = float(position)
        if not -1.0 <= value <= 1.0:  # also refuses nan
            raise PolicyError(
                f"--position {position}: the current holding must be in [-1, 1] (-1 short, 0 "
                "flat, 1 long, before volatility sizing)"
            )
        return value

    def _positioned(
        self, out: Decision, bars: bar_data.Bars, start: int, holding: float
    ) -> Decision:
        """``out`` (decided at the consecutive bars from ``start``) with the environment's
        signals and positions, the first moved from ``holding`` under ``delta``."""
        signal = out.signal
        if self.delta:
            step = float(self.modes["delta_step"])
            signal = np.asarray(_delta_signals(out.actions, np.float32(holding), step))
        position = signal * self.vol_scale(bars, start, start + len(signal))
        return out.replace(signal=signal, position=position)

    def normalised_features(self, bars: bar_data.Bars) -> np.ndarray:
        """``(len(bars), 13)`` normalised features of ``bars`` (rows before the warm-up are
        meaningless)."""
        return self.norm.apply(compute_features(bars))

    # ------------------------------------------------------------------ deciding

    def decide_windows(self, windows: np.ndarray, position: Any = None) -> Decision:
        """Decisions for normalised feature windows ``(B, window, 13)``, as NumPy arrays; a
        model that observes its position reads ``position`` (the signal held at each window's
        last bar, a scalar or ``(B,)``; flat when None), any other ignores it."""
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 3 or windows.shape[1:] != (self.window, NUM_FEATURES):
            raise PolicyError(
                f"feature windows have shape {windows.shape}; this model takes "
                f"(B, {self.window}, {NUM_FEATURES})"
            )
        held = None
        if self.observe_position:
            given = 0.0 if position is None else position
            held = np.broadcast_to(np.asarray(given, np.float32), windows.shape[:1])
        return jax.tree.map(np.asarray, self._compiled()[0](windows, held))

    def decide(
        self,
        bars: bar_data.Bars,
        at: Any = None,
        *,
        position: float | None = None,
        source: str = "bars",
    ) -> Decision:
        """The decision at bar ``at`` (a timestamp; default the last bar), from the features of
        only the ``history`` bars up to it (and under ``vol_target`` the closes of the
        ``vol_history`` bars). ``position``: the current holding, in [-1, 1] before sizing;
        required under ``delta`` (ignored under ``target``). Returns one row."""
        holding = self._holding(position, required=True)
        index = self.bar_at(bars, at, source)
        self._check_history(index, source)
        tail = bars[index + 1 - self.history : index + 1]
        windows = self.normalised_features(tail)[None, -self.window :]
        out = self._positioned(self.decide_windows(windows, holding), bars, index, holding)
        return out.replace(bar_index=np.array([index]), timestamp=bars.timestamp[index : index + 1])

    def decide_many(
        self,
        bars: bar_data.Bars,
        start: int | None = None,
        stop: int | None = None,
        *,
        position: float | None = None,
        source: str = "bars",
    ) -> Decision:
        """Decisions at every bar ``t`` in ``[start, stop)`` (default: every bar with enough
        history), batched; the features are computed once, from the bars the range needs. The
        positions follow each other as in an episode from ``start``: from ``position`` (the
        holding before ``start``, in [-1, 1] before sizing), flat by default."""
        holding = self._holding(position, required=False)
        stop = len(bars) if stop is None else stop
        start = self.history - 1 if start is None else start
        if not 0 <= start < stop <= len(bars):
            raise PolicyError(f"{source}: bar range [{start}, {stop}) is empty or outside the file")
        self._check_history(start, source)
        lo = start + 1 - self.history
        feats = self.normalised_features(bars[lo:stop])
        rows = np.arange(start, stop) - lo
        if self.observe_position:  # each bar observes the signal the bars before it set
            windows = feature_windows(feats, self.window, rows).astype(np.float32)
            mode, step = self.modes["action_mode"], float(self.modes["delta_step"])
            held = self._compiled()[2](windows, np.float32(holding), mode, step)
            out = self._positioned(jax.tree.map(np.asarray, held), bars, start, holding)
            index = np.arange(start, stop)
            return out.replace(bar_index=index, timestamp=bars.timestamp[start:stop])
        if len(rows) > _CHUNK:  # equal chunks: one compiled program
            rows = np.r_[rows, np.full(-len(rows) % _CHUNK, rows[-1])]
        parts = [
            self.decide_windows(feature_windows(feats, self.window, rows[a : a + _CHUNK]))
            for a in range(0, len(rows), _CHUNK)
        ]
        out = jax.tree.map(lambda *xs: np.concatenate(xs)[: stop - start], *parts)
        out = self._positioned(out, bars, start, holding)
        index = np.arange(start, stop)
        return out.replace(bar_index=index, timestamp=bars.timestamp[start:stop])

    def policy_fn(self) -> TracedPolicy:
        """A NumPy policy for :mod:`marl_jax.env.evaluate`: greedy actions ``(N, 3)``, a
        :class:`~marl_jax.env.evaluate.TracedPolicy`, so that the evaluator runs a model that
        observes its position batched over the signals it can hold, or in one compiled scan."""
        return self._compiled()[1]

    def run(self, params: EnvParams, batch_size: int = 2048) -> EvalRun:
        """The greedy policy at every evaluation bar of ``params``, scored
        (:func:`marl_jax.env.evaluate.run_policy`)."""
        return run_policy(self.policy_fn(), params, batch_size=batch_size)

    def metadata(self) -> dict[str, Any]:
        """What a deployed decision needs beside the models: features, window, normalisation,
        and ``observe_position: true`` for a model that observes its position."""
        return {
            "feature_names": list(FEATURE_NAMES),
            "agents": list(AGENT_NAMES),
            "action_names": list(ACTION_NAMES),
            "window": self.window,
            "warmup_bars": WARMUP_BARS,
            "normalisation": self.norm.to_dict(),
            "model": self.description,
            **({"observe_position": True} if self.observe_position else {}),
        }


@dataclasses.dataclass(frozen=True)
class EnsembleDecision:
    """An ensemble's decisions at ``B`` bars: each member's, and the mean of their positions,
    signals and critic values."""

    members: tuple[Decision, ...]
    position: np.ndarray  # (B,) the mean of the members' positions
    signal: np.ndarray  # (B,) the mean of the members' signals
    value: np.ndarray  # (B,) the mean of the members' critic values
    bar_index: np.ndarray
    timestamp: np.ndarray

    def __len__(self) -> int:
        return len(self.position)

    def row(self, i: int = -1) -> dict[str, Any]:
        """Decision ``i`` as plain JSON-able values, each member's under ``members``."""
        members = []
        for m in self.members:
            row = m.row(i)
            members.append({k: v for k, v in row.items() if k not in ("timestamp", "bar_index")})
        return {
            "timestamp": str(np.datetime_as_string(self.timestamp[i], unit="s")),
            "bar_index": int(self.bar_index[i]),
            "position": float(self.position[i]),
            "signal": float(self.signal[i]),
            "value": float(self.value[i]),
            "members": members,
        }


def _mean_of(decisions: list[Decision]) -> EnsembleDecision:
    first = decisions[0]
    return EnsembleDecision(
        members=tuple(decisions),
        position=np.mean([d.position for d in decisions], axis=0),
        signal=np.mean([d.signal for d in decisions], axis=0),
        value=np.mean([d.value for d in decisions], axis=0),
        bar_index=first.bar_index,
        timestamp=first.timestamp,
    )


class Ensemble:
    """Policies whose position is the mean of theirs (a run trained with ``ensemble`` K):
    members of one window, one feature normalisation and one way of making a position, each
    deciding as a :class:`Policy` alone (its own previous positions, under ``delta`` or
    ``observe_position``). ``config``: the ensemble run's config, if any; ``sources``: where
    each member was read from, if anywhere."""

    def __init__(
        self,
        members: list[Policy],
        description: str,
        config: Config | None = None,
        sources: tuple[str, ...] = (),
    ):
        if len(members) < 2:
            raise PolicyError(f"{description}: an ensemble needs at least two members")
        first = members[0]
        for i, m in enumerate(members[1:], start=1):
            differs = [
                what
                for what, same in (
                    ("window", m.window == first.window),
                    ("feature normalisation", m.norm.to_dict() == first.norm.to_dict()),
                    ("env modes", m.modes == first.modes),
                    ("observe_position", m.observe_position == first.observe_position),
                )
                if not same
            ]
            if differs:
                raise PolicyError(
                    f"{description}: member {i} ({m.description}) differs from member 0 in its "
                    f"{', '.join(differs)}; an ensemble's members are seeds of one run"
                )
        self.members = tuple(members)
        self.description = description
        self.config = config
        self.sources = tuple(sources)

    # The window, the normalisation and the modes are the members' (checked equal).
    @property
    def norm(self) -> FeatureNorm:
        return self.members[0].norm

    @property
    def window(self) -> int:
        return self.members[0].window

    @property
    def history(self) -> int:
        """Bars a decision needs: the features' warm-up plus the window."""
        return self.members[0].history

    @property
    def observe_position(self) -> bool:
        return self.members[0].observe_position

    @property
    def modes(self) -> dict[str, Any]:
        return self.members[0].modes

    def load_bars(
        self, path: str | Path, say: Callable[[str], None] | None = _to_stderr
    ) -> bar_data.Bars:
        """A bar file as the members read it (:meth:`Policy.load_bars`)."""
        return self.members[0].load_bars(path, say)

    def periods_per_year(self, bars: bar_data.Bars) -> float:
        """Bars per year on ``bars``, as the members annualise."""
        return self.members[0].periods_per_year(bars)

    @property
    def run_config(self) -> Config:
        """The ensemble run's config (else member 0's run config)."""
        return self.config or self.members[0].run_config

    def describe_modes(self) -> str:
        """The members' modes in words, and how many members there are."""
        return f"{self.members[0].describe_modes()}; the mean of {len(self.members)} members"

    def decide(
        self,
        bars: bar_data.Bars,
        at: Any = None,
        *,
        position: float | None = None,
        source: str = "bars",
    ) -> EnsembleDecision:
        """Each member's :meth:`Policy.decide` at ``at``, and their mean."""
        decisions = [m.decide(bars, at, position=position, source=source) for m in self.members]
        return _mean_of(decisions)

    def decide_many(
        self,
        bars: bar_data.Bars,
        start: int | None = None,
        stop: int | None = None,
        *,
        position: float | None = None,
        source: str = "bars",
    ) -> EnsembleDecision:
        """Each member's :meth:`Policy.decide_many` over ``[start, stop)``, and their mean."""
        return _mean_of(
            [
                m.decide_many(bars, start, stop, position=position, source=source)
                for m in self.members
            ]
        )

    def run(self, params: EnvParams, batch_size: int = 2048) -> EvalRun:
        """The mean of the members' positions at every evaluation bar of ``params``, scored
        (each member run as :meth:`Policy.run`)."""
        positions = [m.run(params, batch_size).positions for m in self.members]
        return simulate(np.mean(positions, axis=0), params)
