"""Run a policy or the baselines over a whole split: metrics and equity curves (no plotting;
:mod:`marl_jax.run.plots` draws them).

Public API
----------
``evaluate_policy(policy_fn, bars_or_params, split="test", *, norm=None, cost_bps=1.0,
split_fractions=(0.7, 0.15, 0.15), periods_per_year=None, batch_size=8192) -> dict``
    ``policy_fn`` maps an observation dict batched over time (leading axis ``N``, the same keys
    and per-step shapes as the environment's) to int actions ``(N, 3)``. It is called on chunks
    of at most ``batch_size`` steps, every chunk padded to ``batch_size`` rows (so a jitted
    policy compiles once). Given ``EnvParams`` the split, normalisation and cost are those of the
    params and ``split``, ``norm``, ``cost_bps`` are ignored; given ``Bars``, params are built
    with :func:`~marl_jax.env.market.make_env_params` (``norm=None`` fits on the train split).
``evaluate_split(policy_fn, bars_or_params, split="test", norm=None, cost_bps=1.0, *,
seed=0, linear=None, ...) -> (metrics, baseline_metrics, curves)``
    The policy and every baseline; ``curves`` maps ``"policy"`` and each baseline name to its
    equity curve (``N + 1`` values starting at 1).
``run_policy`` / ``run_baseline`` / ``simulate`` return an :class:`EvalRun` (positions,
rewards, pnl, equity, metrics) for finer control.
``BASELINES = ("buy_and_hold", "flat", "random", "momentum", "linear")``
    Positions 1; 0; the position of three uniform random actions; the sign of the last
    ``MOMENTUM_LOOKBACK`` (20) bars' log return; the sign of a :class:`LinearBaseline`'s
    prediction. ``linear`` needs the fitted model (``linear=LinearBaseline.fit(train_params)``,
    fitted on the train split); without it the other four are evaluated.
``ORACLE = "oracle"``
    One more baseline where the bars carry a planted edge (:mod:`marl_jax.env.plant`): given
    ``oracle=s``, the per-bar signal ``s[t]`` aligned with the params' bars, its position is
    ``sign(s[t])``. ``capture(by_name)`` is the policy's net active IR over the oracle's.

A split of ``EnvParams`` is evaluated at every bar ``t`` in ``[start_lo, last_bar)``: at each
bar the position is set and the reward is exactly the environment's,
``position_t * r_{t+1} - cost_bps * 1e-4 * |position_t - position_{t-1}|`` with a flat position
before the first bar. Actions become positions in :func:`positions_for` and the cost is
charged by :func:`marl_jax.metrics.net_returns`: the policy and every baseline pay through them.

Metrics: :func:`marl_jax.metrics.summary` of the net returns, with buy-and-hold's net returns
over the same bars as the benchmark (alpha, beta, active IR) and the cost sensitivity at 0x, 1x
and 2x the split's ``cost_bps``. ``periods_per_year`` defaults to the split's own
(``params.periods_per_year``: the bars' calendar measured on their train split, or what the
run set, see :func:`marl_jax.env.market.make_env_params`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from marl_jax import metrics

from .data import Bars
from .features import NUM_FEATURES, FeatureNorm
from .market import (
    DEFAULT_FRACTIONS,
    EnvParams,
    make_env_params,
    net_returns,
    next_signal,
    observation_at,
    observations,
    periods_per_year_at,
    positions_from_actions,
)

__all__ = [
    "BASELINES",
    "ORACLE",
    "capture",
    "eval_bars",
    "LINEAR_RIDGE",
    "MOMENTUM_LOOKBACK",
    "EvalRun",
    "TracedPolicy",
    "held_signals",
    "LinearBaseline",
    "periods_per_year_at",
    "positions_for",
    "simulate",
    "run_policy",
    "run_baseline",
    "evaluate_policy",
    "evaluate_baselines",
    "evaluate_split",
]

BASELINES = ("buy_and_hold", "flat", "random", "momentum", "linear")
# Under observe_position a TracedPolicy is evaluated at every signal the evaluation can hold,
# when there are at most this many: 7 under target; under delta the float32 sums of steps
# rarely meet again, so it runs in a scan.
MAX_HELD_SIGNALS = 32
ORACLE = "oracle"
MOMENTUM_LOOKBACK = 20
# Ridge penalty of the linear baseline, per bar (the loss is the mean squared error plus
# LINEAR_RIDGE * |w|^2). The features are normalised to about unit scale, so a direction of
# the features with variance v keeps v / (v + 0.1) of its least-squares weight: the main
# directions are barely shrunk, near-collinear ones (v << 0.1), where least squares fits
# noise, are. Fixed, so that choosing it reads no validation or test bar.
LINEAR_RIDGE = 0.1
_batched_observations = jax.jit(observations)
_one_observation = jax.jit(
    lambda params, t, held: jax.tree.map(lambda x: x[None], observation_at(params, t, held))
)


@dataclass(frozen=True, eq=False)
class TracedPolicy:
    """A ``policy_fn`` that JAX can trace: greedy actions ``act(args, obs)`` ``(N, 3)`` of an
    observation dict batched over ``N``, ``args`` a pytree (the models' variables, a training
    state). Called, it is a NumPy policy like any other; under ``observe_position`` the
    evaluator runs it batched over the signals a policy can hold, or bar after bar inside one
    compiled ``lax.scan`` (see :func:`run_policy`)."""

    act: Callable[[Any, dict], jax.Array]
    args: Any
    _jitted: Callable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_jitted", jax.jit(self.act))

    def __call__(self, obs: dict) -> np.ndarray:
        return np.asarray(self._jitted(self.args, obs))


@dataclass(frozen=True)
class EvalRun:
    bar_index: np.ndarray  # (N,) bars the positions were set at
    positions: np.ndarray  # (N,)
    rewards: np.ndarray  # (N,) net of costs
    pnl: np.ndarray  # (N,) gross: position * next return
    equity: np.ndarray  # (N + 1,) starting at 1
    metrics: dict


@dataclass(frozen=True)
class LinearBaseline:
    """A ridge regression of the next bar's log return on the 13 normalised features of the
    current bar; its position is the sign of the prediction."""

    weights: np.ndarray  # (13,)
    intercept: float
    ridge: float = LINEAR_RIDGE

    @classmethod
    def fit(
        cls,
        train_params: EnvParams,
        ridge: float = LINEAR_RIDGE,
        columns: Sequence[int] | None = None,
    ) -> LinearBaseline:
        """Fits on every evaluation bar of ``train_params`` (the train split: its targets
        ``r[t+1]`` stay inside the split). The intercept is not penalised. ``columns`` limits
        the regression to those features (an agent's slice, say); the others weigh 0."""
        ts = eval_bars(train_params)
        cols = np.arange(NUM_FEATURES) if columns is None else np.asarray(columns, dtype=int)
        x = np.asarray(train_params.features, dtype=np.float64)[ts][:, cols]
        y = np.asarray(train_params.log_returns, dtype=np.float64)[ts + 1]
        x_mean, y_mean = x.mean(axis=0), y.mean()
        xc = x - x_mean
        gram = xc.T @ xc / len(ts) + ridge * np.eye(len(cols))
        fitted = np.linalg.solve(gram, xc.T @ (y - y_mean) / len(ts))
        weights = np.zeros(NUM_FEATURES)
        weights[cols] = fitted
        return cls(weights, float(y_mean - x_mean @ fitted), float(ridge))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted next-bar log returns for normalised features ``(N, 13)``."""
        return np.asarray(features, dtype=np.float64) @ self.weights + self.intercept

    def positions(self, params: EnvParams) -> np.ndarray:
        """The sign of the prediction at every evaluation bar of ``params``."""
        return np.sign(self.predict(np.asarray(params.features)[eval_bars(params)]))


def eval_bars(params: EnvParams) -> np.ndarray:
    """The bars ``[start_lo, last_bar)`` at which ``params`` is evaluated."""
    return np.arange(int(params.start_lo), int(params.last_bar))


def positions_for(actions: np.ndarray, params: EnvParams) -> np.ndarray:
    """The positions that int actions ``(N, 3)`` taken at consecutive bars of ``params`` hold,
    as the environment maps them."""
    return np.asarray(positions_from_actions(actions, params, eval_bars(params)))


def simulate(
    positions: np.ndarray, params: EnvParams, periods_per_year: float | None = None
) -> EvalRun:
    """Score positions set at every evaluation bar of ``params`` (see the module docstring)."""
    ts = eval_bars(params)
    positions = np.asarray(positions, dtype=np.float32).reshape(-1)
    if positions.shape != ts.shape:
        raise ValueError(f"expected {len(ts)} positions, got {positions.shape}")
    next_r = np.asarray(params.log_returns, dtype=np.float64)[ts + 1]
    pnl, cost = (np.asarray(x) for x in net_returns(positions, params, ts))
    rewards = pnl - cost  # float32, as the environment's reward under env.reward=pnl
    hold = np.ones_like(positions)
    ppy = periods_per_year or params.periods_per_year
    scores = metrics.summary(
        rewards,
        positions,
        metrics.net_returns(next_r, hold, params.cost_bps),
        ppy,
        gross=pnl,
        benchmark_gross=next_r,
        benchmark_positions=hold,
        cost_bps=params.cost_bps,
    )
    equity = np.exp(np.r_[0.0, np.cumsum(rewards, dtype=np.float64)])
    return EvalRun(ts, positions, rewards, pnl, equity, scores)


def _as_params(bars_or_params, split, norm, cost_bps, split_fractions) -> EnvParams:
    """``EnvParams`` as given, or built from ``Bars`` for ``split``."""
    if isinstance(bars_or_params, EnvParams):
        return bars_or_params
    if not isinstance(bars_or_params, Bars):
        raise TypeError("expected Bars or EnvParams")
    return make_env_params(
        bars_or_params, split, cost_bps=cost_bps, norm=norm, split_fractions=split_fractions
    )


def run_policy(
    policy_fn: Callable[[dict], np.ndarray],
    params: EnvParams,
    *,
    periods_per_year: float | None = None,
    batch_size: int = 8192,
) -> EvalRun:
    """``policy_fn`` run at every evaluation bar of ``params``, in padded chunks, and scored.
    Under ``params.observe_position`` each bar's observation holds the signal the policy's own
    previous actions set (flat before the first bar): a :class:`TracedPolicy` is run at every
    bar for each signal the evaluation can hold (:func:`held_signals`; seven under ``target``)
    and the chain of signals is followed from flat, or, with more signals than
    :data:`MAX_HELD_SIGNALS` (``delta``), run bar after bar in one ``lax.scan``; any other
    ``policy_fn`` is called bar after bar."""
    ts = eval_bars(params)
    if params.observe_position:
        actions = _held_actions(policy_fn, params, ts, batch_size)
    else:
        actions = _batched_actions(policy_fn, params, ts, batch_size)
    return simulate(positions_for(actions, params), params, periods_per_year)


def _batched_actions(
    policy_fn: Callable, params: EnvParams, ts: np.ndarray, batch_size: int, held: float = 0.0
) -> np.ndarray:
    """The actions ``(N, 3)`` at the bars ``ts``, in padded chunks; under ``observe_position``
    every bar observes the signal ``held``."""
    chunks = []
    for a in range(0, len(ts), batch_size):
        idx = ts[a : a + batch_size]
        padded = (
            np.r_[idx, np.full(batch_size - len(idx), idx[-1])] if len(ts) > batch_size else idx
        )
        positions = jnp.full(len(padded), held, jnp.float32) if params.observe_position else None
        obs = _batched_observations(params, jnp.asarray(padded), positions)
        chunks.append(_checked_actions(policy_fn(obs), len(padded))[: len(idx)])
    return np.concatenate(chunks)


def _checked_actions(actions: np.ndarray, rows: int) -> np.ndarray:
    actions = np.asarray(actions)
    if actions.shape != (rows, 3):
        raise ValueError(
            f"policy_fn returned actions of shape {actions.shape}, expected ({rows}, 3)"
        )
    if actions.min() < 0 or actions.max() > 2:
        raise ValueError("policy actions must be 0, 1 or 2")
    return actions.astype(np.int64)


@functools.partial(jax.jit, static_argnums=0)
def _scan_held(act: Callable, args: Any, params: EnvParams, ts: jax.Array) -> jax.Array:
    """The actions ``(N, 3)`` of ``act`` at the bars ``ts``, each bar observing the signal the
    actions before it set."""

    def one(held, t):
        obs = jax.tree.map(lambda x: x[None], observation_at(params, t, held))
        actions = act(args, obs)[0]
        return next_signal(held, actions, params), actions

    return jax.lax.scan(one, jnp.zeros((), jnp.float32), ts)[1]


# Action triples whose votes are the seven a mean of three votes takes (-1, -2/3, ..., 1).
_VOTES = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 1, 1], [1, 1, 2], [1, 2, 2], [2, 2, 2]])


def held_signals(params: EnvParams) -> tuple[np.ndarray, np.ndarray] | None:
    """``(signals (S,), moves (S, 7))``: every signal an evaluation from flat can hold under
    ``params``' action mode, and the index of the signal each of the seven votes moves it to
    (votes by their sum of actions, 0 to 6); None when there are more than
    :data:`MAX_HELD_SIGNALS` (a ``delta_step`` whose multiples do not meet)."""
    values = [np.float32(0.0)]
    index = {values[0].item(): 0}
    moves: list[list[int]] = []
    while len(moves) < len(values):
        held = jnp.asarray(values[len(moves)], jnp.float32)
        row = []
        for nxt in np.asarray(next_signal(held, jnp.asarray(_VOTES), params), np.float32):
            if nxt.item() not in index:
                if len(values) == MAX_HELD_SIGNALS:
                    return None
                index[nxt.item()] = len(values)
                values.append(nxt)
            row.append(index[nxt.item()])
        moves.append(row)
    return np.asarray(values, np.float32), np.asarray(moves, np.int64)


def _held_actions(
    policy_fn: Callable, params: EnvParams, ts: np.ndarray, batch_size: int
) -> np.ndarray:
    """The actions at the consecutive bars ``ts`` from a flat start, each observing the signal
    held there. A :class:`TracedPolicy` (a pure function of the observation) is run at every
    bar for every signal the evaluation can hold (:func:`held_signals`: 7 under ``target``),
    batched, and the signals are then chained from flat (or, with too many signals, in one
    ``lax.scan``); any other policy is called bar after bar."""
    if isinstance(policy_fn, TracedPolicy):
        lattice = held_signals(params)
        if lattice is None:
            actions = _scan_held(policy_fn.act, policy_fn.args, params, jnp.asarray(ts, jnp.int32))
            return _checked_actions(np.asarray(actions), len(ts))
        signals, moves = lattice
        every = np.stack(
            [_batched_actions(policy_fn, params, ts, batch_size, float(v)) for v in signals], 1
        )  # (N, S, 3)
        chosen = np.empty((len(ts), 3), np.int64)
        at = 0
        for k in range(len(ts)):
            chosen[k] = every[k, at]
            at = moves[at, int(chosen[k].sum())]
        return chosen
    held = jnp.zeros((), jnp.float32)
    rows = []
    for t in ts:
        actions = _checked_actions(policy_fn(_one_observation(params, int(t), held)), 1)
        held = next_signal(held, jnp.asarray(actions[0]), params)
        rows.append(actions[0])
    return np.stack(rows) if rows else np.zeros((0, 3), np.int64)


def run_baseline(
    name: str,
    params: EnvParams,
    *,
    seed: int = 0,
    periods_per_year: float | None = None,
    linear: LinearBaseline | None = None,
    oracle: np.ndarray | None = None,
) -> EvalRun:
    """The baseline ``name`` (one of :data:`BASELINES`, or :data:`ORACLE` with ``oracle``, the
    planted signal of every bar of ``params``) at every evaluation bar, scored."""
    ts = eval_bars(params)
    if name == "buy_and_hold":
        positions = np.ones(len(ts))
    elif name == "flat":
        positions = np.zeros(len(ts))
    elif name == "random":
        actions = np.random.default_rng(seed).integers(0, 3, size=(len(ts), 3))
        positions = positions_for(actions, params)
    elif name == "momentum":
        cum = np.cumsum(np.asarray(params.log_returns, dtype=np.float64))
        lag = np.maximum(ts - MOMENTUM_LOOKBACK, 0)
        positions = np.sign(cum[ts] - cum[lag])
    elif name == "linear":
        if linear is None:
            raise ValueError("the linear baseline needs linear=LinearBaseline.fit(train_params)")
        positions = linear.positions(params)
    elif name == ORACLE:
        if oracle is None:
            raise ValueError("the oracle baseline needs oracle=s, the planted signal per bar")
        signal = np.asarray(oracle, dtype=np.float64).reshape(-1)
        if signal.shape != (len(params.log_returns),):
            raise ValueError(
                f"oracle has {signal.shape[0]} bars, the environment {len(params.log_returns)}"
            )
        positions = np.sign(signal[ts])
    else:
        raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
    return simulate(positions, params, periods_per_year)


def evaluate_policy(
    policy_fn: Callable[[dict], np.ndarray],
    bars_or_params: Bars | EnvParams,
    split: str = "test",
    *,
    norm: FeatureNorm | None = None,
    cost_bps: float = 1.0,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    periods_per_year: float | None = None,
    batch_size: int = 8192,
) -> dict:
    """The policy's metrics over ``split`` (see the module docstring)."""
    params = _as_params(bars_or_params, split, norm, cost_bps, split_fractions)
    run = run_policy(policy_fn, params, periods_per_year=periods_per_year, batch_size=batch_size)
    return run.metrics


def evaluate_baselines(
    bars_or_params: Bars | EnvParams,
    split: str = "test",
    *,
    norm: FeatureNorm | None = None,
    cost_bps: float = 1.0,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    periods_per_year: float | None = None,
    seed: int = 0,
    linear: LinearBaseline | None = None,
    oracle: np.ndarray | None = None,
) -> dict[str, EvalRun]:
    """Every baseline of :data:`BASELINES` (``linear`` only when the fitted model is given),
    then :data:`ORACLE` when ``oracle`` is given."""
    params = _as_params(bars_or_params, split, norm, cost_bps, split_fractions)
    names = BASELINES if linear is not None else tuple(b for b in BASELINES if b != "linear")
    names += (ORACLE,) if oracle is not None else ()
    return {
        name: run_baseline(
            name,
            params,
            seed=seed,
            periods_per_year=periods_per_year,
            linear=linear,
            oracle=oracle,
        )
        for name in names
    }


def capture(by_name: Mapping[str, Mapping]) -> float | None:
    """The policy's net active IR over the oracle's, from metrics by name (``policy`` and
    :data:`ORACLE`); None without an oracle or where its active IR is 0."""
    if ORACLE not in by_name or "policy" not in by_name:
        return None
    oracle = float(by_name[ORACLE]["active_ir"])
    return float(by_name["policy"]["active_ir"]) / oracle if oracle != 0.0 else None


def evaluate_split(
    policy_fn: Callable[[dict], np.ndarray],
    bars_or_params: Bars | EnvParams,
    split: str = "test",
    norm: FeatureNorm | None = None,
    cost_bps: float = 1.0,
    *,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    periods_per_year: float | None = None,
    batch_size: int = 8192,
    seed: int = 0,
    linear: LinearBaseline | None = None,
    oracle: np.ndarray | None = None,
) -> tuple[dict, dict[str, dict], dict[str, np.ndarray]]:
    """``(policy metrics, baseline metrics by name, equity curves by name)`` over ``split``
    (the :data:`ORACLE` baseline among them when ``oracle`` is given)."""
    params = _as_params(bars_or_params, split, norm, cost_bps, split_fractions)
    run = run_policy(policy_fn, params, periods_per_year=periods_per_year, batch_size=batch_size)
    baselines = evaluate_baselines(
        params, periods_per_year=periods_per_year, seed=seed, linear=linear, oracle=oracle
    )
    curves = {"policy": run.equity, **{k: v.equity for k, v in baselines.items()}}
    return run.metrics, {k: v.metrics for k, v in baselines.items()}, curves
