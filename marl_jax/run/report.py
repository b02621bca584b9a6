"""The end of a run: the report every command writes, its plots, and the ``.pt`` export.

Every command's output folder holds ``report.json`` (:func:`build_report`: schema version 1,
``marl_jax/run/report.schema.json``) and ``returns.csv`` (:mod:`marl_jax.run.returns`). The
core keys are the same for train, backtest, walk-forward and a sweep's best: ``schema_version``,
``command``, ``provenance`` (:func:`marl_jax.run.provenance.provenance`), ``metrics`` (every key
of :func:`marl_jax.metrics.summary` for ``policy`` and each baseline, over the test split or
the pooled test folds), ``checks`` (:func:`report_checks`), ``folds`` (one entry for a single
split) and ``returns_csv``; a command adds its own keys after them.

:func:`test_split_runs` and :func:`export_pt` work on any trained state (a run's, a sweep
member's, a checkpoint's); :func:`write_report` is a run's use of them, and
:func:`write_split_report` writes the report and ``returns.csv`` of any single split.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from marl_jax import metrics
from marl_jax.agents import AGENT_NAMES
from marl_jax.config import Config
from marl_jax.env import evaluate, market
from marl_jax.env.features import FeatureNorm
from marl_jax.files import atomic_write_text
from marl_jax.mappo import MAPPO, TrainState
from marl_jax.run.metrics_log import read_metrics_log, tenth_mean
from marl_jax.run.plots import plot_learning_curve, plot_returns
from marl_jax.run.provenance import (
    BarCalendar,
    bar_calendar,
    iso_timestamp,
    mean_calendar,
    provenance,
)
from marl_jax.run.returns import (
    RETURNS_CSV,
    eval_arrays,
    returns_frame,
    write_returns_csv,
)
from marl_jax.run.rundir import EQUITY_CURVE, REPORT
from marl_jax.run.setup import SYNTHETIC, Instrument, Run, env_params_for
from marl_jax.run.steps import Normalisations, model_metadata
from marl_jax.run.tearsheet import write_tearsheet

__all__ = [
    "COMMANDS",
    "REPORT_METRICS",
    "REPORT_SCHEMA",
    "SCHEMA_VERSION",
    "SplitPart",
    "build_report",
    "capture_line",
    "config_data",
    "export_pt",
    "fold_entry",
    "format_report",
    "greedy_policy",
    "json_safe",
    "metrics_block",
    "metrics_of",
    "metrics_table",
    "one_sign_line",
    "report_checks",
    "stitched_summary",
    "test_split_runs",
    "with_capture",
    "write_report",
    "write_report_json",
    "write_split_report",
]

SCHEMA_VERSION = 1
# The JSON Schema of report.json (installed with the package).
REPORT_SCHEMA = Path(__file__).with_name("report.schema.json")
COMMANDS = ("train", "backtest", "walkforward", "sweep")
CORE_KEYS = (
    "schema_version",
    "command",
    "provenance",
    "metrics",
    "checks",
    "folds",
    "returns_csv",
)

# The printed table's rows; report.json holds every key of marl_jax.metrics.summary.
REPORT_METRICS = (
    "sharpe",
    "total_log_return",
    "max_drawdown",
    "hit_rate",
    "turnover",
    "beta",
    "alpha_t",
    "active_ir",
    "psr",
    "active_ir_0x_cost",
    "active_ir_2x_cost",
)


def greedy_policy(algo: MAPPO, state: TrainState):
    """A NumPy policy for the evaluator: greedy actions ``(N, 3)`` of the trained actors.

    The state is an argument of the jitted function, not a constant baked into it, so the
    program is the same for every run of a config and the compilation cache serves it.
    """
    return evaluate.TracedPolicy(lambda s, obs: algo.act(s, obs)[0], state)


def test_split_runs(
    cfg: Config,
    algo: MAPPO,
    state: TrainState,
    test_params: market.EnvParams,
    linear: evaluate.LinearBaseline | None = None,
    oracle: np.ndarray | None = None,
) -> dict[str, evaluate.EvalRun]:
    """The greedy policy of ``state`` (``policy``, first) and the baselines (``linear`` among
    them when given, and ``oracle`` with the planted signal) run over the test split."""
    runs = {"policy": evaluate.run_policy(greedy_policy(algo, state), test_params, batch_size=2048)}
    runs.update(
        evaluate.evaluate_baselines(test_params, seed=cfg.seed, linear=linear, oracle=oracle)
    )
    return runs


def metrics_of(runs: Mapping[str, evaluate.EvalRun]) -> dict[str, dict]:
    """Every metric of :func:`marl_jax.metrics.summary` of each run, by name."""
    return {name: dict(r.metrics) for name, r in runs.items()}


def with_capture(policy: Mapping, baselines: Mapping[str, Mapping]) -> dict:
    """``{"capture": ...}`` (:func:`marl_jax.env.evaluate.capture`) where the baselines hold
    the oracle, else nothing."""
    if evaluate.ORACLE not in baselines:
        return {}
    return {"capture": evaluate.capture({"policy": policy, **baselines})}


def capture_line(capture: float | None, label: str = "") -> str:
    """The capture as printed: the policy's net active IR over the oracle's (``n/a`` where the
    oracle's is 0)."""
    value = "n/a" if capture is None else f"{capture:.4f}"
    return f"{label}capture (policy active IR / oracle active IR): {value}"


def stitched_summary(
    parts: Sequence[Mapping[str, Mapping[str, np.ndarray]]],
    periods_per_year: float,
    cost_bps: float,
    trial_sharpes: Sequence[float] | None = None,
) -> dict[str, dict]:
    """Every metric of :func:`marl_jax.metrics.summary` (against buy-and-hold) of the per-bar
    arrays ``{name: {rewards, positions, pnl}}`` of ``parts`` (test folds, instruments)
    concatenated, for each name that every part holds (``buy_and_hold`` among them; ``policy``
    first; ``oracle`` only where every part was planted). The policy's DSR deflates for
    ``trial_sharpes`` (the trials it was chosen among), when given."""

    def stitched(name: str, field: str) -> np.ndarray:
        return np.concatenate([np.asarray(part[name][field]) for part in parts])

    benchmark = stitched("buy_and_hold", "rewards")
    benchmark_gross = stitched("buy_and_hold", "pnl")
    return {
        name: metrics.summary(
            stitched(name, "rewards"),
            stitched(name, "positions"),
            benchmark,
            periods_per_year,
            gross=stitched(name, "pnl"),
            benchmark_gross=benchmark_gross,
            cost_bps=cost_bps,
            trial_sharpes=trial_sharpes if name == "policy" else None,
        )
        for name in sorted(
            (k for k in parts[0] if k != "bar_index" and all(k in part for part in parts)),
            key=lambda k: k != "policy",
        )
    }


# ---------------------------------------------------------------------------- the report


def holds_one_sign(positions: np.ndarray) -> bool:
    """Whether ``positions`` hold one sign only (flat counting as a sign): no timing."""
    return np.unique(np.sign(np.asarray(positions))).size == 1


def report_checks(
    folds: Sequence[tuple[int, Sequence[Mapping]]], by_name: Mapping[str, Mapping]
) -> dict:
    """The report's ``checks``: ``folds`` (how many), ``one_sign_folds`` (how many folds'
    test positions hold one sign only, flat counting as a sign, in every instrument: there the
    policy is buy-and-hold scaled, or its short, and a positive IR is which sign it held, not
    timing; ``one_sign_fold_numbers`` lists them), and ``capture`` (the policy's net active
    IR over the oracle's in ``by_name``, the pooled metrics; None without an oracle). Where
    the oracle ran in every part, ``oracle_correlation``: the correlation of the stitched
    positions with the oracle's (None where either is constant).

    ``folds``: ``(fold number, parts)`` pairs, a part per instrument holding
    ``{name: {positions, ...}}`` (``policy`` among them)."""
    one_sign = [
        int(k) for k, parts in folds if all(holds_one_sign(p["policy"]["positions"]) for p in parts)
    ]
    checks: dict = {
        "folds": len(folds),
        "one_sign_folds": len(one_sign),
        "capture": with_capture(by_name["policy"], by_name).get("capture"),
        "one_sign_fold_numbers": one_sign,
    }
    parts = [p for _, ps in folds for p in ps]
    if parts and all(evaluate.ORACLE in p for p in parts):
        policy = np.concatenate([p["policy"]["positions"] for p in parts]).astype(np.float64)
        oracle = np.concatenate([p[evaluate.ORACLE]["positions"] for p in parts])
        oracle = oracle.astype(np.float64)
        varies = policy.std() > 0 and oracle.std() > 0
        checks["oracle_correlation"] = float(np.corrcoef(policy, oracle)[0, 1]) if varies else None
    return checks


def fold_entry(fold: int, stamps: np.ndarray, by_name: Mapping, **extra) -> dict:
    """One entry of the report's ``folds``: its number, the first and last timestamp of its
    evaluated bars ``stamps``, its ``metrics`` by name, then ``extra``."""
    stamps = np.sort(np.asarray(stamps, dtype="datetime64[ns]"))
    return {
        "fold": int(fold),
        "first_timestamp": iso_timestamp(stamps[0]),
        "last_timestamp": iso_timestamp(stamps[-1]),
        "metrics": dict(by_name),
        **extra,
    }


def build_report(
    command: str,
    prov: Mapping,
    by_name: Mapping[str, Mapping],
    checks: Mapping,
    folds: Sequence[Mapping],
    **extras,
) -> dict:
    """A ``report.json`` (see the module docstring): the core keys, then the command's
    ``extras`` (which may not reuse a core key)."""
    if command not in COMMANDS:
        raise ValueError(f"command {command!r}: expected one of {', '.join(COMMANDS)}")
    clash = sorted(set(extras) & set(CORE_KEYS))
    if clash:
        raise ValueError(f"extra report keys {clash} would replace core keys")
    names = sorted(by_name, key=lambda k: k != "policy")
    report = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "provenance": dict(prov),
        "metrics": {name: dict(by_name[name]) for name in names},
        "checks": dict(checks),
        "folds": list(folds),
        "returns_csv": RETURNS_CSV,
        **extras,
    }
    return json_safe(report)


def json_safe(x):
    """``x`` (dicts, lists, numbers) as strict JSON holds it: tuples as lists, NumPy scalars as
    Python numbers, non-finite floats as None."""
    if isinstance(x, Mapping):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_report_json(path: Path, report: Mapping) -> Path:
    """Writes ``report`` as ``report.json`` at ``path`` (atomically), as strict JSON
    (:func:`json_safe`)."""
    text = json.dumps(json_safe(report), indent=2, allow_nan=False)
    atomic_write_text(path, text + "\n")
    return path


def config_data(cfg: Config) -> str | list[str] | None:
    """The report's ``data`` of a config: its bar file, its files (several instruments), or
    None (the synthetic market)."""
    if cfg.env.data_paths:
        return list(cfg.env.data_paths)
    return cfg.env.data_path


@dataclasses.dataclass(frozen=True)
class SplitPart:
    """One instrument's evaluation over one split: its name, its bars' timestamps, its
    calendar and the runs by name (``policy`` first)."""

    instrument: str
    timestamps: np.ndarray
    calendar: BarCalendar
    runs: Mapping[str, evaluate.EvalRun]


def write_split_report(
    out: Path,
    command: str,
    parts: Sequence[SplitPart],
    *,
    cfg: Config,
    config: str,
    data: str | Sequence[str] | None,
    cost_bps: float,
    title: str,
    **extras,
) -> dict:
    """Writes ``returns.csv`` (fold 0), ``equity_curve.png`` (titled ``title``), ``report.json``
    and ``report.html`` (the tearsheet) of a single split into ``out``; returns the report. One
    part: its runs' metrics; several (instruments): every metric of their per-bar returns
    concatenated (:func:`stitched_summary`, at their mean calendar), and
    ``extras["instruments"]`` should hold each one's."""
    arrays = [eval_arrays(p.runs) for p in parts]
    frames = [
        returns_frame([(0, a)], p.timestamps, p.instrument)
        for p, a in zip(parts, arrays, strict=True)
    ]
    frame = pd.concat(frames, ignore_index=True)
    write_returns_csv(out / RETURNS_CSV, frame)
    plot_returns(frame, out / EQUITY_CURVE, title)
    calendar = mean_calendar([p.calendar for p in parts])
    if len(parts) == 1:
        by_name = metrics_of(parts[0].runs)
    else:
        by_name = stitched_summary(arrays, calendar.periods_per_year, cost_bps)
    stamps = np.concatenate(
        [p.timestamps[a["bar_index"]] for p, a in zip(parts, arrays, strict=True)]
    )
    prov = provenance(
        cfg=cfg, config=config, data=data, stamps=stamps, calendar=calendar, cost_bps=cost_bps
    )
    report = build_report(
        command,
        prov,
        by_name,
        report_checks([(0, arrays)], by_name),
        [fold_entry(0, stamps, by_name)],
        **extras,
    )
    write_report_json(out / REPORT, report)
    write_tearsheet(out)
    return report


def _instrument_runs(
    cfg: Config, algo: MAPPO, state: TrainState, instruments: Mapping[str, Instrument]
) -> list[SplitPart]:
    """Each instrument's test split: the greedy policy and the baselines (the linear one
    fitted on its own train split, the oracle where it was planted)."""
    greedy = greedy_policy(algo, state)
    parts = []
    for name, inst in instruments.items():
        test = env_params_for(cfg, inst.bars, "test", inst.norm, where=name)
        runs = {"policy": evaluate.run_policy(greedy, test, batch_size=2048)}
        linear = evaluate.LinearBaseline.fit(inst.train_params)
        runs.update(
            evaluate.evaluate_baselines(test, seed=cfg.seed, linear=linear, oracle=inst.oracle)
        )
        parts.append(SplitPart(name, inst.bars.timestamp, bar_calendar(cfg, inst.bars), runs))
    return parts


POOLED = (
    "every instrument's test-split bars one after the other (each starts flat), scored as one "
    "series: the per-bar net returns concatenated, annualised at the instruments' mean "
    "bars per year"
)


def write_report(run: Run, state: TrainState, config: str | None = None) -> dict:
    """Evaluates the greedy policy and the baselines (the linear one fitted on the train split)
    on the test split (of each instrument, and pooled, for several); writes ``report.json``,
    ``returns.csv``, ``equity_curve.png`` and ``learning_curve.png`` of the run. ``config``:
    the config's name or path as given (default: the run's ``config.yaml``)."""
    cfg = run.cfg
    extras: dict = {"split": "test"}
    if run.instruments is None:
        test_params = env_params_for(cfg, run.bars, "test", run.norm)
        linear = evaluate.LinearBaseline.fit(run.train_params)
        runs = test_split_runs(cfg, run.algo, state, test_params, linear, oracle=run.oracle)
        name = Path(cfg.env.data_path).name if cfg.env.data_path else SYNTHETIC
        parts = [SplitPart(name, run.bars.timestamp, bar_calendar(cfg, run.bars), runs)]
        title = "test split: trained policy (greedy) vs baselines"
    else:
        parts = _instrument_runs(cfg, run.algo, state, run.instruments)
        extras["instruments"] = {
            p.instrument: {
                "metrics": metrics_of(p.runs),
                **with_capture(p.runs["policy"].metrics, metrics_of(p.runs)),
            }
            for p in parts
        }
        extras["pooled_over"] = POOLED
        title = f"test splits of {len(parts)} instruments pooled: greedy vs baselines"
    rows = read_metrics_log(run.dir.metrics)
    rewards = [r["average_reward"] for r in rows]
    updates = int(state.update_step)
    extras["training"] = {
        "updates": updates,
        "env_steps": updates * cfg.training.batch_size,
        "first_10pct_reward": tenth_mean(rewards, first=True) if rows else None,
        "last_10pct_reward": tenth_mean(rewards) if rows else None,
    }
    norms = run.norms
    if isinstance(norms, FeatureNorm):
        extras["normalisation"] = norms.to_dict()
    else:
        extras["normalisation"] = {name: n.to_dict() for name, n in norms.items()}
    report = write_split_report(
        run.dir.root,
        "train",
        parts,
        cfg=cfg,
        config=config if config is not None else str(run.dir.config),
        data=config_data(cfg),
        cost_bps=cfg.env.cost_bps,
        title=title,
        **extras,
    )
    if rows:
        plot_learning_curve(rows, run.dir.learning_curve)
    return report


# Column headings of the metrics tables (the full names are in their legend line).
SHORT_NAMES = {"buy_and_hold": "buy&hold"}
TABLE_COLUMN = 10  # 7 columns of 10 after a 19-character label fit 100 columns


def metrics_table(by_name: Mapping[str, Mapping[str, float]], title: str) -> list[str]:
    """One block of a console table, transposed to fit 100 columns: a row per metric of
    :data:`REPORT_METRICS` and a column per agent (the policy first, then the baselines)."""
    label = max(map(len, REPORT_METRICS)) + 2
    names = list(by_name)
    heads = [SHORT_NAMES.get(n, n.split(" ")[0])[: TABLE_COLUMN - 1] for n in names]
    lines = [
        f"{title}: {', '.join(names)}",
        f"{'':{label}s}" + "".join(f"{h:>{TABLE_COLUMN}s}" for h in heads),
    ]
    for k in REPORT_METRICS:
        values = [by_name[n][k] for n in names]
        cells = "".join(
            f"{'n/a':>{TABLE_COLUMN}s}" if v is None else f"{v:>{TABLE_COLUMN}.4f}" for v in values
        )
        lines.append(f"{k:{label}s}" + cells)
    return lines


def one_sign_line(checks: Mapping) -> str:
    """The one-sign check as printed (see :func:`report_checks`)."""
    return (
        f"one-sign test folds: {checks['one_sign_folds']} of {checks['folds']} (the position "
        "never changes sign there: no timing)"
    )


def metrics_block(by_name: Mapping[str, Mapping], title: str, policy: str = "policy") -> list[str]:
    """:func:`metrics_table` of metrics by name (``policy`` shown as ``policy``), with the
    capture line under it where the oracle is among them."""
    shown = {(policy if k == "policy" else k): v for k, v in by_name.items()}
    lines = metrics_table(shown, title)
    capture = with_capture(by_name["policy"], by_name)
    if capture:
        lines.append(capture_line(capture["capture"]))
    return lines


def format_report(report: Mapping) -> str:
    """A single split's report (train, backtest, a sweep member) as a text table: a block per
    instrument, then the pooled one, for several; metrics down and agents across; then the
    one-sign check."""
    title = f"{report.get('split', 'test')} split"
    blocks = [(f"{name}:", part["metrics"]) for name, part in report.get("instruments", {}).items()]
    if blocks:
        blocks.append(("pooled:", report["metrics"]))
    lines: list[str] = []
    for label, by_name in blocks or [(None, report["metrics"])]:
        if label is not None:
            lines.append(label)
        lines += metrics_block(by_name, title, policy="policy (greedy)")
    lines.append(one_sign_line(report["checks"]))
    return "\n".join(lines)


def export_pt(path: Path, algo: MAPPO, state: TrainState, norm: Normalisations) -> Path | None:
    """Writes the models of ``state`` to ``path`` as a ``.pt`` file in the original format,
    with the feature normalisation (one per instrument for several) in its metadata. Needs
    torch (through the bridge): without it, prints a warning and returns None."""
    try:
        from bridge.convert import new_checkpoint, save_pt_checkpoint
    except ImportError as err:
        print(f"warning: {path} not written: the bridge needs torch ({err})")
        return None
    variables = jax.tree.map(np.asarray, algo.model_variables(state))
    ckpt = new_checkpoint(
        {name: variables["agents"][name] for name in AGENT_NAMES},
        variables["critic"],
        algo.modules,
        metadata=model_metadata(state, norm, algo.config.env.observe_position),
    )
    save_pt_checkpoint(ckpt, path)
    return path
