"""A backtest of any model on any bar file: the training run's test report, for a chosen range.

The evaluation is the training report's (:func:`marl_jax.env.evaluate.evaluate_split`, the
same baselines and metrics); the outputs are those of a run's end: ``report.json``,
``equity_curve.png`` and the printed table (:func:`marl_jax.run.report.format_report`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from marl_jax.env import evaluate, market
from marl_jax.env.data import Bars
from marl_jax.env.market import DEFAULT_FRACTIONS
from marl_jax.policy import Policy, PolicyError
from marl_jax.run.files import atomic_write_text
from marl_jax.run.plots import plot_equity_curves
from marl_jax.run.report import REPORT_METRICS
from marl_jax.run.rundir import EQUITY_CURVE, REPORT
from marl_jax.run.setup import env_modes

__all__ = ["BacktestSpec", "backtest", "write_backtest"]

SPLITS = ("test", "all")


@dataclasses.dataclass(frozen=True)
class BacktestSpec:
    """Which bars to evaluate (``split``, narrowed to timestamps ``[start, end]``) and at
    what cost (``None``: the model's run config, else 1 bp)."""

    split: str = "test"
    start: str | None = None
    end: str | None = None
    cost_bps: float | None = None


def _stamp(value: str, flag: str) -> np.datetime64:
    try:
        return np.datetime64(value, "ns")
    except ValueError:
        raise PolicyError(f"{flag} {value!r}: not a timestamp (e.g. 2024-01-31T14:00)") from None


def _env_params(policy: Policy, bars: Bars, spec: BacktestSpec, source: str) -> market.EnvParams:
    cfg = policy.config
    if spec.split not in SPLITS:
        raise PolicyError(f"--split {spec.split}: expected one of {', '.join(SPLITS)}")
    cost = spec.cost_bps if spec.cost_bps is not None else (cfg.env.cost_bps if cfg else 1.0)
    if cost < 0:
        raise PolicyError(f"--cost-bps {cost}: a cost cannot be negative")
    fractions = cfg.env.split_fractions if cfg else DEFAULT_FRACTIONS
    split, fractions = ("test", fractions) if spec.split == "test" else ("train", (1.0, 0.0, 0.0))
    try:
        params = market.make_env_params(
            bars,
            split,
            window=policy.window,
            norm=policy.norm,
            cost_bps=cost,
            split_fractions=fractions,
            **(env_modes(cfg) if cfg else {}),
        )
    except ValueError as err:
        raise PolicyError(f"{source}: {err}") from None
    lo, last = int(params.start_lo), int(params.last_bar)
    if spec.start is not None:
        lo = max(lo, int(np.searchsorted(bars.timestamp, _stamp(spec.start, "--from"))))
    if spec.end is not None:
        end = int(np.searchsorted(bars.timestamp, _stamp(spec.end, "--to"), side="right")) - 1
        last = min(last, end)
    if last <= lo:
        raise PolicyError(
            f"{source}: no bars to evaluate in the {spec.split} split between --from "
            f"{spec.start} and --to {spec.end} (after the first {policy.history - 1} bars of "
            "warm-up and window); widen the range"
        )
    return params.replace(
        start_lo=jnp.asarray(lo, jnp.int32),
        start_hi=jnp.asarray(max(lo, last - 1), jnp.int32),
        last_bar=jnp.asarray(last, jnp.int32),
    )


def backtest(
    policy: Policy, bars: Bars, spec: BacktestSpec = BacktestSpec(), *, source: str = "bars"
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(report, equity curves)`` of the policy (greedy) and the baselines over ``spec``."""
    params = _env_params(policy, bars, spec, source)
    seed = policy.config.seed if policy.config else 0
    policy_metrics, baselines, curves = evaluate.evaluate_split(
        policy.policy_fn(), params, seed=seed, batch_size=2048
    )
    lo, last = int(params.start_lo), int(params.last_bar)
    report = {
        "split": spec.split,
        "model": policy.description,
        "data": source,
        "bars": {
            "first": str(np.datetime_as_string(bars.timestamp[lo], unit="s")),
            "last": str(np.datetime_as_string(bars.timestamp[last - 1], unit="s")),
            "count": last - lo,
        },
        "cost_bps": params.cost_bps,
        "interval_minutes": params.interval_minutes,
        "policy": {k: policy_metrics[k] for k in REPORT_METRICS},
        "baselines": {name: {k: m[k] for k in REPORT_METRICS} for name, m in baselines.items()},
        "normalisation": policy.norm.to_dict(),
    }
    return report, curves


def write_backtest(report: dict, curves: dict, out: str | Path) -> Path:
    """Writes ``report.json`` and ``equity_curve.png`` into ``out`` (each atomically)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PolicyError(f"--out {out}: exists and is not a folder; choose another --out")
    plot_equity_curves(
        curves, out / EQUITY_CURVE, title=f"{report['split']}: policy (greedy) vs baselines"
    )
    atomic_write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
    return out
