"""Sweep files: YAML -> a frozen, validated :class:`SweepSpec` (expanded by :mod:`.members`).

A sweep file names dotted config keys (``training.actor_lr``) and the values to try::

    strategy: grid            # grid | random | pbt
    seeds: 2                  # every setting runs with seeds config.seed + 0..seeds-1
    grid:
      training.actor_lr: [1.0e-3, 3.0e-3]
    random:                   # strategy random or pbt; needs samples
      training.ent_coef: {log_uniform: [1.0e-3, 3.0e-2]}
    samples: 4
    sample_seed: 0

The population is grid x random samples x seeds, in that order. Keys are *traced* (``seed``
and the fields of :class:`marl_jax.mappo.HyperParams`, so one compiled program runs them all)
or *static* (anything else: they change the compiled program, so each of their values makes a
:class:`~marl_jax.sweep.members.Group`). Every problem raises :class:`SweepError`, one line
naming the file, the key and what to do. :func:`load_sweep` reads a file plus ``--grid
KEY=V1,V2`` overrides; :func:`marl_jax.sweep.members.expand` checks every value against a base
:class:`~marl_jax.config.Config` and returns the groups.
"""

from __future__ import annotations

import difflib
import math
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import numpy as np
from annotated_types import Ge, Gt
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError, PydanticUndefined

from marl_jax.config import Config, ConfigError, parse_override
from marl_jax.errors import MarlJaxError
from marl_jax.hparams import HPARAM_NAMES
from marl_jax.validation import (
    Float,
    Int,
    Located,
    Name,
    Where,
    as_float,
    as_int,
    explain,
    is_model,
    read_yaml_mapping,
    rule,
    type_name,
    unwrap,
    yaml_scalar,
)

__all__ = [
    "CONFIG_KEYS",
    "PBT_METRICS",
    "STRATEGIES",
    "TRACED_KEYS",
    "Distribution",
    "PBTSpec",
    "SweepError",
    "SweepSpec",
    "load_sweep",
    "parse_grid_override",
]


class SweepError(MarlJaxError, ValueError):
    """A bad sweep file or ``--grid`` flag; the message is one line naming the file and key."""


# --------------------------------------------------------------------------- keys


def _config_leaves(model: type[BaseModel], prefix: str = "") -> dict[str, FieldInfo]:
    out: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        if is_model(field):
            out.update(
                _config_leaves(typing.cast(type[BaseModel], field.annotation), prefix + name + ".")
            )
        else:
            out[prefix + name] = field
    return out


CONFIG_KEYS: dict[str, FieldInfo] = _config_leaves(Config)
"""Every sweepable dotted key of :class:`Config` (its leaves) -> its pydantic field."""

_SECTIONS = {k.rsplit(".", i)[0] for k in CONFIG_KEYS for i in range(1, k.count(".") + 1)}

TRACED_KEYS: tuple[str, ...] = ("seed", *(f"training.{name}" for name in HPARAM_NAMES))
"""Keys that one compiled program can vary per member; every other key is static."""

STRATEGIES: tuple[str, ...] = ("grid", "random", "pbt")

# The scalar metrics the trainer logs per update that PBT may rank members by.
PBT_METRICS: tuple[str, ...] = ("average_reward", "episode_log_return", "loss")


def _is_float_key(key: str) -> bool:
    return unwrap(CONFIG_KEYS[key].annotation) is float


# --------------------------------------------------------------------------- models


def _pair(value: Any) -> Any:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise PydanticCustomError("sweep_pair", "expected [low, high]")
    return value


PositiveFloat = Annotated[float, BeforeValidator(as_float), Gt(0)]
Pair = Annotated[tuple[Float, Float], BeforeValidator(_pair)]
PositivePair = Annotated[tuple[PositiveFloat, PositiveFloat], BeforeValidator(_pair)]
Values = Annotated[list[Any], Field(min_length=1)]


class _Model(BaseModel):
    """Unknown keys are errors, instances are immutable, numbers are finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Distribution(_Model):
    """One random key's distribution: exactly one of ``uniform``, ``log_uniform``, ``choice``."""

    uniform: Pair | None = Field(None, description="[low, high], low < high")
    log_uniform: Pair | None = Field(None, description="[low, high], 0 < low < high; log scale")
    choice: Values | None = Field(None, description="values, drawn with equal probability")

    @model_validator(mode="after")
    def _check(self) -> Self:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise rule(
                "",
                f"give exactly one distribution, got {', '.join(given) or 'none'}",
                "write e.g. {log_uniform: [1.0e-4, 1.0e-3]}",
            )
        if self.log_uniform is not None and self.log_uniform[0] <= 0:
            raise rule(
                "log_uniform",
                f"low must be > 0, got {self.log_uniform[0]!r}",
                "use a positive low, or uniform",
            )
        for name in ("uniform", "log_uniform"):
            pair = getattr(self, name)
            if pair is not None and not pair[0] < pair[1]:
                raise rule(name, f"low must be below high, got {list(pair)!r}", "write [low, high]")
        return self

    @property
    def kind(self) -> str:
        """``"uniform"``, ``"log_uniform"`` or ``"choice"``."""
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    def sample(self, rng: np.random.Generator, n: int) -> list[Any]:
        """``n`` draws (Python scalars, or the chosen values themselves)."""
        if self.uniform is not None:
            low, high = self.uniform
            return [float(x) for x in rng.uniform(low, high, n)]
        if self.log_uniform is not None:
            low, high = self.log_uniform
            x = np.exp(rng.uniform(math.log(low), math.log(high), n))
            return [float(v) for v in np.clip(x, low, high)]
        assert self.choice is not None
        return [self.choice[int(i)] for i in rng.integers(len(self.choice), size=n)]

    def extremes(self) -> list[Any]:
        """Values that bound every draw: both ends of a range, or every choice."""
        if self.choice is not None:
            return list(self.choice)
        return list(typing.cast(tuple[float, float], self.uniform or self.log_uniform))


class PBTSpec(_Model):
    """Population-based training: how often and how members exploit and explore."""

    interval: Int = Field(10, ge=1, description="updates between exploit/explore rounds")
    quantile: Float = Field(0.25, gt=0, le=0.5, description="bottom fraction that copies the top")
    resample_prob: Float = Field(
        0.25, ge=0, le=1, description="chance a copied value is redrawn instead of perturbed"
    )
    perturb: PositivePair = Field((0.8, 1.25), description="factors a perturbed value takes")
    metric: Name = Field("average_reward", description="logged metric that ranks members")
    mode: Literal["max", "min"] = Field("max", description="whether higher or lower wins")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in PBT_METRICS:
            raise rule("", f"unknown metric {value!r}", f"use one of: {', '.join(PBT_METRICS)}")
        return value


class SweepSpec(_Model):
    """A validated sweep file. ``grid`` and ``random`` keep the file's key order."""

    seeds: Int = Field(1, ge=1, description="seeds per setting: config.seed + 0..seeds-1")
    strategy: Literal["grid", "random", "pbt"] = Field("grid", description="grid, random or pbt")
    grid: dict[str, Values] = Field(default_factory=dict, description="key -> values to cross")
    random: dict[str, Distribution] = Field(default_factory=dict, description="key -> dist")
    samples: Annotated[int, Ge(1), BeforeValidator(as_int)] | None = Field(
        None, description="random draws (required with random)"
    )
    sample_seed: Int = Field(0, ge=0, description="seed of the random draws")
    pbt: PBTSpec | None = Field(None, description="PBT settings (strategy pbt only)")

    _source: str = PrivateAttr("<sweep>")
    _overrides: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        """``grid:`` with nothing under it means none; ``strategy: pbt`` implies ``pbt: {}``."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not (v is None and k in _SECTION_KEYS)}
            if data.get("strategy") == "pbt" and "pbt" not in data:
                data["pbt"] = {}
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        for section in ("grid", "random"):
            for key in getattr(self, section):
                _check_key(f"{section}.{key}", key)
        for key in self.grid:
            if key in self.random:
                raise rule(f"grid.{key}", "is also a random key", "sweep each key in one section")
        for key, dist in self.random.items():
            if dist.choice is None and not _is_float_key(key):
                expected = type_name(CONFIG_KEYS[key].annotation)
                raise rule(
                    f"random.{key}",
                    f"{dist.kind} draws real numbers but {key} takes {expected}",
                    "use {choice: [...]}",
                )
        self._check_sections()
        if "seed" in self.keys and self.seeds != 1:
            section = "grid" if "seed" in self.grid else "random"
            raise rule(
                "seeds",
                f"must be 1 when {section}.seed lists the seeds, got {self.seeds}",
                f"remove seeds or {section}.seed",
            )
        if self.strategy == "pbt":
            hparams = ", ".join(TRACED_KEYS[1:])
            for key in self.random:
                if key not in TRACED_KEYS:
                    raise rule(
                        f"random.{key}",
                        "is static (it changes the compiled program) and pbt perturbs only "
                        "traced hyperparameters",
                        "sweep it under grid (a compiled group per value) or use one of: "
                        + hparams,
                    )
            if not self.perturbed_keys:
                raise rule(
                    "strategy",
                    "pbt needs a traced hyperparameter in grid or random to perturb",
                    f"add one of: {hparams}",
                )
        return self

    def _check_sections(self) -> None:
        """Which sections each strategy takes."""
        if self.random and self.strategy == "grid":
            raise rule(
                "random",
                "strategy grid does not sample",
                "set strategy: random (or pbt), or move the keys to grid",
            )
        if self.strategy == "random" and not self.random:
            raise rule(
                "random",
                "strategy random needs keys to sample",
                "add a random section, or use strategy: grid",
            )
        if self.random and self.samples is None:
            raise rule("samples", "missing; random keys need a number of draws", "add samples: K")
        if not self.random:
            for name in ("samples", "sample_seed"):
                if name in self.model_fields_set:
                    raise rule(
                        name, "is only used with random keys", f"remove {name} or add random keys"
                    )
        if self.pbt is not None and self.strategy != "pbt":
            raise rule(
                "pbt",
                f"is only used with strategy pbt, not {self.strategy}",
                "set strategy: pbt or remove the pbt section",
            )

    @property
    def source(self) -> str:
        """The sweep file's path (``--grid`` when there is none), for messages."""
        return self._source

    @property
    def keys(self) -> tuple[str, ...]:
        """Every swept config key: the grid keys, then the random keys, in file order."""
        return (*self.grid, *self.random)

    @property
    def static_keys(self) -> tuple[str, ...]:
        """Swept keys that change the compiled program; each value makes a group."""
        return tuple(k for k in self.keys if k not in TRACED_KEYS)

    @property
    def traced_keys(self) -> tuple[str, ...]:
        """Swept keys that one compiled program varies per member (``seed`` included)."""
        return tuple(k for k in self.keys if k in TRACED_KEYS)

    @property
    def perturbed_keys(self) -> tuple[str, ...]:
        """The traced hyperparameters PBT explores (``seed`` excluded)."""
        return tuple(k for k in self.traced_keys if k != "seed")

    @property
    def population_size(self) -> int:
        """Members: grid points x random samples x seeds."""
        return math.prod(len(v) for v in self.grid.values()) * (self.samples or 1) * self.seeds

    def where(self) -> Where:
        """Where the sweep's keys came from (the file, ``--grid`` flags), for messages."""
        return _where(self._source, self._overrides)


_SECTION_KEYS = ("grid", "random", "pbt")


def _check_key(label: str, key: str) -> None:
    """Raise a rule error at ``label`` unless ``key`` is a leaf of :class:`Config`."""
    if key in CONFIG_KEYS:
        return
    if key in _SECTIONS:
        example = next(k for k in CONFIG_KEYS if k.startswith(key + "."))
        raise rule(
            label, "is a config section, not a value", f"sweep one of its keys, e.g. {example}"
        )
    near = [k for k in CONFIG_KEYS if k.endswith("." + key)]
    near += [k for k in difflib.get_close_matches(key, CONFIG_KEYS, n=3) if k not in near]
    if near:
        hint = f"did you mean {near[0]}?" + (f" (or {', '.join(near[1:3])})" if near[1:] else "")
    else:
        hint = "see configs/schema.json for the keys"
    raise rule(label, "unknown config key", hint)


# --------------------------------------------------------------------------- errors

_NO_FILE = "--grid"


def _where(source: str, overrides: Mapping[str, str]) -> Where:
    return Where(None if source == _NO_FILE else source, overrides, SweepError)


def _field_at(loc: tuple[int | str, ...]) -> tuple[type[BaseModel], FieldInfo | None]:
    """The model holding the key at an error location, and its field (None if unknown)."""
    model: type[BaseModel] = SweepSpec
    name = loc[0] if loc else None
    if len(loc) > 1 and loc[0] == "pbt":
        model, name = PBTSpec, loc[1]
    elif len(loc) > 2 and loc[0] == "random":
        model, name = Distribution, loc[2]
    field = model.model_fields.get(name) if isinstance(name, str) else None
    return model, field


_EXAMPLES = {
    "grid": "write e.g. training.actor_lr: [1.0e-3, 3.0e-3]",
    "random": "write e.g. training.actor_lr: {log_uniform: [1.0e-4, 1.0e-3]}",
    "pbt": "write it as a YAML section (interval, quantile, ...)",
}


def _explain(err: ErrorDetails) -> tuple[str, str, str]:
    """``(key, problem, hint)`` for one pydantic error of a sweep file."""
    loc = err["loc"]
    kind = err["type"]
    key = ".".join(p for p in loc if isinstance(p, str) and p != "[key]")
    got = yaml_scalar(err.get("input"))
    if "[key]" in loc:
        return key, f"keys must be dotted config keys, got {got}", "e.g. training.actor_lr"
    if len(loc) == 2 and loc[0] == "random" and kind in ("model_type", "model_attributes_type"):
        return (
            key,
            f"expected a distribution, got {got}",
            _EXAMPLES["random"].replace("training.actor_lr: ", ""),
        )
    if len(loc) == 1 and kind in ("dict_type", "model_type", "model_attributes_type"):
        return key, f"expected a mapping, got {got}", _EXAMPLES.get(key, "fix the value")
    if kind == "list_type":
        return key, f"expected a list of values, got {got}", f"write [{got}]"
    if kind == "sweep_pair":
        return key, f"expected [low, high], got {got}", "give two numbers"
    element = bool(loc) and isinstance(loc[-1], int)
    if kind == "config_type" and element:
        return key, f"every entry must be a number, got {got}", "fix the value"
    model, field = _field_at(loc)
    default = None
    if field is not None and field.default not in (None, PydanticUndefined):
        default = yaml_scalar(field.default)
    return explain(err, Located(key, model, field, got, default, element))


# --------------------------------------------------------------------------- loading


def parse_grid_override(item: str) -> tuple[str, list[Any]]:
    """``"training.actor_lr=1e-3,3e-3"`` -> ``("training.actor_lr", [0.001, 0.003])``.

    Values are YAML scalars as in ``--set``; a list value goes in brackets
    (``agents.mlmi.hidden_dims=[16,8,8],[32,16,16]``).
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SweepError(
            f"--grid {item!r}: expected KEY=V1,V2,..., e.g. training.actor_lr=1e-3,3e-3"
        )
    try:
        _, values = parse_override(f"{key}=[{raw}]")
    except ConfigError:
        values = None
    if not isinstance(values, list):
        raise SweepError(
            f"--grid {item!r}: the values are not valid YAML; separate them with commas and "
            "put list values in brackets, e.g. agents.mlmi.hidden_dims=[16,8,8],[32,16,16]"
        )
    return key, values


def _read(p: Path) -> dict[str, Any]:
    contents = "keys (seeds, strategy, grid, random, ...); see configs/sweeps/quickstart.yaml"
    return read_yaml_mapping(p, "sweep", "--sweep", contents, SweepError) or {}


def load_sweep(path: str | os.PathLike[str] | None, grid: Sequence[str] = ()) -> SweepSpec:
    """Read a sweep file (None: no file, one member per seed), add ``--grid`` items, validate."""
    source = str(Path(path)) if path is not None else _NO_FILE
    tree = _read(Path(path)) if path is not None else {}
    overrides: dict[str, str] = {}
    for item in grid:
        key, values = parse_grid_override(item)
        section = tree.get("grid")
        if section is None or isinstance(section, dict):
            tree["grid"] = {**(section or {}), key: values}
        overrides[f"grid.{key}"] = f"--grid {item!r}"
    try:
        spec = SweepSpec.model_validate(tree)
    except ValidationError as e:
        raise _where(source, overrides).error(*_explain(e.errors()[0])) from None
    spec._source = source
    spec._overrides = overrides
    return spec
