"""Configuration: YAML -> frozen, validated pydantic models, with dotted overrides.

A config file has the original system's sections: ``agents.mlmi``, ``agents.nwrqk``,
``agents.mmd`` (the actor constructor arguments), ``critic``, ``training``, ``env`` and
``checkpoint``, plus a top-level ``seed``. Every key has a default, so a file only needs
the keys it changes; an unknown key, a wrong type or an impossible value raises
:class:`ConfigError` with one line naming the file, the override if one set the key, the
dotted key, and what to do. ``python -m marl_jax.config schema`` prints the JSON Schema
(committed as ``configs/schema.json`` for editors).

Training defaults follow the published MAPPO settings (Yu et al. 2022, "The Surprising
Effectiveness of PPO in Cooperative Multi-Agent Games", and its reference implementation
``marlbenchmark/on-policy``): clip 0.2, gamma 0.99, GAE lambda 0.95, entropy 0.01, value
loss coefficient 1, gradient-norm clip 10, Adam lr 5e-4 (actor and critic) with eps 1e-5,
ValueNorm, clipped Huber value loss with delta 10, one minibatch, and few epochs (the paper
recommends 5 to 10 on hard tasks; we use 5). Learning-rate decay is off by default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from annotated_types import Ge
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from marl_jax.agents import AGENT_BY_NAME, AGENT_NAMES, CRITIC_ATTENTION_HEADS, CRITIC_STATE_DIM
from marl_jax.errors import MarlJaxError
from marl_jax.run.files import atomic_write_text

__all__ = [
    "AgentConfig",
    "AgentsConfig",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "CriticConfig",
    "EnvConfig",
    "TrainingConfig",
    "AGENT_NAMES",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "main",
    "parse_override",
    "save_config",
    "schema_text",
]


class ConfigError(MarlJaxError, ValueError):
    """A bad configuration; the message is one line naming the key and the file."""


# --------------------------------------------------------------------------- value types
# YAML gives bools, ints, floats, strings, lists and dicts. A bool is not a number, a string
# is not a number, and an integral float (``total_timesteps: 2e6``) is an integer.


def _wrong_type() -> PydanticCustomError:
    return PydanticCustomError("config_type", "wrong type")


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type()
    if isinstance(value, float):
        if not value.is_integer():  # also rejects inf and nan
            raise _wrong_type()
        return int(value)
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type()
    try:
        return float(value)
    except OverflowError:  # a huge int; rejected as not finite
        return math.inf if value > 0 else -math.inf


def _list(value: Any) -> Any:
    if not isinstance(value, list | tuple):
        raise _wrong_type()
    return value


Int = Annotated[int, BeforeValidator(_int)]
Float = Annotated[float, BeforeValidator(_float)]
Bool = Annotated[bool, Strict()]
Name = Annotated[str, Strict(), Field(pattern=r"\S")]  # a non-blank string
Sizes = Annotated[tuple[Annotated[int, Ge(1), BeforeValidator(_int)], ...], BeforeValidator(_list)]


def _rule(key: str, problem: str, hint: str) -> PydanticCustomError:
    """A cross-field error on ``key`` (relative to the model that raises it)."""
    return PydanticCustomError(
        "config_rule", "{key}: {problem}; {hint}", {"key": key, "problem": problem, "hint": hint}
    )


# --------------------------------------------------------------------------- models


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_section_is_default(cls, data: Any) -> Any:
        """``training:`` with nothing under it (YAML null) means the defaults."""
        if isinstance(data, dict):
            return {
                k: v
                for k, v in data.items()
                if not (v is None and k in cls.model_fields and _is_model(cls.model_fields[k]))
            }
        return data


def _is_model(field: FieldInfo) -> bool:
    tp = field.annotation
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _no_required(schema: dict[str, Any]) -> None:
    schema.pop("required", None)


class AgentConfig(_Section):
    """Constructor arguments of one actor (MLMIActor, NWRQKActor or MMDActor)."""

    # In a file every key is optional: missing keys take that agent's defaults.
    model_config = ConfigDict(json_schema_extra=_no_required)

    input_dim: Int = Field(ge=1, description="features the agent sees (fixed by the env)")
    hidden_dims: Sizes = Field(min_length=1, description="hidden layer sizes")
    conv_channels: Sizes = Field(min_length=2, description="temporal conv channels")
    kernel_sizes: Sizes = Field(min_length=2, description="temporal conv kernel sizes")
    action_dim: Int = Field(3, ge=2, description="actions: bearish, neutral, bullish")
    dropout_rate: Float = Field(0.1, ge=0, lt=1, description="dropout probability")
    temperature_init: Float = Field(1.0, gt=0, description="initial softmax temperature")
    sequence_length: Int = Field(48, ge=1, description="bars per observation window")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.hidden_dims[-1] < 2:
            raise _rule(
                "hidden_dims",
                f"the last size feeds heads of width h//2, got {self.hidden_dims[-1]}",
                "use 2 or more",
            )
        return self

    def to_kwargs(self) -> dict[str, Any]:
        """The model constructor's keyword arguments, sequences as lists."""
        return self.model_dump(mode="json")


_AGENT_LAYERS: dict[str, dict[str, tuple[int, ...]]] = {
    "mlmi": {"hidden_dims": (256, 128, 64), "conv_channels": (32, 64, 128), "kernel_sizes": (3, 5)},
    "nwrqk": {
        "hidden_dims": (256, 128, 64),
        "conv_channels": (32, 64, 128),
        "kernel_sizes": (7, 9),
    },
    "mmd": {"hidden_dims": (128, 64, 32), "conv_channels": (16, 32, 64), "kernel_sizes": (5, 7)},
}


def _default_agent(name: str) -> AgentConfig:
    return AgentConfig(input_dim=AGENT_BY_NAME[name].input_dim, **_AGENT_LAYERS[name])


class AgentsConfig(_Section):
    """The three actors; a partial section keeps that agent's other defaults."""

    mlmi: AgentConfig = Field(_default_agent("mlmi"), description="MLMI momentum actor")
    nwrqk: AgentConfig = Field(_default_agent("nwrqk"), description="NW-RQK level actor")
    mmd: AgentConfig = Field(_default_agent("mmd"), description="MMD regime actor")

    @model_validator(mode="before")
    @classmethod
    def _fill_agent_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name in AGENT_NAMES:
            if isinstance(out.get(name), dict):
                out[name] = {**_default_agent(name).model_dump(), **out[name]}
        return out

    @model_validator(mode="after")
    def _check(self) -> Self:
        for name, agent in self.items():
            spec = AGENT_BY_NAME[name]
            if agent.input_dim != spec.input_dim:
                raise _rule(
                    f"{name}.input_dim",
                    f"the environment gives {name} {spec.input_dim} features, "
                    f"got {agent.input_dim}",
                    f"set it to {spec.input_dim}",
                )
            if agent.hidden_dims[0] % spec.heads:
                raise _rule(
                    f"{name}.hidden_dims",
                    f"hidden_dims[0]={agent.hidden_dims[0]} must be divisible by the "
                    f"{spec.heads} attention heads",
                    f"use a multiple of {spec.heads}",
                )
        return self

    def items(self) -> list[tuple[str, AgentConfig]]:
        """``[(name, AgentConfig)]`` in the canonical order mlmi, nwrqk, mmd."""
        return [(n, getattr(self, n)) for n in AGENT_NAMES]


class CriticConfig(_Section):
    """Constructor arguments of CentralizedCritic."""

    state_dim: Int = Field(CRITIC_STATE_DIM, description="all agents' features, concatenated")
    n_agents: Int = Field(len(AGENT_NAMES), description="number of actors")
    hidden_dims: Sizes = Field(
        (512, 256, 128),
        min_length=1,
        description=f"hidden sizes; the last a multiple of {CRITIC_ATTENTION_HEADS}",
    )
    dropout_rate: Float = Field(0.1, ge=0, lt=1, description="dropout probability")
    use_layer_norm: Bool = Field(True, description="layer norm after each hidden layer")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.state_dim != CRITIC_STATE_DIM:
            raise _rule(
                "state_dim",
                f"the critic sees the {CRITIC_STATE_DIM} concatenated agent features, "
                f"got {self.state_dim}",
                f"set it to {CRITIC_STATE_DIM}",
            )
        if self.n_agents != len(AGENT_NAMES):
            raise _rule("n_agents", f"got {self.n_agents}", f"set it to {len(AGENT_NAMES)}")
        if self.hidden_dims[-1] % CRITIC_ATTENTION_HEADS:
            raise _rule(
                "hidden_dims",
                f"the last size must be a multiple of {CRITIC_ATTENTION_HEADS} "
                f"(attention heads), got {self.hidden_dims[-1]}",
                "use e.g. 16 or 128",
            )
        return self

    def to_kwargs(self) -> dict[str, Any]:
        """The model constructor's keyword arguments, sequences as lists."""
        return self.model_dump(mode="json")


class TrainingConfig(_Section):
    """MAPPO. Floats stay plain Python floats; the trainer may trace them for sweeps."""

    num_envs: Int = Field(16, ge=1, description="parallel environments")
    rollout_len: Int = Field(128, ge=1, description="steps per environment per update")
    total_timesteps: Int = Field(2_000_000, ge=1, description="environment steps in all")
    update_epochs: Int = Field(5, ge=1, description="passes over each batch")
    num_minibatches: Int = Field(1, ge=1, description="minibatches per epoch")
    clip_eps: Float = Field(0.2, gt=0, description="PPO ratio clip")
    gamma: Float = Field(0.99, ge=0, le=1, description="discount factor")
    gae_lambda: Float = Field(0.95, ge=0, le=1, description="GAE lambda")
    ent_coef: Float = Field(0.01, ge=0, description="entropy bonus coefficient")
    value_loss_coef: Float = Field(1.0, ge=0, description="value loss coefficient")
    max_grad_norm: Float = Field(10.0, gt=0, description="gradient-norm clip")
    actor_lr: Float = Field(5e-4, gt=0, description="actor Adam learning rate")
    critic_lr: Float = Field(5e-4, gt=0, description="critic Adam learning rate")
    adam_eps: Float = Field(1e-5, gt=0, description="Adam epsilon")
    anneal_lr: Bool = Field(False, description="decay both learning rates linearly to 0")
    use_valuenorm: Bool = Field(True, description="normalise value targets (ValueNorm)")
    use_clipped_value_loss: Bool = Field(True, description="clip the value loss like PPO")
    use_huber_loss: Bool = Field(True, description="Huber instead of squared value loss")
    huber_delta: Float = Field(10.0, gt=0, description="Huber loss delta")
    normalize_advantages: Bool = Field(True, description="normalise advantages per batch")
    unroll_learn: Bool = Field(
        True,
        description="unroll the epoch x minibatch loop: faster updates, longer compile",
    )
    rnn_backend: Literal["auto", "scan", "cudnn"] = Field(
        "auto",
        description="LSTM recurrences: lax.scan, or cuDNN's LSTM on a CUDA GPU; auto takes "
        "cuDNN on a GPU (populations, which vmap, always scan)",
    )
    compute_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="dtype of the models' matmuls in rollouts and losses; weights, optimizer, "
        "norms, softmax and losses stay float32",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.batch_size % self.num_minibatches:
            raise _rule(
                "num_minibatches",
                f"num_envs*rollout_len={self.batch_size} is not divisible by "
                f"{self.num_minibatches}",
                "pick a divisor of num_envs*rollout_len",
            )
        if self.total_timesteps < self.batch_size:
            raise _rule(
                "total_timesteps",
                f"{self.total_timesteps} is less than one update "
                f"(num_envs*rollout_len={self.batch_size})",
                f"use at least {self.batch_size}",
            )
        return self

    @property
    def batch_size(self) -> int:
        """Transitions per update: ``num_envs * rollout_len``."""
        return self.num_envs * self.rollout_len

    @property
    def minibatch_size(self) -> int:
        """Transitions per minibatch: ``batch_size // num_minibatches``."""
        return self.batch_size // self.num_minibatches

    @property
    def num_updates(self) -> int:
        """``total_timesteps // batch_size`` (at least 1 after validation)."""
        return self.total_timesteps // self.batch_size


class EnvConfig(_Section):
    """Market environment and data. ``data_path`` null means synthetic bars."""

    episode_len: Int = Field(256, ge=1, description="bars per episode")
    cost_bps: Float = Field(1.0, ge=0, description="cost per unit of position change, bps")
    window: Int = Field(48, ge=1, description="bars each agent sees")
    interval_minutes: Int = Field(30, ge=1, description="bar length in minutes")
    train_frac: Float = Field(0.7, gt=0, lt=1, description="training split, by time")
    val_frac: Float = Field(0.15, ge=0, lt=1, description="validation split, by time")
    test_frac: Float = Field(0.15, gt=0, lt=1, description="test split, by time")
    data_path: Name | None = Field(None, description="CSV/Parquet bar file; null = synthetic")
    synthetic_n_bars: Int = Field(20_000, ge=1, description="bars of synthetic data")
    synthetic_seed: Int = Field(0, ge=0, description="seed of the synthetic data")
    norm_clip: Float = Field(10.0, gt=0, description="clip normalised features to +-this")
    reward: Literal["pnl", "excess", "differential_sharpe"] = Field(
        "pnl",
        description="pnl: net return; excess: net return less position x the train split's "
        "mean bar return; differential_sharpe: Moody and Saffell's DSR of the net return",
    )
    dsr_eta: Float = Field(0.01, gt=0, lt=1, description="EMA rate of the differential Sharpe")
    action_mode: Literal["target", "delta"] = Field(
        "target",
        description="target: the mean vote is the position; delta: bearish reduces, neutral "
        "holds, bullish increases the position (the seed's meaning), within [-1, 1]",
    )
    delta_step: Float = Field(
        0.5, gt=0, le=2, description="delta: position change when all three agents agree"
    )
    position_sizing: Literal["fixed", "vol_target"] = Field(
        "fixed",
        description="fixed: position = signal; vol_target: signal x target_vol / EWMA "
        "volatility of past returns, capped at max_leverage (Zhang, Zohren, Roberts 2020)",
    )
    vol_span: Int = Field(60, ge=1, description="vol_target: EWMA span of the volatility, bars")
    target_vol: Float = Field(0.1, gt=0, description="vol_target: annualised target volatility")
    max_leverage: Float = Field(2.0, gt=0, description="vol_target: cap on |position|")

    @model_validator(mode="after")
    def _check(self) -> Self:
        total = self.train_frac + self.val_frac + self.test_frac
        if total > 1.0 + 1e-9:
            raise _rule(
                "test_frac",
                f"train_frac + val_frac + test_frac = {total:g} exceeds 1",
                "make the three fractions sum to at most 1",
            )
        if self.synthetic_n_bars <= self.window + self.episode_len:
            raise _rule(
                "synthetic_n_bars",
                f"{self.synthetic_n_bars} bars cannot hold a window plus an episode "
                f"({self.window}+{self.episode_len})",
                "use more bars",
            )
        return self

    @property
    def split_fractions(self) -> tuple[float, float, float]:
        """``(train_frac, val_frac, test_frac)``."""
        return (self.train_frac, self.val_frac, self.test_frac)


class CheckpointConfig(_Section):
    """Where and how often checkpoints are written."""

    dir: Name = Field("checkpoints", description="folder, relative to the run's --out folder")
    save_every: Int = Field(10, ge=1, description="updates between checkpoints")
    max_to_keep: Int = Field(5, ge=1, description="latest checkpoints kept, plus the best")
    best_metric: Name = Field("average_reward", description="metric of the best (higher wins)")


class Config(_Section):
    """A whole run's configuration."""

    agents: AgentsConfig = Field(default_factory=AgentsConfig, description="the three actors")
    critic: CriticConfig = Field(default_factory=CriticConfig, description="centralised critic")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="MAPPO")
    env: EnvConfig = Field(default_factory=EnvConfig, description="market environment and data")
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="checkpointing"
    )
    seed: Int = Field(0, ge=0, description="seed of the run")


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-4`` and ``1E5`` as floats (YAML 1.1 needs a dot)."""


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _yaml_scalar(value: Any) -> str:
    """``value`` as it would be written in YAML, on one line."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # _Loader derives from SafeLoader


def parse_override(item: str) -> tuple[str, Any]:
    """``"training.actor_lr=3e-4"`` -> ``("training.actor_lr", 3e-4)`` (value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"override {item!r}: expected KEY.PATH=VALUE, e.g. training.actor_lr=3e-4"
        )
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())
        raise ConfigError(f"override {item!r}: value is not valid YAML ({msg})") from None
    return key, value


# --------------------------------------------------------------------------- errors


class _Ctx:
    """Where values came from, for error messages."""

    def __init__(self, source: str, overridden: dict[str, str]):
        self.source = source
        self.overridden = overridden

    def where(self, key: str) -> str:
        for k, item in self.overridden.items():
            if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                return f"{self.source} (override {item!r})"
        return self.source

    def error(self, key: str, problem: str, hint: str) -> ConfigError:
        return ConfigError(" ".join(f"{self.where(key)}: {key}: {problem}; {hint}".split()))


_MISSING = object()


def _resolve(loc: tuple[int | str, ...]) -> tuple[list[str], type[BaseModel], FieldInfo | None]:
    """The dotted key parts of an error location, the model holding the key, and its field.

    The field is None for a section or an unknown key; list indices are dropped, so an error
    in one entry of ``hidden_dims`` is reported on ``hidden_dims``.
    """
    model: type[BaseModel] = Config
    parts: list[str] = []
    for part in loc:
        if not isinstance(part, str) or part not in model.model_fields:
            parts.append(str(part))
            return parts, model, None
        parts.append(part)
        field = model.model_fields[part]
        if not _is_model(field):
            return parts, model, field
        model = typing.cast(type[BaseModel], field.annotation)
    return parts, model, None


def _lookup(tree: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def _default_text(parts: list[str]) -> str:
    obj: Any = _DEFAULT
    for part in parts:
        obj = getattr(obj, part, None)
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    elif isinstance(obj, tuple):
        obj = list(obj)
    return _yaml_scalar(obj)


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _type_name(tp: Any) -> str:
    tp = _unwrap(tp)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts) + " or null"
    return str(tp)


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, int | float) else str(x)


def _bound_text(metadata: Sequence[Any], integer: bool) -> str:
    """``metadata``'s bounds in words: ``in [0, 1)``, ``> 0``, ``at least 1``..."""
    b = {k: getattr(m, k) for m in metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}
    lo = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    hi = (b["le"], "]") if "le" in b else (b["lt"], ")") if "lt" in b else None
    if lo and hi:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[0])}{hi[1]}"
    if lo:
        if lo[0] == "(":
            return f"> {_num(lo[1])}"
        return f"at least {_num(lo[1])}" if integer else f">= {_num(lo[1])}"
    if hi:
        return f"<= {_num(hi[0])}" if hi[1] == "]" else f"< {_num(hi[0])}"
    return "in range"


def _explain(err: Any, tree: Any) -> tuple[str, str, str]:
    """``(dotted key, problem, hint)`` for one pydantic error dict."""
    kind: str = err["type"]
    parts, model, field = _resolve(err["loc"])
    key = ".".join(parts)
    value = _lookup(tree, parts)
    if value is _MISSING:
        value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "config_rule":
        return ".".join([*parts, ctx["key"]]), ctx["problem"], ctx["hint"]
    if kind in ("extra_forbidden", "invalid_key"):
        return key, "unknown key", f"remove it or use one of: {', '.join(model.model_fields)}"
    if field is None:  # a section that is not a mapping
        return key, f"expected a mapping of keys, got {value!r}", "write it as a YAML section"
    shown = _default_text(parts)
    default = f"default: {shown}"
    element = len(err["loc"]) > len(parts)  # one entry of a list
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        if element:
            item = typing.get_args(_unwrap(field.annotation))[0]
            bound = _bound_text(typing.get_args(item)[1:], integer=True)
            return (
                key,
                f"every entry must be {bound}, got {value!r}",
                f"use e.g. the default {shown}",
            )
        bound = _bound_text(field.metadata, integer=_unwrap(field.annotation) is int)
        return key, f"must be {bound}, got {value!r}", f"use e.g. the default {shown}"
    if kind == "too_short":
        n = ctx["min_length"]
        entries = "entry" if n == 1 else "entries"
        return key, f"needs at least {n} {entries}, got {value!r}", f"give {n} or more ({default})"
    if kind == "finite_number":
        return key, f"must be a finite number, got {value!r}", f"fix the value ({default})"
    if kind == "string_pattern_mismatch":
        return key, f"must not be blank, got {value!r}", f"fix the value ({default})"
    if kind == "missing":
        return key, "missing key", f"add it ({default})"
    expected = _type_name(field.annotation)
    return key, f"expected {expected}, got {value!r}", f"fix the value ({default})"


def _translate(e: ValidationError, tree: Any, ctx: _Ctx) -> ConfigError:
    """The first of pydantic's errors as one :class:`ConfigError` line."""
    key, problem, hint = _explain(e.errors()[0], tree)
    return ctx.error(key, problem, hint)


# --------------------------------------------------------------------------- building


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (lists, not tuples) that ``config_from_dict`` reads back equal."""
    return cfg.model_dump(mode="json")


def _set_dotted(tree: dict[str, Any], key: str, value: Any, ctx: _Ctx) -> None:
    """Set ``tree[a][b]... = value`` for ``key = "a.b..."``, checking each part is a key."""
    parts = key.split(".")
    node = tree
    model: type[BaseModel] | None = Config
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        if model is None:
            raise ctx.error(path, "unknown key", f"{'.'.join(parts[:i])} is a value, not a section")
        if part not in model.model_fields:
            raise ctx.error(path, "unknown key", f"use one of: {', '.join(model.model_fields)}")
        field = model.model_fields[part]
        model = typing.cast(type[BaseModel], field.annotation) if _is_model(field) else None
        if i == len(parts) - 1:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child


def _deep_copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _deep_copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deep_copy(v) for v in x]
    return x


def config_from_dict(
    data: dict[str, Any] | None,
    overrides: Sequence[str] = (),
    source: str = "<dict>",
) -> Config:
    """Build and validate a :class:`Config` from a nested dict plus dotted overrides."""
    tree = _deep_copy(data if data is not None else {})
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (agents, ...)")
    overridden: dict[str, str] = {}
    ctx = _Ctx(source, overridden)
    for item in overrides:
        try:
            key, value = parse_override(item)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        overridden[key] = item
        _set_dotted(tree, key, value, ctx)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise _translate(e, tree, ctx) from None


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config, apply ``key.path=value`` overrides, validate, return it frozen."""
    p = Path(path)
    data = read_yaml_mapping(p, "config", "--config", "sections (agents, ...)", ConfigError)
    return config_from_dict(data, overrides, source=str(p))


def read_yaml_mapping(
    path: Path, kind: str, flag: str, contents: str, error: type[MarlJaxError]
) -> dict[str, Any] | None:
    """The mapping at the top of YAML file ``path`` (None when empty); a missing or unreadable
    file, bad YAML or another top level raises ``error`` in one line naming ``flag``."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: {kind} file not found; check the {flag} path") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {kind} file ({e.strerror})") from None
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise error(f"{path}: not valid YAML{at}: {problem}; fix the syntax") from None
    if data is not None and not isinstance(data, dict):
        raise error(f"{path}: the top level must be a mapping of {contents}")
    return data


def save_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Write ``cfg`` as YAML atomically; returns the path."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    return atomic_write_text(path, text)


_DEFAULT = Config()


# --------------------------------------------------------------------------- schema


def schema_text() -> str:
    """The JSON Schema of a config file, as committed in ``configs/schema.json``."""
    return json.dumps(Config.model_json_schema(), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m marl_jax.config schema``: print the JSON Schema of a config file."""
    parser = argparse.ArgumentParser(
        prog="python -m marl_jax.config", description="Tools for marl-jax config files."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("schema", help="print the JSON Schema (configs/schema.json)")
    parser.parse_args(argv)
    sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
