"""The three specialist agents, described once: everything else derives from :data:`AGENTS`.

Each row gives the agent's name, its Flax model class (in :mod:`marl_jax.models.actors`), the
environment features it reads (consecutive columns of the feature table, in order), the
attention heads of its actor and its default layer sizes. The input dimension is the number
of features. The critic sees all agents' features concatenated in this order. Every agent
chooses one of :data:`NUM_ACTIONS` actions. :func:`fixed_sizes` gives the model sizes that the
table and the environment fix (a config cannot set them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AgentSpec:
    """One agent: name, model class name, input features, attention heads, default sizes."""

    name: str
    model: str
    features: tuple[str, ...]
    heads: int
    hidden_dims: tuple[int, ...]
    conv_channels: tuple[int, ...]
    kernel_sizes: tuple[int, ...]

    @property
    def input_dim(self) -> int:
        """Channels of the agent's observation: one per feature."""
        return len(self.features)


AGENTS: tuple[AgentSpec, ...] = (
    AgentSpec(
        "mlmi",
        "MLMIActor",
        ("mlmi_value", "mlmi_signal", "momentum_20", "momentum_50"),
        heads=8,
        hidden_dims=(256, 128, 64),
        conv_channels=(32, 64, 128),
        kernel_sizes=(3, 5),
    ),
    AgentSpec(
        "nwrqk",
        "NWRQKActor",
        (
            "nwrqk_pred",
            "lvn_strength",
            "fvg_size",
            "price_distance",
            "volume_imbalance",
            "level_touches",
        ),
        heads=8,
        hidden_dims=(256, 128, 64),
        conv_channels=(32, 64, 128),
        kernel_sizes=(7, 9),
    ),
    AgentSpec(
        "mmd",
        "MMDActor",
        ("mmd_score", "volatility_30", "volume_profile_skew"),
        heads=4,
        hidden_dims=(128, 64, 32),
        conv_channels=(16, 32, 64),
        kernel_sizes=(5, 7),
    ),
)

AGENT_NAMES: tuple[str, ...] = tuple(a.name for a in AGENTS)
AGENT_BY_NAME: dict[str, AgentSpec] = {a.name: a for a in AGENTS}
MODEL_NAMES: tuple[str, ...] = (*AGENT_NAMES, "critic")

AUX = "aux"
"""The key of the auxiliary return heads among the trained parameters and optimizer states:
``{agent: {'kernel', 'bias'}}``, present only when ``training.aux_return_coef`` > 0. They train
with the actors and are never among the models a run saves or exports."""

FEATURE_NAMES: tuple[str, ...] = tuple(f for a in AGENTS for f in a.features)
CRITIC_STATE_DIM: int = len(FEATURE_NAMES)
CRITIC_ATTENTION_HEADS: int = 4
CRITIC_HIDDEN_DIMS: tuple[int, ...] = (512, 256, 128)
NUM_ACTIONS: int = 3
"""Actions of every agent: 0 bearish, 1 neutral, 2 bullish (the market's position is the
agents' mean of ``action - 1``)."""


POSITION_INPUTS: int = 1
"""Inputs that ``env.observe_position`` adds to every actor (one channel) and to the critic
(one feature): the position held."""

FIXED_BY: dict[str, str] = {
    "input_dim": "the agent's features in marl_jax/agents.py (one more with env.observe_position)",
    "action_dim": f"the market's {NUM_ACTIONS} actions",
    "sequence_length": "env.window",
    "state_dim": "all agents' features in marl_jax/agents.py (one more with env.observe_position)",
    "n_agents": "the agents in marl_jax/agents.py",
}
"""What fixes each of the :func:`fixed_sizes` arguments, for messages."""


def fixed_sizes(name: str, window: int, observe_position: bool = False) -> dict[str, int]:
    """Constructor arguments of model ``name`` that the table and the environment fix: an
    actor's ``input_dim`` (its features, plus :data:`POSITION_INPUTS` when it observes its
    position), ``action_dim`` (:data:`NUM_ACTIONS`) and ``sequence_length`` (the ``window`` of
    bars it sees); the critic's ``state_dim`` (all features, plus the position) and
    ``n_agents``."""
    extra = POSITION_INPUTS if observe_position else 0
    if name == "critic":
        return {"state_dim": CRITIC_STATE_DIM + extra, "n_agents": len(AGENTS)}
    return {
        "input_dim": AGENT_BY_NAME[name].input_dim + extra,
        "action_dim": NUM_ACTIONS,
        "sequence_length": window,
    }


def feature_slice(name: str) -> tuple[int, int]:
    """``(start, stop)`` columns of agent ``name`` in the feature table."""
    start = 0
    for agent in AGENTS:
        if agent.name == name:
            return start, start + agent.input_dim
        start += agent.input_dim
    raise KeyError(f"unknown agent {name!r}; expected one of {', '.join(AGENT_NAMES)}")
