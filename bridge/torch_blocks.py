"""PyTorch building blocks of the Strategic MARL reference models, written from the model spec.

The layers the actors and the critic of ``bridge.torch_reference`` are made of: convolution
blocks, the positional encoding, the recurrent block, self-attention and the residual MLP
block, with the original's attribute names (so their state-dict keys are the original's).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EPS",
    "ConvBlock",
    "MultiHeadAttention",
    "PositionalEncoding",
    "ResidualBlock",
    "TemporalBlock",
    "make_activation",
]

EPS = 1e-5


def make_activation(name: str) -> nn.Module:
    """Return the activation module for ``name`` (``gelu`` exact, ``swish``/``silu``, ``relu``)."""
    name = name.lower()
    if name == "gelu":
        return nn.GELU(approximate="none")
    if name in ("swish", "silu"):
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}")


class ConvBlock(nn.Module):
    """Conv1d(in, out, k, padding k//2) -> norm -> activation, on ``(B, C, L)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        activation: str = "gelu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.norm_type = norm
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride=1, padding=kernel_size // 2, bias=True
        )
        if norm == "batch":
            self.norm = nn.BatchNorm1d(out_channels, eps=EPS, momentum=0.1)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_channels, eps=EPS)
        elif norm == "instance":
            self.norm = nn.InstanceNorm1d(out_channels, eps=EPS)
        else:
            raise ValueError(f"unknown norm {norm!r}")
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_type == "layer":
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        else:
            x = self.norm(x)
        return self.activation(x)


class PositionalEncoding(nn.Module):
    """Sinusoidal positional encoding with a persistent ``pe`` buffer of shape (1, max_len, D)."""

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        pe = torch.zeros(max_len, d_model, dtype=torch.float32)
        position = torch.arange(0, max_len, dtype=torch.float32).unsqueeze(1)
        div_term = torch.exp(
            torch.arange(0, d_model, 2, dtype=torch.float32) * (-(math.log(10000.0) / d_model))
        )
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term[: d_model // 2])
        self.register_buffer("pe", pe.unsqueeze(0), persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pe[:, : x.size(1)]
        return self.dropout(x)


class TemporalBlock(nn.Module):
    """Batch-first LSTM/GRU, zero initial state; ``output_proj`` is 2H -> H when bidirectional."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        num_layers: int = 2,
        rnn_type: str = "lstm",
        dropout: float = 0.1,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}[rnn_type.lower()]
        self.rnn = rnn_cls(
            input_dim,
            hidden_dim,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        if bidirectional:
            self.output_proj: nn.Module = nn.Linear(2 * hidden_dim, hidden_dim)
        else:
            self.output_proj = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.output_proj(out)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product self-attention with separate q/k/v/out projections.

    Returns ``(output (B, L, D), weights averaged over heads (B, L, L))``.
    """

    def __init__(self, d_model: int, n_heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_k = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.scale = self.d_k**-0.5

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = query if key is None else key
        value = key if value is None else value
        b, lq, _ = query.shape
        lk = key.shape[1]
        q = self.q_proj(query).view(b, lq, self.n_heads, self.d_k).transpose(1, 2)
        k = self.k_proj(key).view(b, lk, self.n_heads, self.d_k).transpose(1, 2)
        v = self.v_proj(value).view(b, lk, self.n_heads, self.d_k).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        weights = F.softmax(scores, dim=-1)
        weights = self.dropout(weights)
        attended = torch.matmul(weights, v)
        attended = attended.transpose(1, 2).contiguous().view(b, lq, self.d_model)
        return self.out_proj(attended), weights.mean(dim=1)


class ResidualBlock(nn.Module):
    """fc1 -> norm1 -> act -> dropout -> fc2 -> dropout; output norm2(h + residual)."""

    def __init__(
        self, in_dim: int, hidden_dim: int, dropout: float = 0.1, activation: str = "gelu"
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim, eps=EPS)
        self.norm2 = nn.LayerNorm(hidden_dim, eps=EPS)
        self.dropout = nn.Dropout(dropout)
        self.activation = make_activation(activation)
        self.proj: nn.Module | None = (
            nn.Linear(in_dim, hidden_dim) if in_dim != hidden_dim else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.proj is None else self.proj(x)
        h = self.fc1(x)
        h = self.norm1(h)
        h = self.activation(h)
        h = self.dropout(h)
        h = self.fc2(h)
        h = self.dropout(h)
        return self.norm2(h + residual)
