"""PNG plots of runs and sweeps: learning curves, equity curves and a sweep's members' curves,
written atomically."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from marl_jax.agents import AGENT_NAMES
from marl_jax.files import atomic_write_bytes

__all__ = [
    "plot_equity_curves",
    "plot_learning_curve",
    "plot_sweep_curves",
    "save_png",
    "smoothed_reward",
]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _smoothing_width(n: int) -> int:
    return max(1, n // 10)


def smoothed_reward(rows: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
    """Updates and the moving average (over a tenth of the rows) of the reward, in bp."""
    updates = np.array([r["update"] for r in rows])
    reward = np.array([r["average_reward"] for r in rows]) * 1e4
    width = _smoothing_width(len(rows))
    return updates[width - 1 :], np.convolve(reward, np.ones(width) / width, mode="valid")


def save_png(fig, path: str | os.PathLike) -> Path:
    """Saves a matplotlib figure as a PNG that appears complete or not at all."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def plot_equity_curves(
    curves: Mapping[str, np.ndarray], path: str | os.PathLike, title: str | None = None
) -> Path:
    """PNG of equity curves (the policy drawn thicker than the baselines)."""
    fig = _figure(9, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        curve = np.asarray(curve, dtype=np.float64)
        ax.plot(np.arange(len(curve)), curve, label=name, lw=2.0 if name == "policy" else 1.0)
    ax.set_xlabel("bar")
    ax.set_ylabel("equity")
    ax.set_title(title or "equity curves")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return save_png(fig, path)


def plot_learning_curve(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """PNG of the average reward per update (and its moving average) and the entropies."""
    updates = np.array([r["update"] for r in rows])
    reward = np.array([r["average_reward"] for r in rows]) * 1e4
    fig = _figure(10, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.plot(updates, reward, lw=0.8, alpha=0.5, label="per update")
    if rows:
        label = f"moving average ({_smoothing_width(len(rows))})"
        ax1.plot(*smoothed_reward(rows), lw=2, label=label)
    ax1.set_xlabel("update")
    ax1.set_ylabel("average reward per step (bp)")
    ax1.set_title("training reward")
    ax1.grid(alpha=0.3)
    ax1.legend(loc="best")
    for name in AGENT_NAMES:
        ax2.plot(updates, [r[f"{name}/entropy"] for r in rows], label=name)
    ax2.set_xlabel("update")
    ax2.set_ylabel("policy entropy (nats)")
    ax2.set_title("entropy")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="best")
    fig.tight_layout()
    return save_png(fig, path)


def plot_sweep_curves(
    history: Mapping[int, Sequence[Mapping]], best: int | None, path: str | os.PathLike
) -> Path:
    """PNG of every member's smoothed reward (``history``: member -> metrics rows), the
    ``best`` member highlighted."""
    fig = _figure(10, 5)
    ax = fig.add_subplot(1, 1, 1)
    for member, rows in sorted(history.items()):
        if rows and member != best:
            ax.plot(*smoothed_reward(rows), lw=0.8, alpha=0.4, color="tab:gray")
    if best is not None and history.get(best):
        ax.plot(
            *smoothed_reward(history[best]), lw=2.5, color="tab:red", label=f"best: member {best}"
        )
        ax.legend(loc="best")
    ax.set_xlabel("update")
    ax.set_ylabel("average reward per step (bp), moving average")
    ax.set_title(f"sweep: {len(history)} members")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)
