"""Tests for marl_jax.config: loading, overrides, validation, round trip."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from marl_jax.config import (
    AGENT_NAMES,
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

ROOT = Path(__file__).resolve().parents[1]
V1 = ROOT / "configs" / "strategic_marl_v1.yaml"
QUICK = ROOT / "configs" / "quickstart.yaml"


def test_v1_is_the_full_size_default():
    cfg = load_config(V1)
    assert cfg == Config()
    a = cfg.agents
    assert (a.mlmi.input_dim, a.mlmi.hidden_dims, a.mlmi.conv_channels, a.mlmi.kernel_sizes) == (
        4,
        (256, 128, 64),
        (32, 64, 128),
        (3, 5),
    )
    assert (a.nwrqk.input_dim, a.nwrqk.kernel_sizes) == (6, (7, 9))
    assert (a.mmd.input_dim, a.mmd.hidden_dims, a.mmd.conv_channels, a.mmd.kernel_sizes) == (
        3,
        (128, 64, 32),
        (16, 32, 64),
        (5, 7),
    )
    for _, agent in a.items():
        assert agent.action_dim == 3 and agent.sequence_length == 48
        assert agent.dropout_rate == 0.1 and agent.temperature_init == 1.0
    assert cfg.critic.hidden_dims == (512, 256, 128) and cfg.critic.state_dim == 13
    t = cfg.training
    assert (t.clip_eps, t.gamma, t.gae_lambda, t.ent_coef) == (0.2, 0.99, 0.95, 0.01)
    assert (t.actor_lr, t.critic_lr, t.adam_eps, t.max_grad_norm) == (5e-4, 5e-4, 1e-5, 10.0)
    assert t.use_valuenorm and t.use_clipped_value_loss and t.use_huber_loss
    assert t.huber_delta == 10.0 and t.normalize_advantages and not t.anneal_lr
    assert cfg.checkpoint.max_to_keep == 5 and cfg.checkpoint.best_metric == "average_reward"
    # every numeric hyperparameter is a plain Python float, ready to be traced
    for name in ("clip_eps", "gamma", "gae_lambda", "ent_coef", "actor_lr", "critic_lr"):
        assert type(getattr(t, name)) is float


def test_quickstart_is_small_and_short():
    cfg, full = load_config(QUICK), load_config(V1)
    for name in ("mlmi", "nwrqk", "mmd"):
        small, big = getattr(cfg.agents, name), getattr(full.agents, name)
        assert all(s < b for s, b in zip(small.hidden_dims, big.hidden_dims, strict=True)) or (
            small.hidden_dims[0] < big.hidden_dims[0]
        )
        assert small.sequence_length == cfg.env.window  # the models see the env's window
    assert cfg.agents.nwrqk.kernel_sizes == (7, 9)  # untouched keys keep the agent's defaults
    assert cfg.critic.hidden_dims[0] < full.critic.hidden_dims[0]
    t = cfg.training
    assert 50 <= t.num_updates <= 200
    assert t.batch_size % t.num_minibatches == 0


def test_agent_kwargs_are_model_arguments():
    kw = load_config(V1).agents.mlmi.to_kwargs()
    assert kw == {
        "input_dim": 4,
        "hidden_dims": [256, 128, 64],
        "conv_channels": [32, 64, 128],
        "kernel_sizes": [3, 5],
        "action_dim": 3,
        "dropout_rate": 0.1,
        "temperature_init": 1.0,
        "sequence_length": 48,
    }
    assert [n for n, _ in load_config(V1).agents.items()] == list(AGENT_NAMES)


def test_overrides():
    cfg = load_config(
        QUICK,
        [
            "training.actor_lr=3e-4",
            "training.total_timesteps=1e6",
            "agents.mmd.kernel_sizes=[3, 5]",
            "env.data_path=data/bars.csv",
            "training.anneal_lr=true",
            "seed=7",
        ],
    )
    assert cfg.training.actor_lr == 3e-4 and type(cfg.training.actor_lr) is float
    assert cfg.training.total_timesteps == 1_000_000
    assert cfg.agents.mmd.kernel_sizes == (3, 5)
    assert cfg.env.data_path == "data/bars.csv"
    assert cfg.training.anneal_lr is True and cfg.seed == 7
    assert load_config(QUICK, ["env.data_path=null"]).env.data_path is None


def test_frozen():
    cfg = load_config(QUICK)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.gamma = 0.5  # type: ignore[misc]


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  actor_lr: 3e-4\n  adam_eps: 1E-8\n")
    t = load_config(p).training
    assert t.actor_lr == 3e-4 and t.adam_eps == 1e-8


def test_save_load_roundtrip(tmp_path):
    cfg = load_config(QUICK, ["training.critic_lr=1e-3", "env.data_path=x.csv"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert out.exists()
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp file left
    assert load_config(out) == cfg
    assert yaml.safe_load(out.read_text()) == config_to_dict(cfg)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_save_is_atomic_replace(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("old")
    save_config(Config(), p)
    assert load_config(p) == Config()


BAD_OVERRIDES = [
    ("training.bogus=1", "training.bogus", "unknown key"),
    ("agents.foo.input_dim=4", "agents.foo", "unknown key"),
    ("training.num_envs=abc", "training.num_envs", "expected an integer"),
    ("training.num_envs=2.5", "training.num_envs", "expected an integer"),
    ("training.use_valuenorm=1", "training.use_valuenorm", "true or false"),
    ("agents.mlmi.hidden_dims=5", "agents.mlmi.hidden_dims", "list of integers"),
    ("training.actor_lr=-1e-4", "training.actor_lr", "> 0"),
    ("training.critic_lr=0", "training.critic_lr", "> 0"),
    ("training.clip_eps=0", "training.clip_eps", "> 0"),
    ("training.gamma=1.01", "training.gamma", "[0, 1]"),
    ("training.gae_lambda=-0.1", "training.gae_lambda", "[0, 1]"),
    ("training.ent_coef=-0.01", "training.ent_coef", ">= 0"),
    ("training.num_minibatches=3", "training.num_minibatches", "not divisible"),
    ("training.num_envs=0", "training.num_envs", "at least 1"),
    ("training.total_timesteps=10", "training.total_timesteps", "less than one update"),
    ("agents.mlmi.kernel_sizes=[3]", "agents.mlmi.kernel_sizes", "at least 2"),
    ("agents.nwrqk.hidden_dims=[32, 0, 8]", "agents.nwrqk.hidden_dims", "positive"),
    ("agents.mlmi.hidden_dims=[]", "agents.mlmi.hidden_dims", "at least 1"),
    ("agents.mlmi.hidden_dims=[30, 16, 8]", "agents.mlmi.hidden_dims", "divisible"),
    ("agents.mmd.input_dim=4", "agents.mmd.input_dim", "set it to 3"),
    ("agents.mmd.dropout_rate=1.0", "agents.mmd.dropout_rate", "[0, 1)"),
    ("critic.state_dim=12", "critic.state_dim", "set it to 13"),
    ("critic.hidden_dims=[64, 32, 18]", "critic.hidden_dims", "multiple of 4"),
    ("env.test_frac=0.3", "env.test_frac", "at most 1"),
    ("env.train_frac=0", "env.train_frac", "(0, 1)"),
    ("env.norm_clip=0", "env.norm_clip", "> 0"),
    ("env.cost_bps=-1", "env.cost_bps", ">= 0"),
    ("checkpoint.max_to_keep=0", "checkpoint.max_to_keep", "at least 1"),
    ("checkpoint.save_every=0", "checkpoint.save_every", "positive"),
]


@pytest.mark.parametrize("override,key,phrase", BAD_OVERRIDES)
def test_bad_values_name_key_and_file(override, key, phrase):
    with pytest.raises(ConfigError) as ei:
        load_config(QUICK, [override])
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(QUICK) in msg and key in msg and phrase in msg, msg
    assert ";" in msg  # says what to do
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize(
    "text,key,phrase",
    [
        ("training:\n  lr: 0.1\n", "training.lr", "unknown key"),
        ("trainig:\n  gamma: 0.9\n", "trainig", "unknown key"),
        ("training:\n  gamma: high\n", "training.gamma", "expected a number"),
        ("training: 5\n", "training", "mapping"),
        ("agents:\n  mlmi:\n    kernel_sizes: [3]\n", "agents.mlmi.kernel_sizes", "at least 2"),
        ("training:\n  gamma: [0.9\n", "line", "not valid YAML"),
    ],
)
def test_bad_files(tmp_path, text, key, phrase):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg and key in msg and phrase in msg, msg


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE") as ei:
        load_config(QUICK, ["training.gamma"])
    assert str(QUICK) in str(ei.value)


def test_empty_file_gives_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert load_config(p) == Config()
