"""A sweep's population: members (a seed, swept values and a whole config each) in compiled groups.

:func:`expand` checks every value of a :class:`~marl_jax.sweep.spec.SweepSpec` against a base
:class:`~marl_jax.config.Config` and returns the :class:`Group` s, each the members that share
one compiled program (the same static values), in grid x random sample x seed order.
:func:`member_hparams` and :func:`seeds` give a group's traced columns; :func:`plain` a swept
value as the sweep's YAML and JSON outputs write it.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import ConfigDict, TypeAdapter, ValidationError

from marl_jax.config import Config, ConfigError, config_from_dict, config_to_dict
from marl_jax.errors import one_line
from marl_jax.hparams import HPARAM_NAMES
from marl_jax.sweep.spec import CONFIG_KEYS, SweepError, SweepSpec
from marl_jax.validation import Where, yaml_scalar

__all__ = [
    "Group",
    "Member",
    "describe",
    "expand",
    "member_hparams",
    "plain",
    "random_samples",
    "seeds",
]


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of the population: its global index, seed, swept values and whole config."""

    index: int
    seed: int
    values: dict[str, Any]  # dotted key -> value, every swept key but seed
    config: Config


@dataclasses.dataclass(frozen=True)
class Group:
    """Members that share one compiled program (the same static values)."""

    static: dict[str, Any]  # static dotted key -> value
    config: Config  # base + static overrides: build the program from this
    members: tuple[Member, ...]


_INNER = "sweep member"
_INNER_PREFIX = re.compile(rf"^{_INNER}(?: \(override .*?\))?: ")


def _apply(tree: dict[str, Any], values: Mapping[str, Any]) -> Config:
    """The config ``tree`` with ``values`` set as ``--set key=value`` overrides."""
    overrides = [f"{k}={yaml_scalar(v)}" for k, v in values.items()]
    return config_from_dict(tree, overrides, source=_INNER)


def _inner(e: ConfigError) -> str:
    return _INNER_PREFIX.sub("", one_line(e), count=1)


def _leaf(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _field_adapter(key: str) -> TypeAdapter[Any]:
    if key not in _ADAPTERS:
        field = CONFIG_KEYS[key]
        _ADAPTERS[key] = TypeAdapter(
            Annotated[field.annotation, *field.metadata], config=ConfigDict(allow_inf_nan=False)
        )
    return _ADAPTERS[key]


_ADAPTERS: dict[str, TypeAdapter[Any]] = {}


def _check_value(tree: dict[str, Any], label: str, key: str, value: Any, where: Where) -> None:
    """Raise at ``label`` if ``value`` breaks ``key``'s own type or bounds."""
    try:
        _field_adapter(key).validate_python(value)
        return
    except ValidationError:
        pass
    try:  # the config's own words for the problem
        _apply(tree, {key: value})
        inner = f"not a valid {key}"
    except ConfigError as e:
        inner = _inner(e)
    raise where.error(
        label, f"{yaml_scalar(value)} is not a valid value ({inner})", "change or remove it"
    )


def random_samples(spec: SweepSpec) -> list[dict[str, Any]]:
    """The ``samples`` draws of the random keys (``[{}]`` without any), reproducible from
    ``sample_seed``; keys draw their columns in file order, so appending a key keeps the
    earlier keys' draws."""
    if not spec.random:
        return [{}]
    n = typing.cast(int, spec.samples)
    rng = np.random.default_rng(spec.sample_seed)
    columns = {key: dist.sample(rng, n) for key, dist in spec.random.items()}
    return [{key: column[i] for key, column in columns.items()} for i in range(n)]


def _settings(base: Config, spec: SweepSpec) -> Iterable[tuple[dict[str, Any], int]]:
    """``(values, seed)`` per member in grid x sample x seed order."""
    draws = random_samples(spec)
    for point in itertools.product(*spec.grid.values()):
        for draw in draws:
            values = {**dict(zip(spec.grid, point, strict=True)), **draw}
            if "seed" in values:
                yield values, values.pop("seed")
            else:
                for i in range(spec.seeds):
                    yield values, base.seed + i


def expand(base: Config, spec: SweepSpec) -> list[Group]:
    """The population of ``spec`` over ``base``, as compiled groups of members.

    Every value is checked against its config key, and every member's whole config is
    validated; the first problem raises :class:`SweepError` naming the key and value.
    """
    where = spec.where()
    if base.ensemble > 1 or "ensemble" in spec.keys:
        raise SweepError(
            f"{spec.source}: ensemble: a sweep's members are single runs (each with its own "
            "seed); set ensemble=1 in the config and sweep seeds instead"
        )
    tree = config_to_dict(base)
    for key, values in spec.grid.items():
        for value in values:
            _check_value(tree, f"grid.{key}", key, value, where)
    for key, dist in spec.random.items():
        for value in dist.extremes():
            _check_value(tree, f"random.{key}", key, value, where)

    static_keys = spec.static_keys
    rows: dict[tuple[Any, ...], list[tuple[dict[str, Any], Config]]] = {}
    for values, seed in _settings(base, spec):
        try:
            cfg = _apply(tree, {**values, "seed": seed})
        except ConfigError as e:
            shown = ", ".join(f"{k}={yaml_scalar(v)}" for k, v in {**values, "seed": seed}.items())
            raise SweepError(
                f"{spec.source}: {shown}: this combination is not a valid config "
                f"({_inner(e)}); change the sweep so that every combination is valid"
            ) from None
        swept = {k: _leaf(cfg, k) for k in values}
        rows.setdefault(tuple(swept[k] for k in static_keys), []).append((swept, cfg))

    groups: list[Group] = []
    index = 0
    for key, members in rows.items():
        static = dict(zip(static_keys, key, strict=True))
        group_cfg = _apply(tree, static)  # valid: it is a member's config but for traced keys
        built = []
        for swept, cfg in members:
            built.append(Member(index=index, seed=cfg.seed, values=swept, config=cfg))
            index += 1
        groups.append(Group(static=static, config=group_cfg, members=tuple(built)))
    return groups


def member_hparams(members: Sequence[Member]) -> dict[str, np.ndarray]:
    """The members' traced hyperparameters, read from their configs: name -> float32
    ``(len(members),)`` array, one per :class:`~marl_jax.mappo.HyperParams` field."""
    return {
        name: np.asarray([getattr(m.config.training, name) for m in members], np.float32)
        for name in HPARAM_NAMES
    }


def seeds(members: Sequence[Member]) -> np.ndarray:
    """The members' seeds (int64)."""
    return np.asarray([m.seed for m in members], np.int64)


def describe(groups: Sequence[Group]) -> str:
    """One line: how many compiled groups, each with its static values and member count."""
    parts = []
    for g in groups:
        static = " ".join(f"{k}={yaml_scalar(v)}" for k, v in g.static.items())
        n = len(g.members)
        counted = f"{n} member{'s' if n != 1 else ''}"
        parts.append(f"{static} ({counted})" if static else counted)
    n = len(groups)
    return f"{n} compiled group{'s' if n != 1 else ''}: {', '.join(parts)}"


def plain(v: Any) -> Any:
    """A swept or static config value as YAML/JSON writes it (tuples as lists)."""
    return list(v) if isinstance(v, tuple) else v
