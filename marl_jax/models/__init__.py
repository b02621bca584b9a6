"""Flax modules that reproduce the original Strategic MARL PyTorch models."""

from marl_jax.models.actors import (
    ACTOR_CLASSES,
    MLMIActor,
    MMDActor,
    NWRQKActor,
    StrategicActor,
)
from marl_jax.models.components import (
    BatchNorm1d,
    Conv1d,
    ConvBlock,
    LayerNorm,
    Linear,
    MultiHeadAttention,
    PositionalEncoding,
    ResidualBlock,
    TemporalBlock,
    TorchRNN,
)
from marl_jax.models.critic import CentralizedCritic

__all__ = [
    "ACTOR_CLASSES",
    "BatchNorm1d",
    "CentralizedCritic",
    "Conv1d",
    "ConvBlock",
    "LayerNorm",
    "Linear",
    "MLMIActor",
    "MMDActor",
    "MultiHeadAttention",
    "NWRQKActor",
    "PositionalEncoding",
    "ResidualBlock",
    "StrategicActor",
    "TemporalBlock",
    "TorchRNN",
]
