"""Configuration: YAML -> frozen, validated pydantic models, with dotted overrides.

A config file has the original system's sections: ``agents.mlmi``, ``agents.nwrqk``,
``agents.mmd`` (the actors' layer sizes), ``critic``, ``training``, ``env`` and
``checkpoint``, plus a top-level ``seed``. The sizes that the agent table and ``env.window``
fix (an actor's ``input_dim``, ``action_dim`` and ``sequence_length``, the critic's
``state_dim`` and ``n_agents``) are not keys: :func:`marl_jax.agents.fixed_sizes` gives them.
Every key has a default, so a file only needs the keys it changes; an unknown key, a wrong
type or an impossible value raises :class:`ConfigError` with one line naming the file, the
override if one set the key, the dotted key, and what to do. ``python -m marl_jax.config
schema`` prints the JSON Schema (committed as ``configs/schema.json`` for editors).

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
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from marl_jax.agents import (
    AGENT_BY_NAME,
    AGENT_NAMES,
    CRITIC_ATTENTION_HEADS,
    CRITIC_HIDDEN_DIMS,
    FIXED_BY,
)
from marl_jax.errors import MarlJaxError
from marl_jax.validation import (
    Bool,
    Float,
    Int,
    Located,
    Name,
    Names,
    Sizes,
    Where,
    explain,
    is_model,
    read_yaml_mapping,
    rule,
    yaml_load,
    yaml_scalar,
)

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
    "SHIPPED_CONFIGS",
    "config_from_dict",
    "resolve_config",
    "shipped_config_names",
    "config_to_dict",
    "config_yaml",
    "load_config",
    "main",
    "parse_override",
    "schema_text",
]


class ConfigError(MarlJaxError, ValueError):
    """A bad configuration; the message is one line naming the key and the file."""


# --------------------------------------------------------------------------- models


def _fixed(key: str) -> tuple[str, str]:
    """``(problem, hint)`` for a model size that the agent table or the environment fixes."""
    return f"is derived from {FIXED_BY[key]}, not set in the config", "remove it"


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
                if not (v is None and k in cls.model_fields and is_model(cls.model_fields[k]))
            }
        return data


class _ModelSection(_Section):
    """A model's constructor arguments, less the sizes the agent table and env.window fix."""

    fixed_keys: ClassVar[tuple[str, ...]] = ()  # see marl_jax.agents.fixed_sizes

    @model_validator(mode="before")
    @classmethod
    def _refuse_fixed_keys(cls, data: Any) -> Any:
        for key in cls.fixed_keys:
            if isinstance(data, dict) and key in data:
                raise rule(key, *_fixed(key))
        return data

    def to_kwargs(self) -> dict[str, Any]:
        """The section as model constructor keyword arguments, sequences as lists (the fixed
        sizes come from :func:`marl_jax.agents.fixed_sizes`)."""
        return self.model_dump(mode="json")


def _no_required(schema: dict[str, Any]) -> None:
    schema.pop("required", None)


class AgentConfig(_ModelSection):
    """Constructor arguments of one actor (MLMIActor, NWRQKActor or MMDActor)."""

    # In a file every key is optional: missing keys take that agent's defaults.
    model_config = ConfigDict(json_schema_extra=_no_required)
    fixed_keys = ("input_dim", "action_dim", "sequence_length")

    hidden_dims: Sizes = Field(min_length=1, description="hidden layer sizes")
    conv_channels: Sizes = Field(min_length=2, description="temporal conv channels")
    kernel_sizes: Sizes = Field(min_length=2, description="temporal conv kernel sizes")
    dropout_rate: Float = Field(0.1, ge=0, lt=1, description="dropout probability")
    temperature_init: Float = Field(1.0, gt=0, description="initial softmax temperature")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.hidden_dims[-1] < 2:
            raise rule(
                "hidden_dims",
                f"the last size feeds heads of width h//2, got {self.hidden_dims[-1]}",
                "use 2 or more",
            )
        return self


def _default_agent(name: str) -> AgentConfig:
    spec = AGENT_BY_NAME[name]
    return AgentConfig(
        hidden_dims=spec.hidden_dims,
        conv_channels=spec.conv_channels,
        kernel_sizes=spec.kernel_sizes,
    )


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
            heads = AGENT_BY_NAME[name].heads
            if agent.hidden_dims[0] % heads:
                raise rule(
                    f"{name}.hidden_dims",
                    f"hidden_dims[0]={agent.hidden_dims[0]} must be divisible by the "
                    f"{heads} attention heads",
                    f"use a multiple of {heads}",
                )
        return self

    def items(self) -> list[tuple[str, AgentConfig]]:
        """``[(name, AgentConfig)]`` in the canonical order mlmi, nwrqk, mmd."""
        return [(n, getattr(self, n)) for n in AGENT_NAMES]


class CriticConfig(_ModelSection):
    """Constructor arguments of CentralizedCritic."""

    fixed_keys = ("state_dim", "n_agents")

    hidden_dims: Sizes = Field(
        CRITIC_HIDDEN_DIMS,
        min_length=1,
        description=f"hidden sizes; the last a multiple of {CRITIC_ATTENTION_HEADS}",
    )
    dropout_rate: Float = Field(0.1, ge=0, lt=1, description="dropout probability")
    use_layer_norm: Bool = Field(True, description="layer norm after each hidden layer")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.hidden_dims[-1] % CRITIC_ATTENTION_HEADS:
            raise rule(
                "hidden_dims",
                f"the last size must be a multiple of {CRITIC_ATTENTION_HEADS} "
                f"(attention heads), got {self.hidden_dims[-1]}",
                "use e.g. 16 or 128",
            )
        return self


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
    anneal_ent: Bool = Field(
        False,
        description="decay ent_coef linearly to 0 over the run's updates (ent_coef at the "
        "first update, 0 after the last)",
    )
    reward_scale: Float = Field(
        1.0,
        gt=0,
        description="the learner multiplies every reward by this before GAE (the critic and "
        "ValueNorm see scaled returns; ValueNorm's variance floor of 0.01 leaves rewards much "
        "smaller than 0.1 unnormalised); reported rewards are not scaled",
    )
    use_valuenorm: Bool = Field(True, description="normalise value targets (ValueNorm)")
    use_clipped_value_loss: Bool = Field(True, description="clip the value loss like PPO")
    use_huber_loss: Bool = Field(True, description="Huber instead of squared value loss")
    huber_delta: Float = Field(10.0, gt=0, description="Huber loss delta")
    normalise_advantages: Bool = Field(True, description="normalise advantages per batch")
    credit: Literal["shared", "counterfactual"] = Field(
        "shared",
        description="each actor's advantage: the team's (shared), or less the step's reward "
        "averaged over that actor's own actions with the others' held (counterfactual: the "
        "other actors' votes no longer add noise to its credit)",
    )
    aux_return_coef: Float = Field(
        0.0,
        ge=0,
        description="weight of an auxiliary loss in which each actor's last features predict "
        "the next bar's return through a linear head that is trained but never exported; "
        "0 turns it off",
    )
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
        description="dtype of the actors' matmuls in rollouts and losses; the critic, weights, "
        "optimizer, norms, softmax and losses stay float32",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.batch_size % self.num_minibatches:
            raise rule(
                "num_minibatches",
                f"num_envs*rollout_len={self.batch_size} is not divisible by "
                f"{self.num_minibatches}",
                "pick a divisor of num_envs*rollout_len",
            )
        if self.total_timesteps < self.batch_size:
            raise rule(
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
    """Market environment and data. ``data_path`` null (and no ``data_paths``) means synthetic
    bars; ``data_paths`` lists several instruments, trained in one environment."""

    episode_len: Int = Field(256, ge=1, description="bars per episode")
    cost_bps: Float = Field(1.0, ge=0, description="cost per unit of position change, bps")
    window: Int = Field(48, ge=1, description="bars each agent sees")
    interval_minutes: Int = Field(
        30,
        ge=1,
        description="bar length of the synthetic data, minutes (a bar file's interval is read "
        "from its timestamps)",
    )
    resample_minutes: Float | None = Field(
        None,
        gt=0,
        description="aggregate a bar file's bars into bars of this many minutes (coarser "
        "only); null = the file's own interval",
    )
    periods_per_year: Float | None = Field(
        None,
        gt=0,
        description="bars per year that annualise the metrics; null = measured on the train "
        "split's timestamps (the synthetic data: 252 days of 24 hours)",
    )
    train_frac: Float = Field(0.7, gt=0, lt=1, description="training split, by time")
    val_frac: Float = Field(0.15, ge=0, lt=1, description="validation split, by time")
    test_frac: Float = Field(0.15, gt=0, lt=1, description="test split, by time")
    data_path: Name | None = Field(None, description="CSV/Parquet bar file; null = synthetic")
    data_paths: Names = Field(
        (),
        description="several CSV/Parquet bar files (instruments, distinct file names): each "
        "environment draws one at reset; not with data_path",
    )
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
    observe_position: Bool = Field(
        False,
        description="add the position held at each bar (the signal in [-1, 1] set at the bar "
        "before, before sizing) to every actor's input (one channel) and the critic's (one "
        "feature): the models take one more input",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.data_path is not None and self.data_paths:
            raise rule(
                "data_paths",
                "both data_path and data_paths are set",
                "set data_path for one file or data_paths for several, not both",
            )
        names = [Path(p).name for p in self.data_paths]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise rule(
                "data_paths",
                f"two files are named {twice[0]} (an instrument is known by its file name)",
                "give the files distinct names",
            )
        total = self.train_frac + self.val_frac + self.test_frac
        if total > 1.0 + 1e-9:
            raise rule(
                "test_frac",
                f"train_frac + val_frac + test_frac = {total:g} exceeds 1",
                "make the three fractions sum to at most 1",
            )
        if self.synthetic_n_bars <= self.window + self.episode_len:
            raise rule(
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
    ensemble: Int = Field(
        1,
        ge=1,
        description="models trained per run, member i with seed seed*ensemble+i; the policy's "
        "position is the mean of theirs (train and walkforward; decide and backtest read the "
        "run's folder); 1: one model",
    )


# --------------------------------------------------------------------------- overrides


def parse_override(item: str) -> tuple[str, Any]:
    """``"training.actor_lr=3e-4"`` -> ``("training.actor_lr", 3e-4)`` (value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"override {item!r}: expected KEY.PATH=VALUE, e.g. training.actor_lr=3e-4"
        )
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())
        raise ConfigError(f"override {item!r}: value is not valid YAML ({msg})") from None
    return key, value


def _set_dotted(tree: dict[str, Any], key: str, value: Any, where: Where) -> None:
    """Set ``tree[a][b]... = value`` for ``key = "a.b..."``, checking each part is a key."""
    parts = key.split(".")
    node = tree
    model: type[BaseModel] | None = Config
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        if model is None:
            raise where.error(
                path, "unknown key", f"{'.'.join(parts[:i])} is a value, not a section"
            )
        if part in getattr(model, "fixed_keys", ()):
            raise where.error(path, *_fixed(part))
        if part not in model.model_fields:
            raise where.error(path, "unknown key", f"use one of: {', '.join(model.model_fields)}")
        field = model.model_fields[part]
        model = typing.cast(type[BaseModel], field.annotation) if is_model(field) else None
        if i == len(parts) - 1:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child


# --------------------------------------------------------------------------- errors

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
        if not is_model(field):
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
    return yaml_scalar(obj)


def _translate(e: ValidationError, tree: Any, where: Where) -> MarlJaxError:
    """The first of pydantic's errors as one :class:`ConfigError` line."""
    err = e.errors()[0]
    parts, model, field = _resolve(err["loc"])
    value = _lookup(tree, parts)
    if value is _MISSING:
        value = err.get("input")
    default = _default_text(parts) if field is not None else None
    element = len(err["loc"]) > len(parts)  # one entry of a list
    at = Located(".".join(parts), model, field, repr(value), default, element)
    return where.error(*explain(err, at))


# --------------------------------------------------------------------------- building


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (lists, not tuples) that ``config_from_dict`` reads back equal."""
    return cfg.model_dump(mode="json")


def config_yaml(cfg: Config) -> str:
    """``cfg`` as the YAML text of a config file (``load_config`` reads it back equal)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


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
    flags: dict[str, str] = {}
    where = Where(source, flags, ConfigError)
    for item in overrides:
        try:
            key, value = parse_override(item)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        flags[key] = f"override {item!r}"
        _set_dotted(tree, key, value, where)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise _translate(e, tree, where) from None


# The configs shipped with the package (the repository's top-level configs/ links here).
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_config_names() -> list[str]:
    """The names ``--config`` accepts from any directory: ``quickstart``, ``real_markets``,
    ``strategic_marl_v1``."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def resolve_config(spec: str | os.PathLike[str]) -> Path:
    """The config file ``spec`` names: the file at that path where there is one, else the
    shipped config of that name (``quickstart`` or ``quickstart.yaml``; a bare name only),
    else ``spec`` as given (reading it then says it is missing)."""
    path = Path(spec)
    if path.is_file() or path.parent != Path("."):
        return path
    shipped = SHIPPED_CONFIGS / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    return shipped if shipped.is_file() else path


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (a path, or a shipped config's name: :func:`resolve_config`), apply
    ``key.path=value`` overrides, validate, return it frozen."""
    p = resolve_config(path)
    if not p.is_file() and p.parent == Path("."):
        names = ", ".join(shipped_config_names())
        raise ConfigError(
            f"{p}: config file not found, and no shipped config has that name; give a path "
            f"or one of {names}"
        )
    data = read_yaml_mapping(p, "config", "--config", "sections (agents, ...)", ConfigError)
    return config_from_dict(data, overrides, source=str(p))


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
