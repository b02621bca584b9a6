"""Configuration: YAML -> frozen, validated dataclasses, with dotted overrides.

A config file has the original system's sections: ``agents.mlmi``, ``agents.nwrqk``,
``agents.mmd`` (the actor constructor arguments), ``critic``, ``training``, ``env`` and
``checkpoint``, plus a top-level ``seed``. Every key has a default, so a file only needs
the keys it changes; an unknown key, a wrong type or an impossible value raises
:class:`ConfigError` with one line naming the dotted key, the file, and what to do.

Training defaults follow the published MAPPO settings (Yu et al. 2022, "The Surprising
Effectiveness of PPO in Cooperative Multi-Agent Games", and its reference implementation
``marlbenchmark/on-policy``): clip 0.2, gamma 0.99, GAE lambda 0.95, entropy 0.01, value
loss coefficient 1, gradient-norm clip 10, Adam lr 5e-4 (actor and critic) with eps 1e-5,
ValueNorm, clipped Huber value loss with delta 10, one minibatch, and few epochs (the paper
recommends 5 to 10 on hard tasks; we use 5). Learning-rate decay is off by default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
    "parse_override",
    "save_config",
]

AGENT_NAMES = ("mlmi", "nwrqk", "mmd")
# Features each agent sees (fixed by the environment) and attention heads per actor.
_AGENT_INPUT_DIMS = {"mlmi": 4, "nwrqk": 6, "mmd": 3}
_AGENT_HEADS = {"mlmi": 8, "nwrqk": 8, "mmd": 4}
_CRITIC_ATTENTION_HEADS = 4


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key and the file."""


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class AgentConfig:
    """Constructor arguments of one actor (MLMIActor, NWRQKActor or MMDActor)."""

    input_dim: int
    hidden_dims: tuple[int, ...]
    conv_channels: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    action_dim: int = 3
    dropout_rate: float = 0.1
    temperature_init: float = 1.0
    sequence_length: int = 48

    def to_kwargs(self) -> dict[str, Any]:
        """The model constructor's keyword arguments, sequences as lists."""
        return _to_plain(self)


def _mlmi() -> AgentConfig:
    return AgentConfig(4, (256, 128, 64), (32, 64, 128), (3, 5))


def _nwrqk() -> AgentConfig:
    return AgentConfig(6, (256, 128, 64), (32, 64, 128), (7, 9))


def _mmd() -> AgentConfig:
    return AgentConfig(3, (128, 64, 32), (16, 32, 64), (5, 7))


@dataclass(frozen=True)
class AgentsConfig:
    mlmi: AgentConfig = field(default_factory=_mlmi)
    nwrqk: AgentConfig = field(default_factory=_nwrqk)
    mmd: AgentConfig = field(default_factory=_mmd)

    def items(self) -> list[tuple[str, AgentConfig]]:
        """``[(name, AgentConfig)]`` in the canonical order mlmi, nwrqk, mmd."""
        return [(n, getattr(self, n)) for n in AGENT_NAMES]


@dataclass(frozen=True)
class CriticConfig:
    """Constructor arguments of CentralizedCritic."""

    state_dim: int = 13
    n_agents: int = 3
    hidden_dims: tuple[int, ...] = (512, 256, 128)
    dropout_rate: float = 0.1
    use_layer_norm: bool = True

    def to_kwargs(self) -> dict[str, Any]:
        return _to_plain(self)


@dataclass(frozen=True)
class TrainingConfig:
    """MAPPO. Floats stay plain Python floats; the trainer may trace them for sweeps."""

    num_envs: int = 16
    rollout_len: int = 128
    total_timesteps: int = 2_000_000
    update_epochs: int = 5
    num_minibatches: int = 1
    clip_eps: float = 0.2
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ent_coef: float = 0.01
    value_loss_coef: float = 1.0
    max_grad_norm: float = 10.0
    actor_lr: float = 5e-4
    critic_lr: float = 5e-4
    adam_eps: float = 1e-5
    anneal_lr: bool = False
    use_valuenorm: bool = True
    use_clipped_value_loss: bool = True
    use_huber_loss: bool = True
    huber_delta: float = 10.0
    normalize_advantages: bool = True

    @property
    def batch_size(self) -> int:
        """Transitions per update: ``num_envs * rollout_len``."""
        return self.num_envs * self.rollout_len

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_updates(self) -> int:
        """``total_timesteps // batch_size`` (at least 1 after validation)."""
        return self.total_timesteps // self.batch_size


@dataclass(frozen=True)
class EnvConfig:
    """Market environment and data. ``data_path`` null means synthetic bars."""

    episode_len: int = 256
    cost_bps: float = 1.0
    window: int = 48
    interval_minutes: int = 30
    train_frac: float = 0.7
    val_frac: float = 0.15
    test_frac: float = 0.15
    data_path: str | None = None
    synthetic_n_bars: int = 20_000
    synthetic_seed: int = 0
    norm_clip: float = 10.0

    @property
    def split_fractions(self) -> tuple[float, float, float]:
        """``(train_frac, val_frac, test_frac)``."""
        return (self.train_frac, self.val_frac, self.test_frac)


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str = "checkpoints"
    save_every: int = 10
    max_to_keep: int = 5
    best_metric: str = "average_reward"


@dataclass(frozen=True)
class Config:
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0


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
        msg = str(e).replace("\n", " ")
        raise ConfigError(f"override {item!r}: value is not valid YAML ({msg})") from None
    return key, value


# --------------------------------------------------------------------------- building


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(x) for x in obj]
    return obj


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (lists, not tuples) that ``config_from_dict`` reads back equal."""
    return _to_plain(cfg)


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts) + " or null"
    return str(tp)


_NOT = object()


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` or ``_NOT`` when it has the wrong type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            out = _coerce(value, a)
            if out is not _NOT:
                return out
        return _NOT
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return _NOT
        elem = typing.get_args(tp)[0]
        out = tuple(_coerce(v, elem) for v in value)
        return _NOT if any(v is _NOT for v in out) else out
    if tp is bool:
        return value if isinstance(value, bool) else _NOT
    if tp is int:
        if isinstance(value, bool):
            return _NOT
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)  # e.g. total_timesteps: 2e6
        return _NOT
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _NOT
        return float(value)
    if tp is str:
        return value if isinstance(value, str) else _NOT
    raise TypeError(f"unsupported config field type {tp!r}")


class _Ctx:
    """Where values came from, for error messages."""

    def __init__(self, source: str, overridden: dict[str, str]):
        self.source = source
        self.overridden = overridden

    def where(self, key: str) -> str:
        for k, item in self.overridden.items():
            if key == k or key.startswith(k + "."):
                return f"{self.source} (override {item!r})"
        return self.source

    def error(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {key}: {problem}; {fix}")


def _build(default: Any, data: Any, prefix: str, ctx: _Ctx) -> Any:
    cls = type(default)
    if not isinstance(data, dict):
        raise ctx.error(
            prefix, f"expected a mapping of keys, got {data!r}", "write it as a YAML section"
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    changes: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ctx.error(path, "unknown key", f"remove it or use one of: {', '.join(names)}")
        current = getattr(default, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _build(current, {} if value is None else value, path, ctx)
            continue
        out = _coerce(value, hints[key])
        if out is _NOT:
            raise ctx.error(
                path,
                f"expected {_type_name(hints[key])}, got {value!r}",
                f"fix the value (default: {_yaml_scalar(_to_plain(current))})",
            )
        changes[key] = out
    return dataclasses.replace(default, **changes)


def _set_dotted(tree: dict[str, Any], key: str, value: Any, ctx: _Ctx) -> None:
    parts = key.split(".")
    node: Any = tree
    schema: Any = Config()
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        if not dataclasses.is_dataclass(schema) or part not in {
            f.name for f in dataclasses.fields(schema)
        }:
            names = (
                ", ".join(f.name for f in dataclasses.fields(schema))
                if dataclasses.is_dataclass(schema)
                else "none"
            )
            raise ctx.error(path, "unknown key", f"use one of: {names}")
        schema = getattr(schema, part)
        if i == len(parts) - 1:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child


def config_from_dict(
    data: dict[str, Any] | None,
    overrides: typing.Sequence[str] = (),
    source: str = "<dict>",
) -> Config:
    """Build and validate a :class:`Config` from a nested dict plus dotted overrides."""
    tree: dict[str, Any] = _deep_copy(data or {})
    overridden: dict[str, str] = {}
    ctx = _Ctx(source, overridden)
    for item in overrides:
        try:
            key, value = parse_override(item)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        overridden[key] = item
        _set_dotted(tree, key, value, ctx)
    cfg = _build(Config(), tree, "", ctx)
    _validate(cfg, ctx)
    return cfg


def _deep_copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _deep_copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deep_copy(v) for v in x]
    return x


def load_config(path: str | os.PathLike[str], overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config, apply ``key.path=value`` overrides, validate, return it frozen."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found; check the --config path") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file ({e.strerror})") from None
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}: not valid YAML{at}: {problem}; fix the syntax") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections (agents, ...)")
    return config_from_dict(data, overrides, source=str(p))


def save_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Write ``cfg`` as YAML atomically (temp file in the same folder, then ``os.replace``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


# --------------------------------------------------------------------------- validation


def _validate(cfg: Config, ctx: _Ctx) -> None:
    def need(ok: bool, key: str, problem: str, fix: str) -> None:
        if not ok:
            raise ctx.error(key, problem, fix)

    def positive_ints(values: tuple[int, ...], key: str, min_len: int) -> None:
        need(
            len(values) >= min_len,
            key,
            f"needs at least {min_len} entries, got {list(values)}",
            f"give {min_len} or more sizes",
        )
        need(
            all(v > 0 for v in values),
            key,
            f"sizes must be positive, got {list(values)}",
            "use positive integers",
        )

    for name, a in cfg.agents.items():
        k = f"agents.{name}"
        need(
            a.input_dim == _AGENT_INPUT_DIMS[name],
            f"{k}.input_dim",
            f"the environment gives {name} {_AGENT_INPUT_DIMS[name]} features, got {a.input_dim}",
            f"set it to {_AGENT_INPUT_DIMS[name]}",
        )
        positive_ints(a.hidden_dims, f"{k}.hidden_dims", 1)
        heads = _AGENT_HEADS[name]
        need(
            a.hidden_dims[0] % heads == 0,
            f"{k}.hidden_dims",
            f"hidden_dims[0]={a.hidden_dims[0]} must be divisible by the {heads} attention heads",
            f"use a multiple of {heads}",
        )
        need(
            a.hidden_dims[-1] >= 2,
            f"{k}.hidden_dims",
            f"the last size feeds heads of width h//2, got {a.hidden_dims[-1]}",
            "use 2 or more",
        )
        positive_ints(a.conv_channels, f"{k}.conv_channels", 2)
        positive_ints(a.kernel_sizes, f"{k}.kernel_sizes", 2)
        need(
            a.action_dim >= 2,
            f"{k}.action_dim",
            f"got {a.action_dim}",
            "use 3 (bearish, neutral, bullish)",
        )
        need(
            0.0 <= a.dropout_rate < 1.0,
            f"{k}.dropout_rate",
            f"got {a.dropout_rate}",
            "use a rate in [0, 1)",
        )
        need(
            a.temperature_init > 0,
            f"{k}.temperature_init",
            f"got {a.temperature_init}",
            "use a positive temperature such as 1.0",
        )
        need(
            a.sequence_length > 0,
            f"{k}.sequence_length",
            f"got {a.sequence_length}",
            "use a positive length such as 48",
        )

    c = cfg.critic
    total = sum(_AGENT_INPUT_DIMS.values())
    need(
        c.state_dim == total,
        "critic.state_dim",
        f"the critic sees the {total} concatenated agent features, got {c.state_dim}",
        f"set it to {total}",
    )
    need(
        c.n_agents == len(AGENT_NAMES),
        "critic.n_agents",
        f"got {c.n_agents}",
        f"set it to {len(AGENT_NAMES)}",
    )
    positive_ints(c.hidden_dims, "critic.hidden_dims", 1)
    need(
        c.hidden_dims[-1] % _CRITIC_ATTENTION_HEADS == 0 and c.hidden_dims[-1] >= 4,
        "critic.hidden_dims",
        f"the last size must be a multiple of {_CRITIC_ATTENTION_HEADS} (attention heads), "
        f"got {c.hidden_dims[-1]}",
        "use e.g. 16 or 128",
    )
    need(
        0.0 <= c.dropout_rate < 1.0,
        "critic.dropout_rate",
        f"got {c.dropout_rate}",
        "use a rate in [0, 1)",
    )

    t = cfg.training
    for key in ("num_envs", "rollout_len", "update_epochs", "num_minibatches"):
        v = getattr(t, key)
        need(v >= 1, f"training.{key}", f"must be at least 1, got {v}", "use a positive integer")
    need(
        t.batch_size % t.num_minibatches == 0,
        "training.num_minibatches",
        f"num_envs*rollout_len={t.batch_size} is not divisible by {t.num_minibatches}",
        "pick a divisor of num_envs*rollout_len",
    )
    need(
        t.total_timesteps >= t.batch_size,
        "training.total_timesteps",
        f"{t.total_timesteps} is less than one update (num_envs*rollout_len={t.batch_size})",
        f"use at least {t.batch_size}",
    )
    for key in ("actor_lr", "critic_lr", "adam_eps", "clip_eps", "max_grad_norm", "huber_delta"):
        v = getattr(t, key)
        need(
            math.isfinite(v) and v > 0,
            f"training.{key}",
            f"must be > 0, got {v}",
            "use a positive finite number",
        )
    for key in ("gamma", "gae_lambda"):
        v = getattr(t, key)
        need(
            0.0 <= v <= 1.0,
            f"training.{key}",
            f"must be in [0, 1], got {v}",
            "use e.g. 0.99 for gamma, 0.95 for gae_lambda",
        )
    for key in ("ent_coef", "value_loss_coef"):
        v = getattr(t, key)
        need(
            math.isfinite(v) and v >= 0,
            f"training.{key}",
            f"must be >= 0, got {v}",
            "use a non-negative coefficient",
        )

    e = cfg.env
    for key in ("episode_len", "window", "interval_minutes", "synthetic_n_bars"):
        v = getattr(e, key)
        need(v >= 1, f"env.{key}", f"must be at least 1, got {v}", "use a positive integer")
    need(
        math.isfinite(e.cost_bps) and e.cost_bps >= 0,
        "env.cost_bps",
        f"must be >= 0, got {e.cost_bps}",
        "use a cost in basis points such as 1.0",
    )
    for key in ("train_frac", "test_frac"):
        v = getattr(e, key)
        need(
            0.0 < v < 1.0,
            f"env.{key}",
            f"must be in (0, 1), got {v}",
            "use fractions like 0.7/0.15/0.15",
        )
    need(
        0.0 <= e.val_frac < 1.0,
        "env.val_frac",
        f"must be in [0, 1), got {e.val_frac}",
        "use fractions like 0.7/0.15/0.15",
    )
    s = e.train_frac + e.val_frac + e.test_frac
    need(
        s <= 1.0 + 1e-9,
        "env.test_frac",
        f"train_frac + val_frac + test_frac = {s:g} exceeds 1",
        "make the three fractions sum to at most 1",
    )
    need(
        math.isfinite(e.norm_clip) and e.norm_clip > 0,
        "env.norm_clip",
        f"must be > 0, got {e.norm_clip}",
        "use e.g. 10.0",
    )
    need(
        e.synthetic_n_bars > e.window + e.episode_len,
        "env.synthetic_n_bars",
        f"{e.synthetic_n_bars} bars cannot hold a window plus an episode "
        f"({e.window}+{e.episode_len})",
        "use more bars",
    )
    need(
        e.data_path is None or e.data_path.strip() != "",
        "env.data_path",
        "empty path",
        "give a file path or null for synthetic bars",
    )

    k = cfg.checkpoint
    need(k.dir.strip() != "", "checkpoint.dir", "empty path", "give a folder name")
    need(
        k.save_every >= 1,
        "checkpoint.save_every",
        f"got {k.save_every}",
        "use a positive number of updates",
    )
    need(
        k.max_to_keep >= 1,
        "checkpoint.max_to_keep",
        f"got {k.max_to_keep}",
        "keep at least 1 checkpoint",
    )
    need(
        k.best_metric.strip() != "",
        "checkpoint.best_metric",
        "empty name",
        "use a metric name such as average_reward",
    )
    need(cfg.seed >= 0, "seed", f"got {cfg.seed}", "use a non-negative integer")
