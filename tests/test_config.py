"""Tests for marl_jax.config: loading, overrides, validation, round trip, JSON Schema."""

import json
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
import yaml

from marl_jax import agents
from marl_jax.config import (
    AGENT_NAMES,
    AgentConfig,
    Config,
    ConfigError,
    TrainingConfig,
    config_from_dict,
    config_to_dict,
    config_yaml,
    load_config,
    main,
    parse_override,
    schema_text,
)

ROOT = Path(__file__).resolve().parents[1]
V1 = ROOT / "configs" / "strategic_marl_v1.yaml"
QUICK = ROOT / "configs" / "quickstart.yaml"


def test_v1_is_the_full_size_default():
    cfg = load_config(V1)
    assert cfg == Config()
    a = cfg.agents
    assert (a.mlmi.hidden_dims, a.mlmi.conv_channels, a.mlmi.kernel_sizes) == (
        (256, 128, 64),
        (32, 64, 128),
        (3, 5),
    )
    assert a.nwrqk.kernel_sizes == (7, 9)
    assert (a.mmd.hidden_dims, a.mmd.conv_channels, a.mmd.kernel_sizes) == (
        (128, 64, 32),
        (16, 32, 64),
        (5, 7),
    )
    for _, agent in a.items():
        assert agent.dropout_rate == 0.1 and agent.temperature_init == 1.0
    assert cfg.critic.hidden_dims == (512, 256, 128) and cfg.env.window == 48
    t = cfg.training
    assert (t.clip_eps, t.gamma, t.gae_lambda, t.ent_coef) == (0.2, 0.99, 0.95, 0.01)
    assert (t.actor_lr, t.critic_lr, t.adam_eps, t.max_grad_norm) == (5e-4, 5e-4, 1e-5, 10.0)
    assert t.use_valuenorm and t.use_clipped_value_loss and t.use_huber_loss
    assert t.huber_delta == 10.0 and t.normalise_advantages and not t.anneal_lr
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
    assert cfg.agents.nwrqk.kernel_sizes == (7, 9)  # untouched keys keep the agent's defaults
    assert cfg.critic.hidden_dims[0] < full.critic.hidden_dims[0]
    t = cfg.training
    assert 50 <= t.num_updates <= 200
    assert t.batch_size % t.num_minibatches == 0


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.env.cost_bps >= 0 and cfg.training.num_updates >= 1


def test_real_markets_is_the_benchmarks_setting():
    """configs/real_markets.yaml trades at the learning benchmark's cost, 1 bp, with the
    framing that validation chose on planted files: target actions, the excess reward, and
    gamma 0 (a vote moves only the next bar's reward)."""
    cfg = load_config(ROOT / "configs" / "real_markets.yaml")
    assert cfg.env.cost_bps == 1.0
    assert cfg.training.anneal_lr  # validation on planted files chose the linear decay
    assert (cfg.env.reward, cfg.env.action_mode, cfg.env.position_sizing) == (
        "excess",
        "target",
        "fixed",
    )
    assert cfg.training.gamma == 0.0


def test_agent_kwargs_are_model_arguments():
    kw = load_config(V1).agents.mlmi.to_kwargs()
    assert kw == {
        "hidden_dims": [256, 128, 64],
        "conv_channels": [32, 64, 128],
        "kernel_sizes": [3, 5],
        "dropout_rate": 0.1,
        "temperature_init": 1.0,
    }
    assert load_config(V1).critic.to_kwargs() == {
        "hidden_dims": [512, 256, 128],
        "dropout_rate": 0.1,
        "use_layer_norm": True,
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


def test_models_are_frozen_pydantic_models():
    cfg = load_config(QUICK)
    assert isinstance(cfg, pydantic.BaseModel) and isinstance(cfg.training, pydantic.BaseModel)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.training.gamma = 0.5  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.seed = 3  # type: ignore[misc]
    assert hash(cfg) == hash(load_config(QUICK))  # frozen models hash by value
    assert isinstance(cfg.agents.mlmi.hidden_dims, tuple)  # sequences stay tuples


def test_extra_keys_are_forbidden():
    with pytest.raises(pydantic.ValidationError, match="extra"):
        TrainingConfig(bogus=1)  # type: ignore[call-arg]
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"critic": {"hidden_dims": [16], "heads": 4}}, source="run.yaml")
    assert str(ei.value) == (
        "run.yaml: critic.heads: unknown key; use one of: hidden_dims, dropout_rate, use_layer_norm"
    )


def test_model_validator_error_is_one_line_naming_the_key():
    data = {"agents": {"nwrqk": {"hidden_dims": [36, 16, 8]}}}
    with pytest.raises(ConfigError) as ei:
        config_from_dict(data, source="run.yaml")
    assert str(ei.value) == (
        "run.yaml: agents.nwrqk.hidden_dims: hidden_dims[0]=36 must be divisible by the "
        "8 attention heads; use a multiple of 8"
    )
    assert ei.value.__cause__ is None and ei.value.__suppress_context__  # no pydantic chain
    with pytest.raises(ConfigError) as ei:
        config_from_dict({}, ["training.num_minibatches=3"], source="run.yaml")
    assert str(ei.value).startswith(
        "run.yaml (override 'training.num_minibatches=3'): training.num_minibatches: "
    )


def test_agent_facts_come_from_the_agent_table():
    cfg = Config()
    for name, agent in cfg.agents.items():
        spec = agents.AGENT_BY_NAME[name]
        assert agent.hidden_dims[0] % spec.heads == 0
        sizes = (agent.hidden_dims, agent.conv_channels, agent.kernel_sizes)
        assert sizes == (spec.hidden_dims, spec.conv_channels, spec.kernel_sizes)
    assert cfg.critic.hidden_dims == agents.CRITIC_HIDDEN_DIMS
    assert cfg.critic.hidden_dims[-1] % agents.CRITIC_ATTENTION_HEADS == 0
    assert AGENT_NAMES is agents.AGENT_NAMES


def test_strict_types():
    assert config_from_dict({"training": {"total_timesteps": 2e6}}).training.total_timesteps == (
        2_000_000
    )
    assert type(config_from_dict({"training": {"gamma": 1}}).training.gamma) is float
    for section, key, value in [
        ("training", "num_envs", True),  # a bool is not an int
        ("training", "gamma", False),
        ("training", "gamma", "0.9"),  # a string is not a number
        ("training", "num_envs", 16.5),
        ("training", "anneal_lr", 0),
        ("checkpoint", "dir", 5),
        ("agents", "mlmi", {"hidden_dims": "256"}),
    ]:
        with pytest.raises(ConfigError, match="expected"):
            config_from_dict({section: {key: value}})


def test_null_sections_and_partial_agents_take_defaults():
    assert config_from_dict({"training": None, "agents": {"mmd": None}}) == Config()
    cfg = config_from_dict({"agents": {"mmd": {"hidden_dims": [8, 8]}}})
    assert cfg.agents.mmd.kernel_sizes == (5, 7) and cfg.agents.mmd.hidden_dims == (8, 8)
    assert AgentConfig(hidden_dims=(8,), conv_channels=(4, 4), kernel_sizes=(3, 3))


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  actor_lr: 3e-4\n  adam_eps: 1E-8\n")
    t = load_config(p).training
    assert t.actor_lr == 3e-4 and t.adam_eps == 1e-8


def test_yaml_roundtrip(tmp_path):
    cfg = load_config(QUICK, ["training.critic_lr=1e-3", "env.data_path=x.csv"])
    out = tmp_path / "config.yaml"
    out.write_text(config_yaml(cfg))
    assert load_config(out) == cfg
    assert yaml.safe_load(out.read_text()) == config_to_dict(cfg)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert "input_dim" not in out.read_text()  # fixed sizes are not saved
    out.write_text(config_yaml(Config()))
    assert load_config(out) == Config()


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
    ("agents.nwrqk.hidden_dims=[32, 0, 8]", "agents.nwrqk.hidden_dims", "at least 1"),
    ("agents.mlmi.hidden_dims=[32, 16, 1]", "agents.mlmi.hidden_dims", "2 or more"),
    ("agents.mlmi.hidden_dims=[]", "agents.mlmi.hidden_dims", "at least one value"),
    ("agents.mlmi.hidden_dims=[30, 16, 8]", "agents.mlmi.hidden_dims", "divisible"),
    ("agents.mmd.input_dim=3", "agents.mmd.input_dim", "derived from the agent's features"),
    ("agents.mlmi.action_dim=5", "agents.mlmi.action_dim", "derived from the market's 3 actions"),
    ("agents.nwrqk.sequence_length=40", "agents.nwrqk.sequence_length", "from env.window"),
    ("agents.mmd.dropout_rate=1.0", "agents.mmd.dropout_rate", "[0, 1)"),
    ("critic.state_dim=12", "critic.state_dim", "derived from all agents' features"),
    ("critic.hidden_dims=[64, 32, 18]", "critic.hidden_dims", "multiple of 4"),
    ("env.test_frac=0.3", "env.test_frac", "at most 1"),
    ("env.train_frac=0", "env.train_frac", "(0, 1)"),
    ("env.norm_clip=0", "env.norm_clip", "> 0"),
    ("env.cost_bps=-1", "env.cost_bps", ">= 0"),
    ("checkpoint.max_to_keep=0", "checkpoint.max_to_keep", "at least 1"),
    ("checkpoint.save_every=0", "checkpoint.save_every", "at least 1"),
    ("checkpoint.dir=''", "checkpoint.dir", "blank"),
    ("critic.n_agents=3", "critic.n_agents", "derived from the agents"),
    ("training.max_grad_norm=.inf", "training.max_grad_norm", "finite"),
    ("env.synthetic_n_bars=100", "env.synthetic_n_bars", "more bars"),
    ("env.data_path=5", "env.data_path", "a string or null"),
    ("seed=-1", "seed", "at least 0"),
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
    assert f"(override {override!r})" in msg or "unknown key" in msg


def test_bound_and_type_errors_give_the_bound_and_the_default():
    with pytest.raises(ConfigError) as ei:
        load_config(QUICK, ["training.gamma=1.5"])
    assert str(ei.value) == (
        f"{QUICK} (override 'training.gamma=1.5'): training.gamma: must be in [0, 1], got 1.5; "
        "use e.g. the default 0.99"
    )
    with pytest.raises(ConfigError) as ei:
        load_config(QUICK, ["training.num_envs=many"])
    assert str(ei.value).endswith(
        "training.num_envs: expected an integer, got 'many'; fix the value (default: 16)"
    )


def test_unknown_override_keys_list_the_valid_ones():
    with pytest.raises(ConfigError) as ei:
        load_config(QUICK, ["training.nope=1"])
    msg = str(ei.value)
    assert "(override 'training.nope=1'): training.nope: unknown key" in msg
    assert "num_envs" in msg and "normalise_advantages" in msg
    with pytest.raises(ConfigError, match="agents.foo: unknown key; use one of: mlmi, nwrqk, mmd"):
        load_config(QUICK, ["agents.foo.input_dim=4"])
    with pytest.raises(ConfigError, match="training.gamma is a value, not a section"):
        load_config(QUICK, ["training.gamma.x=1"])


def test_parse_override():
    assert parse_override("training.actor_lr=5e-4") == ("training.actor_lr", 5e-4)
    assert parse_override(" seed = 3") == ("seed", 3)
    assert parse_override("env.data_path=") == ("env.data_path", None)
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_override("agents.mlmi.hidden_dims=[1,")


@pytest.mark.parametrize(
    "text,key,phrase",
    [
        ("training:\n  lr: 0.1\n", "training.lr", "unknown key"),
        ("trainig:\n  gamma: 0.9\n", "trainig", "unknown key"),
        ("training:\n  gamma: high\n", "training.gamma", "expected a number"),
        ("training: 5\n", "training", "mapping"),
        ("agents:\n  bogus: {}\n", "agents.bogus", "unknown key"),
        ("training:\n  use_huber_loss: yes please\n", "training.use_huber_loss", "true or false"),
        ("[1, 2]\n", "top level", "mapping"),
        ("agents:\n  mlmi:\n    kernel_sizes: [3]\n", "agents.mlmi.kernel_sizes", "at least 2"),
        ("training:\n  gamma: [0.9\n", "line", "not valid YAML"),
        ("agents:\n  mlmi:\n    action_dim: 5\n", "agents.mlmi.action_dim", "remove it"),
        ("critic:\n  n_agents: 3\n", "critic.n_agents", "derived from the agents"),
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


SCHEMA = ROOT / "configs" / "schema.json"


def test_committed_schema_is_current():
    assert SCHEMA.read_text() == schema_text(), (
        "configs/schema.json is stale: run `python -m marl_jax.config schema > configs/schema.json`"
    )
    schema = json.loads(SCHEMA.read_text())
    assert set(schema["properties"]) == set(Config.model_fields)
    assert schema["additionalProperties"] is False
    for path in (V1, QUICK):
        assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=./schema.json"


def test_schema_command(capsys):
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == schema_text()
    assert schema_text().endswith("}\n") and schema_text().startswith('{\n  "')


def test_import_is_cheap():
    code = "import sys, marl_jax.config; print([m for m in ('jax', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shipped_configs_load_by_name_from_any_directory(tmp_path, monkeypatch):
    from marl_jax.config import SHIPPED_CONFIGS, resolve_config, shipped_config_names

    assert shipped_config_names() == ["quickstart", "real_markets", "strategic_marl_v1"]
    assert (ROOT / "configs").resolve() == SHIPPED_CONFIGS  # the repository's configs/ link
    monkeypatch.chdir(tmp_path)
    for name in shipped_config_names():
        for spec in (name, f"{name}.yaml"):
            assert resolve_config(spec) == SHIPPED_CONFIGS / f"{name}.yaml"
        assert load_config(name) == load_config(SHIPPED_CONFIGS / f"{name}.yaml")
    # A file in the working directory wins over the shipped one of the same name.
    (tmp_path / "quickstart.yaml").write_text("seed: 7\n")
    assert load_config("quickstart.yaml").seed == 7
    assert load_config("quickstart").seed == 0
    # A path with a folder is a path; an unknown name says what there is.
    with pytest.raises(ConfigError, match="not found; check the --config path"):
        load_config("configs/quickstart.yaml")
    with pytest.raises(ConfigError, match="no shipped config has that name; give a path or one"):
        load_config("quikstart")
