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
    "RETURN_COLUMNS",
    "plot_returns",
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


# The columns of a returns frame (``returns.csv``) that are not an agent's net returns.
RETURN_COLUMNS = ("timestamp", "fold", "instrument", "position")


def plot_returns(frame, path: str | os.PathLike, title: str) -> Path:
    """PNG of a returns frame (``returns.csv``: one row per bar, each agent's net log return):
    equity on a log scale, drawdown and the policy's position, on the bars' dates (on the bar
    count where several instruments are stitched), with the test folds' boundaries. Agents
    without a return at every row are left out."""
    import pandas as pd
    from matplotlib.ticker import FuncFormatter

    names = [c for c in frame.columns if c not in RETURN_COLUMNS and frame[c].notna().all()]
    names = ["policy"] + [n for n in names if n != "policy"] if "policy" in names else names
    stamps = pd.to_datetime(frame["timestamp"])
    on_dates = stamps.is_monotonic_increasing and frame["instrument"].nunique() == 1
    x = stamps.to_numpy() if on_dates else np.arange(1, len(frame) + 1)
    fig = _figure(10, 7.5)
    grid = fig.add_gridspec(3, 1, height_ratios=(3, 1.3, 1), hspace=0.12)
    ax_eq = fig.add_subplot(grid[0])
    ax_dd = fig.add_subplot(grid[1], sharex=ax_eq)
    ax_pos = fig.add_subplot(grid[2], sharex=ax_eq)
    for name in names:
        log_equity = np.cumsum(frame[name].to_numpy(np.float64))
        equity = np.exp(log_equity)
        width = 2.0 if name == "policy" else 1.0
        ax_eq.plot(x, equity, label=name, lw=width)
        if name in ("policy", "buy_and_hold"):
            drawdown = np.expm1(log_equity - np.maximum.accumulate(np.r_[0.0, log_equity])[1:])
            ax_dd.plot(x, 100 * drawdown, label=name, lw=width)
    ax_pos.step(x, frame["position"].to_numpy(np.float64), where="post", lw=0.8, color="C0")
    folds = frame["fold"].to_numpy()
    for edge in np.flatnonzero(np.diff(folds) != 0) + 1:
        for ax in (ax_eq, ax_dd, ax_pos):
            ax.axvline(x[edge], color="gray", ls=":", lw=0.8)
    ax_eq.set_yscale("log")
    # Plain numbers on the log axis (1.2, not 1.2 x 10^0), minor ticks labelled too.
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax_eq.yaxis.set_major_formatter(plain)
    ax_eq.yaxis.set_minor_formatter(plain)
    ax_eq.tick_params(axis="y", which="minor", labelsize=7)
    ax_eq.set_ylabel("equity (net, log scale)")
    ax_eq.set_title(title)
    ax_eq.legend(loc="best", fontsize=8)
    ax_dd.set_ylabel("drawdown (%)")
    ax_pos.set_ylabel("position")
    ax_pos.set_ylim(-1.1, 1.1)
    ax_pos.set_xlabel("date" if on_dates else "test bar (instruments stitched)")
    for ax in (ax_eq, ax_dd, ax_pos):
        ax.grid(alpha=0.3)
    for ax in (ax_eq, ax_dd):
        ax.tick_params(labelbottom=False)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.95, bottom=0.08)
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
