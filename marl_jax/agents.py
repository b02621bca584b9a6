"""The three specialist agents, described once: everything else derives from :data:`AGENTS`.

Each row gives the agent's name, its Flax model class (in :mod:`marl_jax.models.actors`), the
environment features it reads (consecutive columns of the feature table, in order), and the
attention heads of its actor. The input dimension is the number of features. The critic sees
all agents' features concatenated in this order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AgentSpec:
    """One agent: name, model class name, input features and attention heads."""

    name: str
    model: str
    features: tuple[str, ...]
    heads: int

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
    ),
    AgentSpec(
        "mmd",
        "MMDActor",
        ("mmd_score", "volatility_30", "volume_profile_skew"),
        heads=4,
    ),
)

AGENT_NAMES: tuple[str, ...] = tuple(a.name for a in AGENTS)
AGENT_BY_NAME: dict[str, AgentSpec] = {a.name: a for a in AGENTS}
MODEL_NAMES: tuple[str, ...] = (*AGENT_NAMES, "critic")
FEATURE_NAMES: tuple[str, ...] = tuple(f for a in AGENTS for f in a.features)
CRITIC_STATE_DIM: int = len(FEATURE_NAMES)
CRITIC_ATTENTION_HEADS: int = 4


def feature_slice(name: str) -> tuple[int, int]:
    """``(start, stop)`` columns of agent ``name`` in the feature table."""
    start = 0
    for agent in AGENTS:
        if agent.name == name:
            return start, start + agent.input_dim
        start += agent.input_dim
    raise KeyError(f"unknown agent {name!r}; expected one of {', '.join(AGENT_NAMES)}")
