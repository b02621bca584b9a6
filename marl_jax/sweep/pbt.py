"""Population-based training (PBT) for a population trained as one batched :class:`TrainState`.

Every leaf of the population's state has a leading axis of size ``P`` (one row per member) and
its ``hparams`` is a :class:`HyperParams` of float32 arrays of shape ``(P,)``. A PBT round has
two halves:

* :func:`plan`, on the host in NumPy: rank the alive members by score; each of the bottom
  ``n`` copies a member of the top ``n`` (*exploit*) and perturbs or resamples the copied
  hyperparameters (*explore*). The result is a :class:`PBTPlan`: a source index per member, the
  new hyperparameter table and one JSON-ready event per copier.
* :func:`apply_plan`, on the device in JAX: gather the weights, optimizer state and value
  normalisation of each member's source, install the new hyperparameters and set the
  optimizers' injected learning rates from them.

:class:`Lineage` accumulates the events, so a runner can checkpoint them and report who copied
whom. :func:`host_hparams` and :func:`to_hyperparams` convert between the batched
:class:`HyperParams` and the host table that :func:`plan` reads and writes.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from marl_jax.hparams import HyperParams
from marl_jax.mappo import TrainState
from marl_jax.optimizer import learning_rates, with_learning_rates

__all__ = [
    "Lineage",
    "PBTPlan",
    "PBTSettings",
    "apply_plan",
    "host_hparams",
    "plan",
    "to_hyperparams",
]

Sampler = Callable[[np.random.Generator], float]


@dataclasses.dataclass(frozen=True)
class PBTSettings:
    """How a PBT round exploits and explores.

    ``quantile``: the fraction of alive members in the bottom group (each copies one of the same
    number of top members), in ``(0, 0.5]``. ``resample_prob``: the chance that a copied
    hyperparameter with a sampler is drawn afresh instead of perturbed. ``perturb``: the two
    factors a perturbed value is multiplied by, chosen uniformly. ``mode``: ``"max"`` when a
    higher score is better, ``"min"`` when lower is.
    """

    quantile: float = 0.25
    resample_prob: float = 0.25
    perturb: tuple[float, float] = (0.8, 1.25)
    mode: str = "max"

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile <= 0.5:
            raise ValueError(f"quantile must be in (0, 0.5], got {self.quantile}")
        if not 0.0 <= self.resample_prob <= 1.0:
            raise ValueError(f"resample_prob must be in [0, 1], got {self.resample_prob}")
        if len(self.perturb) != 2:
            raise ValueError(f"perturb must hold two factors, got {self.perturb!r}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")


@dataclasses.dataclass(frozen=True)
class PBTPlan:
    """The decisions of one PBT round.

    ``source[i]`` is the member whose state member ``i`` takes (``i`` itself when it does not
    copy); ``hparams`` is the new full hyperparameter table (name -> ``(P,)``); ``events`` holds
    one JSON-serialisable dict per copier (see :func:`plan`).
    """

    source: np.ndarray
    hparams: dict[str, np.ndarray]
    events: list[dict[str, Any]]

    @property
    def copiers(self) -> np.ndarray:
        """Indices of the members that copy another member this round."""
        return np.flatnonzero(self.source != np.arange(self.source.shape[0]))


def _ranked(scores: np.ndarray, members: np.ndarray, mode: str) -> np.ndarray:
    """``members`` best first; equal scores rank by member index, lowest first."""
    key = -scores[members] if mode == "max" else scores[members]
    return members[np.lexsort((members, key))]


def _clip(value: float, bounds: tuple[float | None, float | None], dtype: np.dtype) -> Any:
    """``value`` clipped into ``bounds`` and cast to ``dtype``, still inside after rounding."""
    lo, hi = bounds
    if lo is not None:
        value = max(value, lo)
    if hi is not None:
        value = min(value, hi)
    out = np.asarray(value, dtype)
    if lo is not None and float(out) < lo:
        out = np.nextafter(out, np.asarray(np.inf, dtype))
    if hi is not None and float(out) > hi:
        out = np.nextafter(out, np.asarray(-np.inf, dtype))
    return out[()]


def plan(
    rng: np.random.Generator,
    scores: np.ndarray,
    alive: np.ndarray,
    hparams: Mapping[str, np.ndarray],
    settings: PBTSettings,
    bounds: Mapping[str, tuple[float, float]],
    samplers: Mapping[str, Sampler] | None = None,
    step: int = 0,
) -> PBTPlan:
    """One PBT round's exploit and explore decisions for a population of ``P`` members.

    Only members that are ``alive`` with a non-NaN score are ranked; the others never copy and
    are never copied. With ``n_alive >= 2``, ``n = max(1, floor(quantile * n_alive))``: each of
    the bottom ``n`` copies a uniformly chosen member of the top ``n`` and explores each
    hyperparameter in ``hparams``: resampled by ``samplers[name]`` with probability
    ``resample_prob`` (when there is a sampler), otherwise the source's value times one of the
    ``perturb`` factors; then clipped into ``bounds[name]`` (inclusive; unbounded when absent).
    Every other member keeps its hyperparameters exactly. With fewer than two ranked members
    nothing changes and ``rng`` is not used.

    Each event is ``{"step", "member", "source", "score", "source_score", "hparams",
    "from_hparams", "how"}`` in plain Python types; ``how[name]`` is ``"resample"`` or
    ``"perturb x<factor>"``. The result depends only on the inputs and ``rng``'s state.
    """
    scores = np.asarray(scores, dtype=np.float64)
    alive = np.asarray(alive, dtype=bool)
    if scores.ndim != 1 or alive.shape != scores.shape:
        raise ValueError(f"scores {scores.shape} and alive {alive.shape} must both be (P,)")
    size = scores.shape[0]
    table = _table(hparams, size)
    samplers = samplers or {}
    source = np.arange(size, dtype=np.int32)

    members = np.flatnonzero(alive & ~np.isnan(scores))
    if members.size < 2:
        return PBTPlan(source=source, hparams=table, events=[])
    top, bottom = _top_and_bottom(scores, members, settings)
    n = top.size

    events = []
    for i in sorted(int(b) for b in bottom):
        j = int(top[rng.integers(n)])
        source[i] = j
        new, old, how = _explore(rng, table, i, j, settings, bounds, samplers)
        events.append(
            {
                "step": int(step),
                "member": i,
                "source": j,
                "score": float(scores[i]),
                "source_score": float(scores[j]),
                "hparams": new,
                "from_hparams": old,
                "how": how,
            }
        )
    return PBTPlan(source=source, hparams=table, events=events)


def _top_and_bottom(
    scores: np.ndarray, members: np.ndarray, settings: PBTSettings
) -> tuple[np.ndarray, np.ndarray]:
    """The top and bottom ``max(1, floor(quantile * len(members)))`` of the ranked members
    (at most half of them each), best first."""
    n = max(1, math.floor(settings.quantile * members.size + 1e-9))
    n = min(n, members.size // 2)
    ranked = _ranked(scores, members, settings.mode)
    return ranked[:n], ranked[-n:]


def _table(hparams: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """A copy of the hyperparameter table, each column checked to be ``(size,)`` and float."""
    table = {}
    for name, values in hparams.items():
        values = np.array(values, copy=True)
        if values.shape != (size,):
            raise ValueError(f"hyperparameter {name!r} has shape {values.shape}, not ({size},)")
        if not np.issubdtype(values.dtype, np.floating):
            values = values.astype(np.float64)
        table[name] = values
    return table


def _explore(
    rng: np.random.Generator,
    table: dict[str, np.ndarray],
    i: int,
    j: int,
    settings: PBTSettings,
    bounds: Mapping[str, tuple[float, float]],
    samplers: Mapping[str, Sampler],
) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """Member ``i``'s hyperparameters explored from member ``j``'s, written into ``table``:
    ``(new, old, how)`` by name (see :func:`plan`)."""
    new, old, how = {}, {}, {}
    for name, values in table.items():
        old[name] = float(values[j])
        if rng.random() < settings.resample_prob and name in samplers:
            value = float(samplers[name](rng))
            how[name] = "resample"
        else:
            factor = settings.perturb[int(rng.integers(2))]
            value = old[name] * factor
            how[name] = f"perturb x{factor:g}"
        values[i] = _clip(value, bounds.get(name, (None, None)), values.dtype)
        new[name] = float(values[i])
    return new, old, how


def apply_plan(state: TrainState, source: jax.Array, new_hparams: HyperParams) -> TrainState:
    """The population after a PBT round (pure, jittable).

    Member ``i`` takes the ``params``, ``opt_state`` (Adam moments and counts included) and
    ``value_norm`` of member ``source[i]``, keeps its own ``constants``, ``env_state``, ``rng``
    and ``update_step``, gets ``new_hparams`` and injected learning rates that match them.
    """
    source = jnp.asarray(source, jnp.int32)
    size = jax.tree.leaves(state.hparams)[0].shape[0]
    if source.shape != (size,):
        raise ValueError(f"source has shape {source.shape}, expected ({size},)")

    def take(x: jax.Array) -> jax.Array:
        return x[source]

    new_hparams = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), new_hparams)
    opt_state = jax.vmap(lambda opt, hp: with_learning_rates(opt, learning_rates(hp)))(
        jax.tree.map(take, state.opt_state), new_hparams
    )
    return state.replace(
        params=jax.tree.map(take, state.params),
        opt_state=opt_state,
        value_norm=jax.tree.map(take, state.value_norm),
        hparams=new_hparams,
    )


def host_hparams(hparams: HyperParams, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Host copy of a population's hyperparameters: name -> ``(P,)`` array (all fields, or
    ``names``)."""
    names = list(names) if names is not None else [f.name for f in dataclasses.fields(hparams)]
    return {name: np.array(getattr(hparams, name)) for name in names}


def to_hyperparams(table: Mapping[str, np.ndarray], base: HyperParams) -> HyperParams:
    """``base`` with the fields named in ``table`` replaced (as float32 arrays)."""
    return base.replace(
        **{name: jnp.asarray(values, jnp.float32) for name, values in table.items()}
    )


class Lineage:
    """The PBT events of a population, in the order they happened, indexed by member.

    ``to_json``/``from_json`` round-trip it through plain lists and dicts (for checkpoints and
    reports).
    """

    def __init__(self, events: Iterable[Mapping[str, Any]] = ()) -> None:
        self._events: list[dict[str, Any]] = []
        self._by_member: dict[int, list[int]] = {}
        self.record(events)

    def __len__(self) -> int:
        return len(self._events)

    def record(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Appends events (as :func:`plan` makes them), oldest first."""
        for event in events:
            event = copy.deepcopy(dict(event))
            event["member"], event["source"] = int(event["member"]), int(event["source"])
            self._by_member.setdefault(event["member"], []).append(len(self._events))
            self._events.append(event)

    def of(self, member: int) -> list[dict[str, Any]]:
        """The events in which ``member`` copied another member, oldest first."""
        return [copy.deepcopy(self._events[k]) for k in self._by_member.get(int(member), [])]

    def ancestry(self, member: int) -> list[int]:
        """Where ``member``'s current state comes from: ``[member, its last source, that
        source's last source before then, ...]``, ending at a member that had not copied yet."""
        chain = [int(member)]
        before = len(self._events)
        while True:
            earlier = [k for k in self._by_member.get(chain[-1], []) if k < before]
            if not earlier:
                return chain
            before = earlier[-1]
            chain.append(self._events[before]["source"])

    def to_json(self) -> list[dict[str, Any]]:
        """All events, oldest first, as JSON-serialisable dicts."""
        return copy.deepcopy(self._events)

    @classmethod
    def from_json(cls, data: Iterable[Mapping[str, Any]]) -> Lineage:
        """The lineage :meth:`to_json` wrote."""
        return cls(data)
