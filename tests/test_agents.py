"""The agent table is the one description of the agents; everything else agrees with it."""

from __future__ import annotations

import pytest

from marl_jax.agents import (
    AGENT_NAMES,
    AGENTS,
    CRITIC_HIDDEN_DIMS,
    CRITIC_STATE_DIM,
    FEATURE_NAMES,
    MODEL_NAMES,
    NUM_ACTIONS,
    feature_slice,
)
from marl_jax.config import Config, config_from_dict
from marl_jax.env import features
from marl_jax.models.actors import ACTOR_CLASSES
from marl_jax.models.critic import CentralizedCritic
from marl_jax.models.registry import MODEL_CLASSES, configurable_kwargs, module_config
from marl_jax.models.team import build_modules


def test_the_table_drives_the_environment():
    assert features.FEATURE_NAMES == FEATURE_NAMES and features.NUM_FEATURES == CRITIC_STATE_DIM
    for agent in AGENTS:
        start, stop = features.AGENT_FEATURES[agent.name]
        assert FEATURE_NAMES[start:stop] == agent.features
        assert feature_slice(agent.name) == (start, stop)
    with pytest.raises(KeyError, match="unknown agent"):
        feature_slice("nope")


def test_the_table_drives_the_models_and_the_config():
    cfg = Config()
    assert MODEL_NAMES == (*AGENT_NAMES, "critic") and tuple(MODEL_CLASSES) == MODEL_NAMES
    for agent in AGENTS:
        cls = ACTOR_CLASSES[agent.name]
        assert cls.__name__ == agent.model
        assert cls.attention_heads == agent.heads
        actor = cls()
        assert (actor.input_dim, actor.action_dim) == (agent.input_dim, NUM_ACTIONS)
        sizes = (actor.hidden_dims, actor.conv_channels, actor.kernel_sizes)
        assert sizes == (agent.hidden_dims, agent.conv_channels, agent.kernel_sizes)
        section = getattr(cfg.agents, agent.name)
        assert (section.hidden_dims, section.kernel_sizes) == (
            agent.hidden_dims,
            agent.kernel_sizes,
        )
    assert CentralizedCritic().state_dim == CRITIC_STATE_DIM
    assert CentralizedCritic().n_agents == len(AGENTS)
    assert CentralizedCritic().hidden_dims == cfg.critic.hidden_dims == CRITIC_HIDDEN_DIMS
    assert [name for name, _ in cfg.agents.items()] == list(AGENT_NAMES)


@pytest.mark.parametrize("window", [48, 16])
def test_the_built_models_take_the_fixed_sizes_from_the_table_and_the_window(window):
    modules = build_modules(config_from_dict({"env": {"window": window}}))
    for agent in AGENTS:
        actor = modules[agent.name]
        assert (actor.input_dim, actor.action_dim) == (agent.input_dim, NUM_ACTIONS)
        assert actor.sequence_length == window  # the models see the env's window
    assert (modules["critic"].state_dim, modules["critic"].n_agents) == (CRITIC_STATE_DIM, 3)


def test_a_checkpoints_model_configs_become_config_sections():
    other = module_config(ACTOR_CLASSES["mmd"](hidden_dims=(8, 8), sequence_length=7))
    section = configurable_kwargs("mmd", other)
    assert section["hidden_dims"] == [8, 8] and "sequence_length" not in section
    assert set(section) == set(Config().agents.mmd.to_kwargs())
    critic = configurable_kwargs("critic", module_config(CentralizedCritic(hidden_dims=(16,))))
    assert critic == {"hidden_dims": [16], "dropout_rate": 0.1, "use_layer_norm": True}
    with pytest.raises(ValueError, match="model mlmi has action_dim=5, but the market's 3"):
        configurable_kwargs("mlmi", module_config(ACTOR_CLASSES["mlmi"](action_dim=5)))
    with pytest.raises(ValueError, match="model critic has n_agents=2"):
        configurable_kwargs("critic", module_config(CentralizedCritic(n_agents=2)))


def test_the_pytorch_twins_agree_with_the_table():
    """``bridge.torch_reference`` transcribes the original source independently; it must agree."""
    pytest.importorskip("torch")
    from bridge import torch_reference

    assert torch_reference.AGENT_NAMES == AGENT_NAMES
    for agent in AGENTS:
        cls = torch_reference.AGENT_CLASSES[agent.name]
        assert cls.__name__ == agent.model and cls.attention_heads == agent.heads
        assert torch_reference.DEFAULT_CONFIGS[agent.name]["input_dim"] == agent.input_dim
    assert torch_reference.DEFAULT_CONFIGS["critic"]["state_dim"] == CRITIC_STATE_DIM
