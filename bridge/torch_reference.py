"""PyTorch reference modules of the Strategic MARL models, written from the model spec.

These modules follow ``shared/spec/model-spec.md``: their ``state_dict()`` layout (keys, order,
shapes, dtypes) matches ``shared/spec/state_dict_layout.txt`` at the default configurations, so
that checkpoints written by the original PyTorch system load into them with ``strict=True`` and
reproduce the original outputs. They serve as the ground truth the Flax modules are checked
against and as the target of the JAX -> PyTorch checkpoint conversion. Their layers live in
``bridge.torch_blocks`` and are importable from here too.

Project rule (differs from a quirk of the original): ``MMDActor`` computes ``action``,
``log_prob`` and ``entropy`` from the volatility-adjusted distribution it returns.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical

from bridge.torch_blocks import (
    EPS,
    ConvBlock,
    MultiHeadAttention,
    PositionalEncoding,
    ResidualBlock,
    TemporalBlock,
    make_activation,
)

__all__ = [
    "AGENT_CLASSES",
    "AGENT_NAMES",
    "DEFAULT_CONFIGS",
    "CentralizedCritic",
    "ConvBlock",
    "MLMIActor",
    "MMDActor",
    "MultiHeadAttention",
    "NWRQKActor",
    "PositionalEncoding",
    "ResidualBlock",
    "TemporalBlock",
    "build_reference_models",
    "make_activation",
]

TEMPERATURE_FLOOR = 0.1

# --------------------------------------------------------------------------------------------
# Actors
# --------------------------------------------------------------------------------------------


class _BaseActor(nn.Module):
    """Shared structure of the three actors; subclasses supply the per-agent pieces."""

    # Per-subclass architecture choices.
    conv_activation: str = "gelu"
    conv_norm: str = "batch"
    rnn_type: str = "lstm"
    rnn_layers: int = 2
    bidirectional: bool = False
    attention_heads: int = 8
    head_activation: str = "relu"

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        action_dim: int = 3,
        dropout_rate: float = 0.1,
        temperature_init: float = 1.0,
        conv_channels: Sequence[int] = (32, 64, 128),
        kernel_sizes: Sequence[int] = (3, 5),
        sequence_length: int = 48,
    ) -> None:
        super().__init__()
        self.input_dim = int(input_dim)
        self.hidden_dims = [int(h) for h in hidden_dims]
        self.action_dim = int(action_dim)
        self.dropout_rate = float(dropout_rate)
        self.conv_channels = [int(c) for c in conv_channels]
        self.kernel_sizes = [int(k) for k in kernel_sizes]
        self.sequence_length = int(sequence_length)

        self.temperature = nn.Parameter(torch.tensor(float(temperature_init), dtype=torch.float32))
        self._init_extra_parameters()

        h0 = self.hidden_dims[0]
        self.conv_layers = nn.ModuleList(self._build_conv_blocks())
        self.feature_proj = nn.Linear(self._conv_out_channels(), h0)
        self.temporal = TemporalBlock(
            h0,
            h0,
            num_layers=self.rnn_layers,
            rnn_type=self.rnn_type,
            dropout=self.dropout_rate,
            bidirectional=self.bidirectional,
        )
        self.attention = MultiHeadAttention(h0, self.attention_heads, self.dropout_rate)
        self.pos_encoding = PositionalEncoding(h0, max_len=5000, dropout=self.dropout_rate)
        self.output_layers = nn.ModuleList(
            self._build_output_layer(self.hidden_dims[i], self.hidden_dims[i + 1])
            for i in range(len(self.hidden_dims) - 1)
        )
        self.output_head = self._build_output_head()
        self.value_head = self._build_value_head()

    # --- hooks -------------------------------------------------------------------------------

    def _init_extra_parameters(self) -> None:
        """Register extra parameters (before submodules, so they lead the state dict)."""

    def _build_conv_blocks(self) -> list[nn.Module]:
        ch, ks = self.conv_channels, self.kernel_sizes
        return [
            ConvBlock(self.input_dim, ch[0], ks[0], self.conv_activation, self.conv_norm),
            ConvBlock(ch[0], ch[1], ks[1], self.conv_activation, self.conv_norm),
        ]

    def _conv_out_channels(self) -> int:
        return self.conv_channels[1]

    def _build_output_layer(self, in_dim: int, out_dim: int) -> nn.Module:
        raise NotImplementedError

    def _build_output_head(self) -> nn.Sequential:
        raise NotImplementedError

    def _build_value_head(self) -> nn.Sequential:
        h = self.hidden_dims[-1]
        return nn.Sequential(
            nn.Linear(h, h // 2),
            make_activation(self.head_activation),
            nn.Dropout(self.dropout_rate),
            nn.Linear(h // 2, 1),
        )

    def _adjust_logits(self, logits: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Post-process the logits (identity except for MMD)."""
        return logits

    # --- forward -----------------------------------------------------------------------------

    def prepare_input(self, state: torch.Tensor) -> torch.Tensor:
        """Apply the 2-D input rule and the L == 1 broadcast; returns ``(B, C, L)``."""
        if state.dim() == 2:
            state = state.unsqueeze(-1)
        if state.dim() != 3:
            raise ValueError(f"expected a 2-D or 3-D state, got shape {tuple(state.shape)}")
        if state.size(-1) == 1:
            state = state.expand(-1, -1, self.sequence_length)
        return state

    def action_distribution_params(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything up to the action distribution: logits, probs, value, attention weights."""
        x = self.prepare_input(state)
        for block in self.conv_layers:
            x = block(x)
        x = x.transpose(1, 2)  # (B, L, C')
        x = self.feature_proj(x)
        x = self.pos_encoding(x)
        x = self.temporal(x)  # (B, L, H0)
        attended, attention_weights = self.attention(x)
        features = attended[:, -1, :]
        for layer in self.output_layers:
            features = layer(features)
        logits = self.output_head(features)
        value = self.value_head(features).squeeze(-1)
        logits = self._adjust_logits(logits, state)
        temperature = torch.clamp(self.temperature, min=TEMPERATURE_FLOOR)
        action_probs = F.softmax(logits / temperature, dim=-1)
        return {
            "logits": logits,
            "action_probs": action_probs,
            "value": value,
            "attention_weights": attention_weights,
        }

    def forward(self, state: torch.Tensor, deterministic: bool = False) -> dict[str, torch.Tensor]:
        out = self.action_distribution_params(state)
        action_probs = out["action_probs"]
        dist = Categorical(probs=action_probs)
        if deterministic:
            action = torch.argmax(action_probs, dim=-1)
        else:
            action = dist.sample()
        return {
            "action": action,
            "action_probs": action_probs,
            "log_prob": dist.log_prob(action),
            "entropy": dist.entropy(),
            "logits": out["logits"],
            "attention_weights": out["attention_weights"],
            "value": out["value"],
        }

    def evaluate_actions(
        self, state: torch.Tensor, actions: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Log-probabilities and entropy of given ``actions`` under the current policy."""
        out = self.action_distribution_params(state)
        dist = Categorical(probs=out["action_probs"])
        return {
            "log_prob": dist.log_prob(actions),
            "entropy": dist.entropy(),
            "value": out["value"],
            "action_probs": out["action_probs"],
        }


class MLMIActor(_BaseActor):
    """MLMI agent: gelu/BatchNorm convs, 2-layer LSTM, 8 heads, gelu residual output layers."""

    conv_activation = "gelu"
    conv_norm = "batch"
    rnn_type = "lstm"
    rnn_layers = 2
    bidirectional = False
    attention_heads = 8
    head_activation = "relu"

    def __init__(
        self,
        input_dim: int = 4,
        hidden_dims: Sequence[int] = (256, 128, 64),
        action_dim: int = 3,
        dropout_rate: float = 0.1,
        temperature_init: float = 1.0,
        conv_channels: Sequence[int] = (32, 64, 128),
        kernel_sizes: Sequence[int] = (3, 5),
        sequence_length: int = 48,
    ) -> None:
        super().__init__(
            input_dim,
            hidden_dims,
            action_dim,
            dropout_rate,
            temperature_init,
            conv_channels,
            kernel_sizes,
            sequence_length,
        )

    def _build_output_layer(self, in_dim: int, out_dim: int) -> nn.Module:
        return ResidualBlock(in_dim, out_dim, self.dropout_rate, "gelu")

    def _build_output_head(self) -> nn.Sequential:
        h = self.hidden_dims[-1]
        return nn.Sequential(
            nn.Linear(h, h // 2),
            nn.ReLU(),
            nn.Dropout(self.dropout_rate),
            nn.Linear(h // 2, self.action_dim),
        )


class NWRQKActor(_BaseActor):
    """NWRQK agent: three swish/LayerNorm convs, 3-layer bidirectional LSTM, swish heads."""

    conv_activation = "swish"
    conv_norm = "layer"
    rnn_type = "lstm"
    rnn_layers = 3
    bidirectional = True
    attention_heads = 8
    head_activation = "swish"

    def __init__(
        self,
        input_dim: int = 6,
        hidden_dims: Sequence[int] = (256, 128, 64),
        action_dim: int = 3,
        dropout_rate: float = 0.1,
        temperature_init: float = 1.0,
        conv_channels: Sequence[int] = (32, 64, 128),
        kernel_sizes: Sequence[int] = (7, 9),
        sequence_length: int = 48,
    ) -> None:
        super().__init__(
            input_dim,
            hidden_dims,
            action_dim,
            dropout_rate,
            temperature_init,
            conv_channels,
            kernel_sizes,
            sequence_length,
        )

    def _build_conv_blocks(self) -> list[nn.Module]:
        blocks = super()._build_conv_blocks()
        ch = self.conv_channels
        blocks.append(ConvBlock(ch[1], ch[-1], 5, self.conv_activation, self.conv_norm))
        return blocks

    def _conv_out_channels(self) -> int:
        return self.conv_channels[-1]

    def _build_output_layer(self, in_dim: int, out_dim: int) -> nn.Module:
        return ResidualBlock(in_dim, out_dim, self.dropout_rate, "swish")

    def _build_output_head(self) -> nn.Sequential:
        h = self.hidden_dims[-1]
        return nn.Sequential(
            nn.Linear(h, h),
            nn.SiLU(),
            nn.Dropout(self.dropout_rate),
            nn.Linear(h, self.action_dim),
        )


class MMDActor(_BaseActor):
    """MMD agent: relu/InstanceNorm convs, 2-layer GRU, 4 heads, volatility-adjusted logits."""

    conv_activation = "relu"
    conv_norm = "instance"
    rnn_type = "gru"
    rnn_layers = 2
    bidirectional = False
    attention_heads = 4
    head_activation = "relu"

    def __init__(
        self,
        input_dim: int = 3,
        hidden_dims: Sequence[int] = (128, 64, 32),
        action_dim: int = 3,
        dropout_rate: float = 0.1,
        temperature_init: float = 1.0,
        conv_channels: Sequence[int] = (16, 32, 64),
        kernel_sizes: Sequence[int] = (5, 7),
        sequence_length: int = 48,
    ) -> None:
        super().__init__(
            input_dim,
            hidden_dims,
            action_dim,
            dropout_rate,
            temperature_init,
            conv_channels,
            kernel_sizes,
            sequence_length,
        )

    def _init_extra_parameters(self) -> None:
        self.volatility_adjust = nn.Parameter(torch.ones(1, dtype=torch.float32))

    def _build_output_layer(self, in_dim: int, out_dim: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim, eps=EPS),
            nn.ReLU(),
            nn.Dropout(self.dropout_rate),
        )

    def _build_output_head(self) -> nn.Sequential:
        h = self.hidden_dims[-1]
        return nn.Sequential(
            nn.Linear(h, h),
            nn.ReLU(),
            nn.Dropout(self.dropout_rate),
            nn.Linear(h, self.action_dim),
        )

    def _adjust_logits(self, logits: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        # Feature 1 is volatility_30; a 2-D state has no sequence axis to average over.
        volatility = state[:, 1] if state.dim() == 2 else state[:, 1, :].mean(dim=-1)
        factor = torch.clamp(1.0 / (volatility + 1e-6), 0.5, 2.0)
        return logits * factor.unsqueeze(-1) * self.volatility_adjust


# --------------------------------------------------------------------------------------------
# Critic
# --------------------------------------------------------------------------------------------


class CentralizedCritic(nn.Module):
    """Centralised value function over the concatenated, sequence-averaged agent states."""

    def __init__(
        self,
        state_dim: int,
        n_agents: int = 3,
        hidden_dims: Sequence[int] | None = None,
        dropout_rate: float = 0.1,
        use_layer_norm: bool = True,
    ) -> None:
        super().__init__()
        hidden_dims = [512, 256, 128] if hidden_dims is None else [int(h) for h in hidden_dims]
        self.state_dim = int(state_dim)
        self.n_agents = int(n_agents)
        self.hidden_dims = hidden_dims
        self.dropout_rate = float(dropout_rate)
        self.use_layer_norm = bool(use_layer_norm)

        h = hidden_dims
        layers: list[nn.Module] = [nn.Linear(self.state_dim, h[0])]
        if self.use_layer_norm:
            layers.append(nn.LayerNorm(h[0], eps=EPS))
        layers += [nn.ReLU(), nn.Dropout(self.dropout_rate)]
        for i in range(1, len(h)):
            layers.append(ResidualBlock(h[i - 1], h[i], self.dropout_rate, "relu"))
        self.feature_extractor = nn.Sequential(*layers)

        # Present in every checkpoint, never used by forward().
        self.agent_attention = nn.MultiheadAttention(h[-1], 4, batch_first=True)

        self.value_head = nn.Sequential(
            nn.Linear(h[-1], h[-1] // 2),
            nn.LayerNorm(h[-1] // 2, eps=EPS) if self.use_layer_norm else nn.Identity(),
            nn.ReLU(),
            nn.Dropout(self.dropout_rate),
            nn.Linear(h[-1] // 2, 1),
        )
        self.agent_value_heads = nn.ModuleList(nn.Linear(h[-1], 1) for _ in range(self.n_agents))

    def forward(
        self,
        states: torch.Tensor,
        agent_states: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        features = self.feature_extractor(states)
        value = self.value_head(features).squeeze(-1)
        agent_values: dict[str, torch.Tensor] = {}
        if agent_states is not None:
            for i, name in enumerate(list(agent_states.keys())[: self.n_agents]):
                agent_values[name] = self.agent_value_heads[i](features).squeeze(-1)
        return {"value": value, "agent_values": agent_values}


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

AGENT_NAMES: tuple[str, ...] = ("mlmi", "nwrqk", "mmd")

AGENT_CLASSES: dict[str, type[_BaseActor]] = {
    "mlmi": MLMIActor,
    "nwrqk": NWRQKActor,
    "mmd": MMDActor,
}

DEFAULT_CONFIGS: dict[str, dict[str, Any]] = {
    "mlmi": {
        "input_dim": 4,
        "hidden_dims": [256, 128, 64],
        "action_dim": 3,
        "dropout_rate": 0.1,
        "temperature_init": 1.0,
        "conv_channels": [32, 64, 128],
        "kernel_sizes": [3, 5],
        "sequence_length": 48,
    },
    "nwrqk": {
        "input_dim": 6,
        "hidden_dims": [256, 128, 64],
        "action_dim": 3,
        "dropout_rate": 0.1,
        "temperature_init": 1.0,
        "conv_channels": [32, 64, 128],
        "kernel_sizes": [7, 9],
        "sequence_length": 48,
    },
    "mmd": {
        "input_dim": 3,
        "hidden_dims": [128, 64, 32],
        "action_dim": 3,
        "dropout_rate": 0.1,
        "temperature_init": 1.0,
        "conv_channels": [16, 32, 64],
        "kernel_sizes": [5, 7],
        "sequence_length": 48,
    },
    "critic": {
        "state_dim": 13,
        "n_agents": 3,
        "hidden_dims": [512, 256, 128],
        "dropout_rate": 0.1,
        "use_layer_norm": True,
    },
}


def build_reference_models(configs: dict[str, Any] | None = None) -> dict[str, nn.Module]:
    """Build the three actors and the critic (key ``"critic"``).

    ``configs`` maps a model name (``mlmi``, ``nwrqk``, ``mmd``, ``critic``) to constructor
    keyword arguments that override the defaults in ``DEFAULT_CONFIGS``. When the critic's
    ``state_dim`` is not given, it is the sum of the actors' ``input_dim``.
    """
    configs = dict(configs or {})
    unknown = set(configs) - set(DEFAULT_CONFIGS)
    if unknown:
        raise ValueError(f"unknown model names in configs: {sorted(unknown)}")
    models: dict[str, nn.Module] = {}
    for name in AGENT_NAMES:
        kwargs = copy.deepcopy(DEFAULT_CONFIGS[name])
        kwargs.update(configs.get(name) or {})
        models[name] = AGENT_CLASSES[name](**kwargs)
    critic_kwargs = copy.deepcopy(DEFAULT_CONFIGS["critic"])
    critic_overrides = dict(configs.get("critic") or {})
    if "state_dim" not in critic_overrides:
        critic_kwargs["state_dim"] = sum(models[n].input_dim for n in AGENT_NAMES)
    critic_kwargs.update(critic_overrides)
    models["critic"] = CentralizedCritic(**critic_kwargs)
    return models
