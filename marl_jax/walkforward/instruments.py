"""A walk-forward over several instruments (``env.data_paths``, or ``--data`` repeated).

Each instrument is cut into the same number of folds on its own bars (:func:`instrument_folds`).
Fold ``K`` trains one run in ``OUT/fold_K`` on one environment over every instrument's fold-K
train span (each environment draws its instrument at reset; each instrument's normalisation is
fitted on its own train span, saved per instrument with the checkpoints), chooses the
checkpoint with the best validation metric (``select_by``) summed over the instruments (their
validation bars concatenated), and runs it once over each instrument's test fold with the
baselines (the linear one fitted on that instrument's train span). Leakage is as in
:mod:`marl_jax.walkforward.fold_run`, per instrument.

``fold.json`` holds, per instrument, its fold's bars, dates and test metrics, and as ``test`` the
fold's instruments pooled; ``test_runs.npz`` holds ``INSTRUMENT/NAME/FIELD`` arrays. The report
gives each fold (pooled over instruments), each instrument (``instruments``: its folds
stitched) and as ``metrics`` every instrument's test bars of every fold concatenated as one
series (fold by fold, instrument by instrument; each part starts flat), annualised at the
instruments' mean bars per year. An instrument whose bar file was planted adds the ``oracle``
baseline and the policy's ``capture`` to its entry; the pooled metrics hold the oracle only
where every instrument was planted. A fold is one-sign (``checks``) where the position holds
one sign in every instrument.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from marl_jax.config import Config
from marl_jax.env import data as bar_data
from marl_jax.env import market
from marl_jax.env.features import WARMUP_BARS
from marl_jax.files import atomic_write_text, atomic_write_with
from marl_jax.mappo import MAPPO, TrainState
from marl_jax.run import loop
from marl_jax.run.metrics_log import read_metrics_log
from marl_jax.run.plots import plot_learning_curve
from marl_jax.run.provenance import bar_calendar, mean_calendar, provenance
from marl_jax.run.report import build_report, report_checks, with_capture
from marl_jax.run.returns import eval_arrays, returns_frame
from marl_jax.run.rundir import RunDir, RunLock
from marl_jax.run.setup import Instrument, Run
from marl_jax.run.tracking import NO_TRACKER, Tracker
from marl_jax.walkforward.fold_run import (
    DEFAULT_SELECT,
    FOLD_RESULT,
    TEST_RUNS,
    FoldEnvs,
    fold_envs,
    greedy_policy_of,
    run_test_fold,
    select_checkpoint,
)
from marl_jax.walkforward.folds import Fold, WalkForwardError, make_folds
from marl_jax.walkforward.pooled import (
    fold_report_entry,
    header_extras,
    pooled_metrics,
    write_report_files,
)

__all__ = [
    "POOLED",
    "instrument_folds",
    "load_instruments_fold",
    "run_instruments_fold",
    "write_instruments_outputs",
]

POOLED = (
    "every instrument's test bars of every fold concatenated as one series (fold by fold, "
    "instrument by instrument, each part starting flat), annualised at the instruments' mean "
    "bars per year"
)


def instrument_folds(
    cfg: Config, markets: Mapping[str, bar_data.Bars], options: Mapping
) -> dict[str, list[Fold]]:
    """Each instrument's folds, laid out on its own bars with the walk-forward's options."""
    out = {}
    for name, bars in markets.items():
        try:
            out[name] = make_folds(
                len(bars),
                options["folds"],
                window=cfg.env.window,
                warmup=WARMUP_BARS,
                gap=options["gap"],
                val_fraction=options["val_fraction"],
                rolling=options["rolling"],
            )
        except WalkForwardError as err:
            if len(markets) == 1:
                raise
            raise WalkForwardError(f"{name}: {err}") from None
    return out


def load_instruments_fold(root: Path) -> tuple[dict, dict[str, dict]] | None:
    """A finished fold's ``fold.json`` and ``{instrument: {"bar_index", NAME: {positions,
    rewards, pnl}}}``, or None when the fold is not finished."""
    result = root / FOLD_RESULT
    if not result.is_file():
        return None
    summary = json.loads(result.read_text())
    arrays: dict[str, dict] = {}
    with np.load(root / TEST_RUNS) as z:
        for key in z.files:
            inst, rest = key.split("/", 1)
            if rest == "bar_index":
                arrays.setdefault(inst, {})["bar_index"] = z[key]
            else:
                name, field = rest.split("/")
                arrays.setdefault(inst, {}).setdefault(name, {})[field] = z[key]
    return summary, arrays


def _instrument_envs(
    cfg: Config,
    markets: Mapping[str, bar_data.Bars],
    folds: Mapping[str, Fold],
    oracles: Mapping[str, np.ndarray | None],
) -> dict[str, FoldEnvs]:
    """Each instrument's fold environments (with its planted signal, where it has one); an
    error names the instrument."""
    envs = {}
    for name, fold in folds.items():
        try:
            envs[name] = fold_envs(cfg, markets[name], fold, oracles.get(name))
        except WalkForwardError as err:
            raise WalkForwardError(f"{name}: {err}") from None
    return envs


def _train_instruments(
    cfg: Config,
    markets: Mapping[str, bar_data.Bars],
    folds: Mapping[str, Fold],
    envs: Mapping[str, FoldEnvs],
    run_dir: RunDir,
    lock: RunLock,
    progress: bool,
    tracker: Tracker = NO_TRACKER,
) -> tuple[Run, TrainState]:
    """Trains (or continues) the fold's run on one environment over every instrument's train
    span, each with its own normalisation."""
    instruments = {
        name: Instrument(markets[name][: folds[name].val[1]], e.norm, e.train)
        for name, e in envs.items()
    }
    train = market.combine_instruments([e.train for e in envs.values()])
    first = next(iter(instruments.values()))
    algo = MAPPO(cfg, market.MARKET)
    run = Run(cfg, run_dir, lock, first.bars, first.norm, train, algo, None, instruments)
    return run, loop.train_loop(run, resume=True, progress=progress, tracker=tracker)


def _instrument_entry(fold: Fold, timestamps: np.ndarray, runs: Mapping) -> dict:
    """An instrument's part of ``fold.json``: its fold's bars, dates and test metrics."""
    spans = (("train", fold.train), ("val", fold.val), ("test", fold.test))
    test = {k: r.metrics for k, r in runs.items()}
    return {
        **fold.to_dict(),
        "dates": {
            part: [str(pd.Timestamp(timestamps[a])), str(pd.Timestamp(timestamps[b - 1]))]
            for part, (a, b) in spans
        },
        "normalisation_fitted_on": fold.train,
        "test": test,
        **with_capture(test["policy"], test),
    }


def _test_instruments(
    cfg: Config,
    markets: Mapping[str, bar_data.Bars],
    folds: Mapping[str, Fold],
    envs: Mapping[str, FoldEnvs],
    policy_fn: Callable,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """The one read of each instrument's test fold (the linear baseline fitted on its own
    train span): ``fold.json``'s entries and the per-bar arrays, by instrument."""
    per, arrays = {}, {}
    for name, e in envs.items():
        runs = run_test_fold(policy_fn, e, cfg.seed)
        per[name] = _instrument_entry(folds[name], markets[name].timestamp, runs)
        arrays[name] = eval_arrays(runs)
    return per, arrays


def _save_instruments_fold(root: Path, summary: dict, arrays: Mapping[str, dict]) -> None:
    """Writes ``test_runs.npz`` (keys ``INSTRUMENT/NAME/FIELD``), then ``fold.json``, which
    marks the fold finished."""
    flat = {}
    for inst, a in arrays.items():
        flat[f"{inst}/bar_index"] = a["bar_index"]
        for key, fields in a.items():
            if key != "bar_index":
                flat.update({f"{inst}/{key}/{f}": v for f, v in fields.items()})
    atomic_write_with(root / TEST_RUNS, lambda fh: np.savez(fh, **flat))
    atomic_write_text(root / FOLD_RESULT, json.dumps(summary, indent=2) + "\n")


def run_instruments_fold(
    cfg: Config,
    markets: Mapping[str, bar_data.Bars],
    folds: Mapping[str, Fold],
    root: Path,
    *,
    progress: bool = False,
    oracles: Mapping[str, np.ndarray | None] | None = None,
    select_by: str = DEFAULT_SELECT,
    tracker: Tracker = NO_TRACKER,
) -> tuple[dict, dict[str, dict]]:
    """Trains, selects on validation and tests fold ``K`` of every instrument (``folds``: each
    instrument's fold K; ``oracles``: each one's planted signal, where it has one), each
    update's metrics also to ``tracker``; skipped when already finished. Returns
    :func:`load_instruments_fold`'s pair."""
    done = load_instruments_fold(root)
    if done is not None:
        return done
    envs = _instrument_envs(cfg, markets, folds, oracles or {})
    lock = RunLock(root).acquire()
    try:
        run_dir = RunDir(root, cfg.checkpoint.dir)
        run, state = _train_instruments(cfg, markets, folds, envs, run_dir, lock, progress, tracker)
        policy_of = greedy_policy_of(run.algo)
        vals = {n: e.val for n, e in envs.items()}
        step, chosen, scores = select_checkpoint(run, state, vals, policy_of, select_by)
        per, arrays = _test_instruments(cfg, markets, folds, envs, policy_of(chosen))
        rows = read_metrics_log(run.dir.metrics)
        if rows:
            plot_learning_curve(rows, run.dir.learning_curve)
        per_year = mean_calendar([bar_calendar(cfg, b) for b in markets.values()]).periods_per_year
        summary = {
            "fold": next(iter(folds.values())).index,
            "instruments": per,
            "selection": {
                "metric": f"validation {select_by}, summed over the instruments",
                "step": step,
                "scores": {str(s): v for s, v in scores.items()},
            },
            "test": pooled_metrics(
                [(None, a) for a in arrays.values()], per_year, cfg.env.cost_bps
            ),
        }
        summary.update(with_capture(summary["test"]["policy"], summary["test"]))
        _save_instruments_fold(root, summary, arrays)
    finally:
        lock.release()
    return load_instruments_fold(root)


def write_instruments_outputs(
    out: Path,
    results: Sequence[tuple[dict, dict[str, dict]]],
    markets: Mapping[str, bar_data.Bars],
    header: Mapping,
    cfg: Config,
    config: str,
) -> dict:
    """Writes ``returns.csv`` (with each row's ``instrument``), ``equity_curve.png`` and
    ``report.json`` under ``out`` (atomically); returns the report. ``config``: the config's
    name or path as given."""
    cost_bps = cfg.env.cost_bps
    calendars = {name: bar_calendar(cfg, bars) for name, bars in markets.items()}
    calendar = mean_calendar(list(calendars.values()))
    parts = [(summary, arrays[name]) for summary, arrays in results for name in markets]
    frame = pd.concat(
        [
            returns_frame([(summary["fold"], arrays[name])], markets[name].timestamp, name)
            for summary, arrays in results
            for name in markets
        ],
        ignore_index=True,
    )
    instruments = {}
    for name in markets:
        by_name = pooled_metrics(
            [(s, a[name]) for s, a in results], calendars[name].periods_per_year, cost_bps
        )
        instruments[name] = {
            "metrics": by_name,
            **with_capture(by_name["policy"], by_name),
        }
    pooled = pooled_metrics(parts, calendar.periods_per_year, cost_bps)
    stamps = [
        np.concatenate([markets[n].timestamp[arrays[n]["bar_index"]] for n in markets])
        for _, arrays in results
    ]
    prov = provenance(
        cfg=cfg,
        config=config,
        data=header.get("data"),
        stamps=np.concatenate(stamps),
        calendar=calendar,
        cost_bps=cost_bps,
    )
    checks = report_checks(
        [(s["fold"], [arrays[n] for n in markets]) for s, arrays in results], pooled
    )
    report = build_report(
        "walkforward",
        prov,
        pooled,
        checks,
        [fold_report_entry(s, t) for (s, _), t in zip(results, stamps, strict=True)],
        **header_extras(header),
        instruments=instruments,
        pooled_over=POOLED,
    )
    title = (
        f"walk-forward: {len(results)} folds of {len(markets)} instruments stitched, "
        "greedy policy vs baselines"
    )
    return write_report_files(out, frame, title, report)
