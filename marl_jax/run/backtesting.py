"""A backtest of any model on any bar file: the training run's test report, for a chosen range.

The evaluation is the training report's (the same baselines and metrics); the outputs are
those of a run's end: ``report.json`` (:func:`marl_jax.run.report.write_split_report`),
``returns.csv``, ``equity_curve.png`` and the printed table
(:func:`marl_jax.run.report.format_report`). The environment is the model's run config's
(:func:`marl_jax.run.setup.env_params_for`; the defaults for a model without one) with the
model's window and normalisation.

The ``linear`` baseline is fitted on bars before the evaluated ones, with the model's
normalisation: on the file's train split (the run's fractions, else 70/15/15) under ``--split
test``; under ``--split all`` on the bars before the evaluated range, when there are at least
``history + LINEAR_MIN_FIT`` of them (the warm-up and window, then ``LINEAR_MIN_FIT`` bars to
fit on). Otherwise it is left out: ``report["linear"]`` is None and
``report["linear_left_out"]`` says why.

The report's ``provenance`` holds the bar file, the evaluated bars' first and last timestamps
and count, and the cost; its extras: ``split``, ``model``, ``linear`` (where and on which bars
it was fitted), ``normalisation``.

Given the planted signal of the bars (``oracle``, from the bar file's sidecar:
:func:`marl_jax.run.planted.read_oracle`), the ``oracle`` baseline is among them and the report's
``checks`` hold the policy's ``capture``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from marl_jax.env import evaluate, market
from marl_jax.env.data import Bars, split_bounds
from marl_jax.policy import Ensemble, Policy, PolicyError
from marl_jax.run.provenance import BarCalendar
from marl_jax.run.report import SplitPart, write_split_report
from marl_jax.run.setup import env_params_for, periods_per_year_for

__all__ = ["LINEAR_MIN_FIT", "BacktestSpec", "backtest"]

SPLITS = ("test", "all")
# Bars the linear baseline is fitted at, at least (a ridge regression of 13 weights and an
# intercept), after the bars of the features' warm-up and the window.
LINEAR_MIN_FIT = 100


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


def _env_params(
    policy: Policy | Ensemble, bars: Bars, spec: BacktestSpec, source: str
) -> market.EnvParams:
    cfg = policy.run_config
    if spec.split not in SPLITS:
        raise PolicyError(f"--split {spec.split}: expected one of {', '.join(SPLITS)}")
    cost = spec.cost_bps if spec.cost_bps is not None else cfg.env.cost_bps
    if cost < 0:
        raise PolicyError(f"--cost-bps {cost}: a cost cannot be negative")
    fractions = cfg.env.split_fractions
    split, fractions = ("test", fractions) if spec.split == "test" else ("train", (1.0, 0.0, 0.0))
    params = env_params_for(
        cfg,
        bars,
        split,
        policy.norm,
        window=policy.window,
        cost_bps=cost,
        split_fractions=fractions,
        periods_per_year=periods_per_year_for(cfg, bars, synthetic=False),
        where=source,
        error=PolicyError,
    )
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


def _stamp_of(bars: Bars, t: int) -> str:
    return str(np.datetime_as_string(bars.timestamp[t], unit="s"))


def _linear(
    policy: Policy | Ensemble, bars: Bars, spec: BacktestSpec, params: market.EnvParams, source: str
) -> tuple[evaluate.LinearBaseline | None, dict[str, Any]]:
    """The linear baseline fitted before the evaluated bars (see the module docstring), and
    the report's entries on it."""
    cfg = policy.run_config
    lo = int(params.start_lo)
    if spec.split == "test":
        stop = split_bounds(len(bars), cfg.env.split_fractions)["train"][1]
        where = "the train split"
    else:
        stop, where = lo, "the bars before the evaluated range"
    need = policy.history + LINEAR_MIN_FIT
    if stop < need:
        why = (
            f"{where} holds {stop} bars; fitting it needs {need} (the features' warm-up and the "
            f"window, {policy.history}, then {LINEAR_MIN_FIT} to fit at): use --split test or "
            "a later --from"
        )
        return None, {"linear": None, "linear_left_out": why}
    bounds = (0, stop)
    train = env_params_for(
        cfg,
        bars,
        "train",
        policy.norm,
        bounds=bounds,
        window=policy.window,
        periods_per_year=float(params.periods_per_year),
        where=source,
    )
    first, last = int(train.start_lo), int(train.last_bar)
    fitted = {"on": where, "first": _stamp_of(bars, first), "last": _stamp_of(bars, last - 1)}
    return evaluate.LinearBaseline.fit(train), {"linear": {**fitted, "count": last - first}}


def backtest(
    policy: Policy | Ensemble,
    bars: Bars,
    spec: BacktestSpec = BacktestSpec(),
    *,
    out: str | Path,
    source: str = "bars",
    oracle: np.ndarray | None = None,
    command: str = "backtest",
) -> dict[str, Any]:
    """Runs the policy (greedy) and the baselines over ``spec`` (``oracle``: the bars' planted
    signal, see the module docstring) and writes ``report.json``, ``returns.csv`` and
    ``equity_curve.png`` into ``out`` (each atomically), the report's ``command`` being
    ``command``; returns the report."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PolicyError(f"--out {out}: exists and is not a folder; choose another --out")
    params = _env_params(policy, bars, spec, source)
    linear, linear_entries = _linear(policy, bars, spec, params, source)
    runs = {"policy": policy.run(params, batch_size=2048)}
    runs.update(
        evaluate.evaluate_baselines(
            params, seed=policy.run_config.seed, linear=linear, oracle=oracle
        )
    )
    part = SplitPart(
        Path(source).name,
        bars.timestamp,
        BarCalendar(float(params.interval_minutes), float(params.periods_per_year)),
        runs,
    )
    config = f"the run config of {policy.description}" if policy.config else "the defaults"
    return write_split_report(
        out,
        command,
        [part],
        cfg=policy.run_config,
        config=config,
        data=source,
        cost_bps=float(params.cost_bps),
        title=f"{spec.split}: policy (greedy) vs baselines",
        split=spec.split,
        model=policy.description,
        **linear_entries,
        normalisation=policy.norm.to_dict(),
    )
