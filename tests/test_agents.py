"""The agent table is the one description of the agents; everything else agrees with it."""

from __future__ import annotations

import pytest

from marl_jax.agents import (
    AGENT_NAMES,
    AGENTS,
    CRITIC_STATE_DIM,
    FEATURE_NAMES,
    MODEL_NAMES,
    feature_slice,
)
from marl_jax.config import Config
from marl_jax.env import features, market
from marl_jax.models.actors import ACTOR_CLASSES
from marl_jax.models.critic import CentralizedCritic
from marl_jax.models.registry import MODEL_CLASSES


def test_the_table_drives_the_environment():
    assert features.FEATURE_NAMES == FEATURE_NAMES and features.NUM_FEATURES == CRITIC_STATE_DIM
    assert market.AGENTS == AGENT_NAMES
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
        assert cls().input_dim == agent.input_dim
        assert getattr(cfg.agents, agent.name).input_dim == agent.input_dim
    assert CentralizedCritic().state_dim == cfg.critic.state_dim == CRITIC_STATE_DIM
    assert CentralizedCritic().n_agents == cfg.critic.n_agents == len(AGENTS)
    assert [name for name, _ in cfg.agents.items()] == list(AGENT_NAMES)


def test_the_pytorch_twins_agree_with_the_table():
    """``bridge.torch_reference`` transcribes the original source independently; it must agree."""
    pytest.importorskip("torch")
    from bridge import torch_reference

    assert torch_reference.AGENT_ORDER == AGENT_NAMES
    for agent in AGENTS:
        cls = torch_reference.AGENT_CLASSES[agent.name]
        assert cls.__name__ == agent.model and cls.attention_heads == agent.heads
        assert torch_reference.DEFAULT_CONFIGS[agent.name]["input_dim"] == agent.input_dim
    assert torch_reference.DEFAULT_CONFIGS["critic"]["state_dim"] == CRITIC_STATE_DIM
