"""A run folder that follows the report contract (schema version 1): ``report.json`` and
``returns.csv`` of a made-up walk-forward of daily bars, for the tearsheet's tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from marl_jax.metrics import summary

PERIODS_PER_YEAR = 252.0


def make_run(
    out: Path,
    *,
    n_bars: int = 320,
    folds: int = 2,
    one_sign: bool = False,
    oracle: bool = True,
    seed: int = 0,
) -> Path:
    """Writes ``report.json`` and ``returns.csv`` under ``out``: ``folds`` test folds of daily
    bars (business days from 2021-01-04); the policy times a planted signal, or holds a long
    position throughout with ``one_sign``. Returns ``out``."""
    rng = np.random.default_rng(seed)
    stamps = pd.bdate_range("2021-01-04", periods=n_bars)
    signal = np.zeros(n_bars)  # a persistent planted signal: AR(1), unit variance
    shocks = rng.normal(0.0, np.sqrt(1 - 0.95**2), n_bars)
    for t in range(1, n_bars):
        signal[t] = 0.95 * signal[t - 1] + shocks[t]
    market = 0.0003 + 0.0015 * signal + rng.normal(0.0, 0.01, n_bars)
    position = (
        np.full(n_bars, 0.5)
        if one_sign
        else np.round(np.tanh(signal + 0.5 * rng.normal(0, 1, n_bars)) * 3) / 3
    )
    fold = np.repeat(np.arange(folds), -(-n_bars // folds))[:n_bars]
    cost = 1e-4 * np.abs(np.diff(position, prepend=0.0))
    positions = {
        "policy": position,
        "buy_and_hold": np.ones(n_bars),
        "flat": np.zeros(n_bars),
        "linear": np.clip(0.5 * signal, -1, 1),
    }
    if oracle:
        positions["oracle"] = np.sign(signal)
    net = {
        name: p * market - 1e-4 * np.abs(np.diff(p, prepend=0.0)) for name, p in positions.items()
    }
    net["policy"] = position * market - cost
    frame = pd.DataFrame(
        {
            "timestamp": stamps.strftime("%Y-%m-%d %H:%M:%S"),
            "fold": fold,
            "instrument": "spy.csv",
            "position": position,
            **net,
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "returns.csv", index=False, float_format="%.10g")

    def metrics(rows: np.ndarray) -> dict:
        bench = net["buy_and_hold"][rows]
        return {
            name: summary(net[name][rows], positions[name][rows], bench, PERIODS_PER_YEAR)
            for name in net
        }

    every = np.arange(n_bars)
    pooled = metrics(every)
    one_sign_folds = sum(np.unique(np.sign(position[fold == k])).size == 1 for k in range(folds))
    capture = pooled["policy"]["active_ir"] / pooled["oracle"]["active_ir"] if oracle else None
    report = {
        "schema_version": 1,
        "command": "walkforward",
        "provenance": {
            "data": "data/spy.csv",
            "data_sha256": "ab12cd34ef56" * 5 + "abcd",
            "first_timestamp": stamps[0].isoformat(),
            "last_timestamp": stamps[-1].isoformat(),
            "bars": n_bars,
            "interval_minutes": 1440.0,
            "periods_per_year": PERIODS_PER_YEAR,
            "cost_bps": 1.0,
            "config": "quickstart",
            "config_sha256": "0123456789abcdef" * 4,
            "version": "0.1.0",
            "git_commit": "5216445aa" + "0" * 31,
            "created": "2026-12-07T14:00:00+00:00",
        },
        "metrics": pooled,
        "checks": {"folds": folds, "one_sign_folds": int(one_sign_folds), "capture": capture},
        "folds": [
            {
                "fold": k,
                "first_timestamp": stamps[fold == k][0].isoformat(),
                "last_timestamp": stamps[fold == k][-1].isoformat(),
                "metrics": metrics(np.flatnonzero(fold == k)),
            }
            for k in range(folds)
        ],
        "returns_csv": "returns.csv",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return out
