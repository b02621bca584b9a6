"""``report.html``: a run's tearsheet, one self-contained page that opens offline.

Built from a run folder's ``report.json`` (the report contract, schema version 1; the older
walk-forward report, with ``pooled`` for ``metrics`` and no provenance, is read too) and its
``returns.csv`` (one row per evaluated bar: the policy's and each baseline's net log return).
The page holds a verdict line in words, the provenance, one plotly figure (equity on a log
scale, drawdown, rolling Sharpe, rolling active IR and the position, on dates, with the test
folds shaded), the policy's monthly returns, the metrics of the policy and every baseline, and
each fold's. plotly.js is inlined once; a small script writes how many charts rendered, and
any script error, into ``#render-status`` (what the browser test reads).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from marl_jax.errors import MarlJaxError
from marl_jax.files import atomic_write_text

__all__ = [
    "REPORT_HTML",
    "ReportView",
    "TearsheetError",
    "monthly_returns",
    "read_report",
    "read_returns",
    "render_tearsheet",
    "rolling_active_ir",
    "rolling_sharpe",
    "rolling_window",
    "verdict",
    "write_tearsheet",
]

REPORT_JSON = "report.json"
RETURNS_CSV = "returns.csv"
REPORT_HTML = "report.html"
# Columns of returns.csv that are not a strategy's returns.
NON_STRATEGY = ("timestamp", "fold", "instrument", "position")
# The most points a chart's line holds (two a pixel across a wide screen); longer runs are
# thinned evenly for display only, and the values sent as float32, to keep the page small.
MAX_POINTS = 2500
# Rolling windows: about a quarter of a year of bars, at least this many, and at most a third
# of the bars evaluated.
MIN_WINDOW = 10
# An active return this small against the returns' own is float rounding: the strategy is a
# scaled benchmark (as in marl_jax.metrics.alpha_beta).
SCALED_BENCHMARK_RTOL = 1e-5

LABELS = {
    "policy": "policy",
    "buy_and_hold": "buy & hold",
    "flat": "flat",
    "random": "random",
    "momentum": "momentum",
    "linear": "linear",
    "oracle": "oracle (planted)",
}
COLOURS = {
    "policy": "#1f4e9c",
    "buy_and_hold": "#333333",
    "flat": "#9e9e9e",
    "random": "#b07aa1",
    "momentum": "#59a14f",
    "linear": "#e15759",
    "oracle": "#d4a017",
}
SPARE_COLOURS = ("#76b7b2", "#ff9da7", "#9c755f", "#edc948")


class TearsheetError(MarlJaxError):
    """A run folder's report.json or returns.csv cannot be made into a tearsheet."""


@dataclass(frozen=True)
class ReportView:
    """What the tearsheet reads from a report, in the contract's terms whatever its version."""

    command: str
    metrics: dict[str, dict]  # the test metrics by name, policy first
    provenance: dict
    folds: list[dict]  # each {"fold", "first_timestamp", "last_timestamp", "metrics"}
    n_folds: int
    one_sign_folds: int | None
    capture: float | None
    returns_csv: str = "returns.csv"  # the per-bar file's name in the run folder
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Reading


def read_report(path: Path) -> ReportView:
    """``report.json`` at ``path`` as a :class:`ReportView`; a one-line error if it is absent,
    not JSON, or holds no metrics."""
    if not path.is_file():
        raise TearsheetError(f"{path}: no such file; give a run folder that holds report.json")
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TearsheetError(f"{path}: not a JSON report ({err}); rerun the command") from None
    if not isinstance(report, dict):
        raise TearsheetError(f"{path}: not a JSON object; rerun the command that wrote it")
    return view_report(report, path)


def view_report(report: Mapping, where: Path | str = REPORT_JSON) -> ReportView:
    """The report's parts (contract schema version 1, or the older walk-forward report)."""
    metrics = report.get("metrics", report.get("pooled"))
    if not isinstance(metrics, dict) or not isinstance(metrics.get("policy"), dict):
        raise TearsheetError(
            f"{where}: no metrics.policy (neither 'metrics' nor 'pooled' holds the policy's); "
            "rerun the command with this version"
        )
    metrics = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    folds = [_fold_view(f) for f in report.get("folds", []) if isinstance(f, dict)]
    checks = report.get("checks") if isinstance(report.get("checks"), dict) else {}
    n_folds = _int(checks.get("folds")) or len(folds) or 1
    one_sign = checks.get("one_sign_folds", report.get("one_sign_folds"))
    if isinstance(one_sign, dict):  # the older walk-forward report: {"count", "of", "folds"}
        n_folds = _int(one_sign.get("of")) or n_folds
        one_sign = one_sign.get("count")
    capture = checks.get("capture", report.get("capture"))
    provenance = report.get("provenance")
    if not isinstance(provenance, dict):
        provenance = _old_provenance(report)
    return ReportView(
        command=str(report.get("command", "walkforward" if "pooled" in report else "run")),
        metrics={"policy": metrics["policy"], **metrics},
        provenance=provenance,
        folds=folds,
        n_folds=n_folds,
        one_sign_folds=_int(one_sign),
        capture=_float(capture),
        returns_csv=_file_name(report.get("returns_csv")) or RETURNS_CSV,
        extra={k: report[k] for k in ("selection", "pooled_over") if k in report},
    )


def _fold_view(fold: Mapping) -> dict:
    """One fold's entry in the contract's shape (the older report's test metrics are 'test')."""
    metrics = fold.get("metrics", fold.get("test", {}))
    return {
        "fold": fold.get("fold"),
        "first_timestamp": fold.get("first_timestamp"),
        "last_timestamp": fold.get("last_timestamp"),
        "metrics": metrics if isinstance(metrics, dict) else {},
    }


def _old_provenance(report: Mapping) -> dict:
    """What a report without ``provenance`` records of it (the older walk-forward's header)."""
    config = report.get("config")
    return {
        "data": report.get("data"),
        "data_sha256": report.get("data_sha256"),
        "bars": report.get("n_bars"),
        "config": "(recorded in full in report.json)" if isinstance(config, dict) else config,
    }


def _file_name(value) -> str | None:
    """``value`` where it is a plain file name (no folder), else None."""
    return value if isinstance(value, str) and value and Path(value).name == value else None


def _int(value) -> int | None:
    """``value`` as an int, or None where it is not a number."""
    number = _float(value)
    return None if number is None else int(number)


def _float(value) -> float | None:
    """``value`` as a finite float, or None (a missing, non-numeric or NaN value)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def read_returns(path: Path) -> pd.DataFrame:
    """``returns.csv`` at ``path``, its rows as written: timestamps parsed, ``fold`` (0 where
    absent), ``instrument`` ("" where absent) and ``position`` (NaN where absent), every other
    column a strategy's net log return. A one-line error names what is wrong."""
    if not path.is_file():
        raise TearsheetError(f"{path}: no such file; give a run folder that holds returns.csv")
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TearsheetError(f"{path}: not a CSV table ({first})") from None
    missing = [c for c in ("timestamp", "policy") if c not in frame.columns]
    if missing:
        raise TearsheetError(
            f"{path}: no column {', '.join(missing)} (has {', '.join(map(str, frame.columns))}); "
            "rerun the command with this version"
        )
    if frame.empty:
        raise TearsheetError(f"{path}: no rows; the run evaluated no bars")
    stamps = pd.to_datetime(frame["timestamp"], errors="coerce", utc=False, format="mixed")
    bad = np.flatnonzero(stamps.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        raise TearsheetError(
            f"{path}: row {row + 2} has timestamp {frame['timestamp'].iloc[row]!r}, not a date"
        )
    frame["timestamp"] = stamps
    frame["fold"] = frame["fold"].fillna(0) if "fold" in frame.columns else 0
    frame["instrument"] = frame["instrument"] if "instrument" in frame.columns else ""
    for name in [c for c in frame.columns if c not in ("timestamp", "instrument")]:
        values = pd.to_numeric(frame[name], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy() & frame[name].notna().to_numpy())
        if bad.size:
            row = int(bad[0])
            raise TearsheetError(
                f"{path}: row {row + 2}, column {name!r} holds {frame[name].iloc[row]!r}, "
                "not a number"
            )
        frame[name] = values
    if "position" not in frame.columns:
        frame["position"] = np.nan
    return frame


def strategies(frame: pd.DataFrame) -> list[str]:
    """The strategy columns of a returns frame, policy first, then as written."""
    names = [c for c in frame.columns if c not in NON_STRATEGY]
    return ["policy"] + [n for n in names if n != "policy"]


# ---------------------------------------------------------------------------------------------
# Series


def infer_periods_per_year(stamps: pd.Series) -> float:
    """Bars per year from the timestamps' own span (the older reports do not record it)."""
    span_days = (stamps.max() - stamps.min()).total_seconds() / 86400.0
    n = stamps.nunique()
    return float(n - 1) / (span_days / 365.25) if span_days > 0 and n > 1 else 252.0


def rolling_window(periods_per_year: float, n_bars: int) -> int:
    """About a quarter of a year of bars, at least :data:`MIN_WINDOW` and at most a third of
    ``n_bars`` (but never under 2)."""
    quarter = int(round(periods_per_year / 4)) if periods_per_year > 0 else MIN_WINDOW
    return max(2, min(max(quarter, MIN_WINDOW), n_bars // 3))


def rolling_sharpe(returns: pd.Series, window: int, periods_per_year: float) -> pd.Series:
    """The annualised Sharpe ratio over each trailing ``window`` bars (NaN where undefined)."""
    roll = returns.rolling(window)
    std = roll.std()
    return (roll.mean() / std.where(std > 1e-12)) * math.sqrt(periods_per_year)


def rolling_active_ir(
    returns: pd.Series, benchmark: pd.Series, window: int, periods_per_year: float
) -> pd.Series:
    """The annualised active information ratio over each trailing ``window`` bars: the mean over
    the standard deviation of ``returns - beta * benchmark``, beta fitted by OLS in the window,
    as :func:`marl_jax.metrics.alpha_beta` (beta 0 where the benchmark does not move; 0 where
    the window's returns are a scaled benchmark, NaN where nothing moves)."""
    y, x = returns, benchmark
    mean_y, mean_x = y.rolling(window).mean(), x.rolling(window).mean()
    var_y, var_x = y.rolling(window).var(), x.rolling(window).var()
    cov = y.rolling(window).cov(x)
    moves = var_x > 1e-30
    beta = (cov / var_x.where(moves)).where(moves, 0.0)
    active_std = np.sqrt((var_y - beta * cov).clip(lower=0.0))
    scale = np.maximum(np.sqrt(var_y), np.sqrt(var_x) * beta.abs())
    scaled_benchmark = active_std <= SCALED_BENCHMARK_RTOL * scale
    ir = (mean_y - beta * mean_x) / active_std.where(~scaled_benchmark)
    return (ir * math.sqrt(periods_per_year)).mask(scaled_benchmark & (scale > 0), 0.0)


def drawdown(log_returns: pd.Series) -> pd.Series:
    """The fall of the equity ``exp(cumsum)`` from its running peak (the start, 1, counts), as a
    negative fraction."""
    equity = np.exp(log_returns.cumsum())
    peak = np.maximum(equity.cummax(), 1.0)
    return equity / peak - 1.0


def monthly_returns(log_returns: pd.Series, timestamps: pd.Series) -> pd.DataFrame:
    """Compounded monthly returns in percent: one row per year, columns Jan..Dec and ``Year``
    (NaN for months without bars)."""
    frame = pd.DataFrame({"r": log_returns.to_numpy(), "t": pd.to_datetime(timestamps).values})
    frame["year"], frame["month"] = frame["t"].dt.year, frame["t"].dt.month
    by_month = frame.groupby(["year", "month"])["r"].sum()
    table = np.expm1(by_month).mul(100.0).unstack("month")
    table = table.reindex(columns=range(1, 13))
    table.columns = [pd.Timestamp(2000, m, 1).strftime("%b") for m in range(1, 13)]
    table["Year"] = np.expm1(frame.groupby("year")["r"].sum()) * 100.0
    table.index.name = None
    return table


def fold_spans(frame: pd.DataFrame) -> list[tuple[int, pd.Timestamp, pd.Timestamp]]:
    """``(fold, first timestamp, last timestamp)`` of each run of one fold in time order."""
    spans: list[tuple[int, pd.Timestamp, pd.Timestamp]] = []
    folds, stamps = frame["fold"].to_numpy(), frame["timestamp"]
    starts = np.flatnonzero(np.r_[True, folds[1:] != folds[:-1]])
    ends = np.r_[starts[1:], len(folds)] - 1
    for a, b in zip(starts, ends, strict=True):
        spans.append((int(folds[a]), stamps.iloc[a], stamps.iloc[b]))
    return spans


def one_sign_by_fold(frame: pd.DataFrame) -> dict[int, float | None]:
    """For each fold: the sign its position holds throughout (1, -1 or 0), or None if it
    changes sign there (or the positions are not recorded)."""
    out: dict[int, float | None] = {}
    for fold, part in frame.groupby("fold", sort=True):
        signs = np.unique(np.sign(part["position"].dropna().to_numpy()))
        out[int(fold)] = float(signs[0]) if signs.size == 1 else None
    return out


# ---------------------------------------------------------------------------------------------
# Words


def _signed(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def verdict(view: ReportView, frame: pd.DataFrame) -> str:
    """The report's reading in one line: a scaled buy-and-hold where the position holds one
    sign in most test folds, else the net active IR and alpha's t (and the oracle's capture)."""
    signs = one_sign_by_fold(frame)
    held = [s for s in signs.values() if s is not None]
    n = view.n_folds
    count = view.one_sign_folds if view.one_sign_folds is not None else len(held)
    if count * 2 > n:
        kinds = set(held)
        if kinds == {1.0}:
            what = "a scaled buy-and-hold"
        elif kinds == {-1.0}:
            what = "a scaled short of buy-and-hold"
        elif kinds == {0.0}:
            what = "flat: no position at all"
        else:
            what = "a scaled buy-and-hold, or its short, in each (no timing)"
        where = f"in {count} of {n} test folds" if n > 1 else "over the whole test split"
        return f"holds one sign {where}: {what}"
    policy = view.metrics["policy"]
    ir, t = _float(policy.get("active_ir")), _float(policy.get("alpha_t"))
    words = f"net active IR {_signed(ir)}, alpha t {_signed(t, 1).lstrip('+')}"
    if "oracle" in view.metrics and view.capture is not None:
        words += f", captures {view.capture:.0%} of the oracle's active IR"
    if count and n > 1:
        words += f" (holds one sign in {count} of {n} test folds)"
    return words


# ---------------------------------------------------------------------------------------------
# Tables

# metric -> (row label, kind of format); metrics not named here follow in the report's order.
METRIC_ROWS: dict[str, tuple[str, str]] = {
    "sharpe": ("Sharpe ratio (annualised)", "ratio"),
    "sortino": ("Sortino ratio (annualised)", "ratio"),
    "calmar": ("Calmar ratio", "ratio"),
    "active_ir": ("active IR vs buy & hold (net)", "ratio"),
    "alpha": ("alpha (annualised log return)", "pct"),
    "alpha_t": ("alpha t-statistic (Newey-West)", "ratio"),
    "beta": ("beta to buy & hold", "plain3"),
    "total_log_return": ("total log return", "log"),
    "final_equity": ("final equity (start 1)", "plain3"),
    "max_drawdown": ("max drawdown", "pct"),
    "max_drawdown_duration": ("max drawdown duration (bars)", "count"),
    "hit_rate": ("hit rate (bars with a position)", "pct"),
    "turnover": ("turnover (mean |position change| per bar)", "plain4"),
    "holding_period": ("holding period (bars)", "plain1"),
    "long_share": ("share of bars long", "pct"),
    "short_share": ("share of bars short", "pct"),
    "flat_share": ("share of bars flat", "pct"),
    "mean_abs_position": ("mean |position|", "plain"),
    "psr": ("probabilistic Sharpe ratio (vs 0)", "plain3"),
    "dsr": ("deflated Sharpe ratio", "plain3"),
    "n_trials": ("trials chosen among", "count"),
    "n_steps": ("bars evaluated", "count"),
}


def when(stamp) -> str:
    """A timestamp as the tables show it: the date, with the time where it is not midnight."""
    if stamp is None or stamp == "":
        return ""
    try:
        t = pd.Timestamp(stamp)
    except (TypeError, ValueError):
        return str(stamp)
    return t.strftime("%Y-%m-%d" if t == t.normalize() else "%Y-%m-%d %H:%M")


def format_metric(value, kind: str) -> str:
    """One metric as the tables show it (``n/a`` where missing or NaN)."""
    number = _float(value)
    if number is None:
        return "n/a" if value is None or isinstance(value, int | float) else html.escape(str(value))
    match kind:
        case "ratio":
            return f"{number:+.2f}"
        case "pct":
            return f"{number:+.1%}" if number < 0 else f"{number:.1%}"
        case "log":
            return f"{number:+.4f}"
        case "count":
            return f"{number:,.0f}"
        case "plain1":
            return f"{number:.1f}"
        case "plain3":
            return f"{number:.3f}"
        case "plain4":
            return f"{number:.4f}"
        case _:
            return f"{number:.2f}" if abs(number) >= 0.01 or number == 0 else f"{number:.2e}"


def _cost_label(key: str) -> str:
    """``active_ir_2x_cost`` -> ``active IR at 2x cost``."""
    head, multiple = key.rsplit("_", 2)[0], key.rsplit("_", 2)[1]
    return f"{'active IR' if head == 'active_ir' else 'Sharpe'} at {multiple} the cost"


def metrics_frame(metrics: Mapping[str, Mapping]) -> pd.DataFrame:
    """The metrics as text, one row per metric, one column per strategy."""
    keys: list[str] = [k for k in METRIC_ROWS if any(k in m for m in metrics.values())]
    for m in metrics.values():
        keys += [k for k in m if k not in keys and not isinstance(m[k], dict | list)]
    rows = {}
    for key in keys:
        if key in METRIC_ROWS:
            label, kind = METRIC_ROWS[key]
        elif key.endswith("x_cost"):
            label, kind = _cost_label(key), "ratio"
        else:
            label, kind = key.replace("_", " "), "plain"
        rows[label] = [format_metric(m.get(key), kind) for m in metrics.values()]
    return pd.DataFrame.from_dict(rows, orient="index", columns=[LABELS.get(n, n) for n in metrics])


def _table_html(frame: pd.DataFrame, css: str, index: bool = True, header: bool = True) -> str:
    return frame.to_html(
        classes=css, border=0, index=index, header=header, escape=True, na_rep="", index_names=False
    )


def monthly_table_html(table: pd.DataFrame) -> str:
    """The monthly returns as an HTML table, gains and losses coloured by class."""

    def cell(value: float) -> str:
        if not np.isfinite(value):
            return ""
        if round(value, 1) == 0:  # no "-0.0"
            return '<span class="">0.0</span>'
        css = "gain" if value > 0 else "loss"
        return f'<span class="{css}">{value:+.1f}</span>'

    shown = table.apply(lambda col: col.map(cell))
    return shown.to_html(classes="monthly", border=0, escape=False, na_rep="")


def folds_frame(view: ReportView, frame: pd.DataFrame) -> pd.DataFrame | None:
    """Each test fold's dates and key metrics (None for a report of one fold)."""
    if len(view.folds) < 2:
        return None
    spans = {fold: (a, b) for fold, a, b in fold_spans(frame)}
    signs = one_sign_by_fold(frame)
    rows = []
    for f in view.folds:
        m, bh = f["metrics"].get("policy", {}), f["metrics"].get("buy_and_hold", {})
        first, last = f["first_timestamp"], f["last_timestamp"]
        if first is None and _int(f["fold"]) in spans:
            first, last = spans[_int(f["fold"])]
        sign = signs.get(_int(f["fold"]) if f["fold"] is not None else -1)
        rows.append(
            {
                "fold": f["fold"],
                "first bar": when(first),
                "last bar": when(last),
                "Sharpe": format_metric(m.get("sharpe"), "ratio"),
                "buy & hold Sharpe": format_metric(bh.get("sharpe"), "ratio"),
                "active IR": format_metric(m.get("active_ir"), "ratio"),
                "alpha t": format_metric(m.get("alpha_t"), "ratio"),
                "total log return": format_metric(m.get("total_log_return"), "log"),
                "one sign": {1.0: "long", -1.0: "short", 0.0: "flat"}.get(sign, "no")
                if sign is not None
                else "no",
            }
        )
    return pd.DataFrame(rows)


def provenance_rows(view: ReportView, frame: pd.DataFrame, periods_per_year: float) -> list:
    """``(label, text)`` pairs of the provenance block."""
    p = view.provenance
    sha = p.get("data_sha256")
    if isinstance(sha, dict):
        sha = ", ".join(f"{k}: {str(v)[:12]}" for k, v in sha.items())
    elif sha:
        sha = str(sha)[:12]
    data = p.get("data")
    data = ", ".join(map(str, data)) if isinstance(data, list) else data
    first = when(p.get("first_timestamp") or frame["timestamp"].min())
    last = when(p.get("last_timestamp") or frame["timestamp"].max())
    bars = p.get("bars")
    bars = ", ".join(f"{k}: {v}" for k, v in bars.items()) if isinstance(bars, dict) else bars
    interval = _float(p.get("interval_minutes"))
    ppy_note = "" if _float(p.get("periods_per_year")) else " (from the timestamps)"
    cost = _float(p.get("cost_bps"))
    commit = p.get("git_commit")
    rows = [
        ("command", view.command),
        ("data", data if data else "synthetic market"),
        ("data sha256", sha or "n/a"),
        ("bars evaluated", f"{len(frame):,} from {first} to {last}"),
        ("bars in the file", bars if bars is not None else "n/a"),
        ("interval", f"{interval:g} minutes" if interval else "n/a"),
        ("periods per year", f"{periods_per_year:,.1f}{ppy_note}"),
        ("cost", f"{cost:g} bps per unit of position change" if cost is not None else "n/a"),
        ("config", p.get("config") or "n/a"),
        ("config sha256", str(p.get("config_sha256"))[:12] if p.get("config_sha256") else "n/a"),
        ("marl-jax version", p.get("version") or "n/a"),
        ("git commit", _commit_cell(commit, p.get("git_dirty"))),
        ("report created", p.get("created") or "n/a"),
    ]
    rows += [(k.replace("_", " "), v) for k, v in view.extra.items()]
    return rows


# ---------------------------------------------------------------------------------------------
# The figure


def _thin(n: int) -> np.ndarray:
    """The rows a chart shows: every one up to :data:`MAX_POINTS`, else evenly thinned (the
    last row always)."""
    if n <= MAX_POINTS:
        return np.arange(n)
    step = math.ceil(n / MAX_POINTS)
    return np.unique(np.r_[np.arange(0, n, step), n - 1])


def _date_text(stamps: pd.Series) -> list[str]:
    """Timestamps as short ISO text (dates alone where every bar is at midnight)."""
    daily = bool((stamps.dt.normalize() == stamps).all())
    return list(stamps.dt.strftime("%Y-%m-%d" if daily else "%Y-%m-%d %H:%M"))


LOG_STEPS = (
    (1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2, 2.5, 3, 4, 5, 6, 7, 8, 9),
    (1, 1.2, 1.5, 2, 3, 4, 5, 7),
    (1, 1.5, 2, 3, 5, 7),
    (1, 2, 5),
    (1,),
)


def log_ticks(low: float, high: float) -> list[float]:
    """Round equity levels for a log axis from ``low`` to ``high``: the finest of
    :data:`LOG_STEPS` a decade that puts at most 9 in the range; [] (plotly's own ticks) where
    fewer than two fall in it."""
    low, high = max(low, 1e-9), max(high, low)
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    inside: list[float] = []
    for steps in LOG_STEPS:
        inside = [round(m * 10.0**k, 12) for k in decades for m in steps]
        inside = [t for t in inside if low <= t <= high]
        if len(inside) <= 9:
            break
    return inside if len(inside) >= 2 else []


def duration(years: float) -> str:
    """A span of time in words: days, months or years."""
    days = years * 365.25
    if days < 60:
        return f"about {days:.0f} days" if days >= 2 else f"about {days * 24:.0f} hours"
    return f"about {years * 12:.0f} months" if years < 2 else f"about {years:.1f} years"


def _colour(name: str, index: int) -> str:
    return COLOURS.get(name, SPARE_COLOURS[index % len(SPARE_COLOURS)])


def build_figure(frame: pd.DataFrame, periods_per_year: float, title: str):
    """The tearsheet's plotly figure over one instrument's rows ``frame``: equity (log scale),
    drawdown, rolling Sharpe, rolling active IR and the position, folds shaded."""
    from plotly.subplots import make_subplots

    names = strategies(frame)
    n = len(frame)
    window = rolling_window(periods_per_year, n)
    span = f"{window} bars, {duration(window / periods_per_year)}"
    fig = make_subplots(
        rows=5,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.035,
        row_heights=[0.36, 0.16, 0.16, 0.16, 0.16],
        subplot_titles=(
            "equity (net of costs, start 1, log scale)",
            "drawdown of the equity from its peak",
            f"rolling Sharpe ratio (annualised, window {span})",
            f"rolling active IR vs buy & hold (annualised, window {span})",
            "the policy's position",
        ),
    )
    rows = _thin(n)
    x = np.asarray(_date_text(frame["timestamp"].iloc[rows]))
    returns = {name: frame[name].fillna(0.0).astype(np.float64) for name in names}
    bench = returns.get("buy_and_hold")
    levels = [np.exp(returns[name].cumsum()) for name in names]
    ticks = log_ticks(
        min(min(e.min() for e in levels), 1.0), max(max(e.max() for e in levels), 1.0)
    )
    for i, name in enumerate(names):
        style = {
            "color": _colour(name, i),
            "width": 2.4 if name == "policy" else 1.3,
            "dash": "dash" if name == "oracle" else "solid",
        }
        common = {"legendgroup": name, "name": LABELS.get(name, name), "line": style}
        equity = levels[i].to_numpy(np.float32)[rows]
        fig.add_scatter(
            x=x, y=equity, mode="lines", row=1, col=1, hovertemplate="%{y:.3f}", **common
        )
        if name in ("policy", "buy_and_hold"):
            dd = drawdown(returns[name]).to_numpy(np.float32)[rows] * 100.0
            fig.add_scatter(
                x=x, y=dd, mode="lines", row=2, col=1, showlegend=False,
                hovertemplate="%{y:.1f}%", **common,
            )  # fmt: skip
            sharpe = rolling_sharpe(returns[name], window, periods_per_year)
            sharpe = sharpe.to_numpy(np.float32)[rows]
            fig.add_scatter(
                x=x, y=sharpe, mode="lines", row=3, col=1, showlegend=False,
                hovertemplate="%{y:.2f}", **common,
            )  # fmt: skip
        if bench is not None and name in ("policy", "oracle"):
            ir = rolling_active_ir(returns[name], bench, window, periods_per_year)
            fig.add_scatter(
                x=x, y=ir.to_numpy(np.float32)[rows], mode="lines", row=4, col=1, showlegend=False,
                hovertemplate="%{y:.2f}", **common,
            )  # fmt: skip
    position = frame["position"].to_numpy(np.float32)[rows]
    fig.add_scatter(
        x=x, y=position, mode="lines", line={"color": COLOURS["policy"], "width": 1.2,
        "shape": "hv"}, fill="tozeroy", fillcolor="rgba(31,78,156,0.15)", row=5, col=1,
        showlegend=False, name="position", legendgroup="policy", hovertemplate="%{y:.2f}",
    )  # fmt: skip
    fig.update_annotations(font_size=13)  # the panels' titles
    _shade_folds(fig, frame)
    for row in (2, 3, 4):
        fig.add_hline(y=0, line={"color": "#888", "width": 0.8}, row=row, col=1)
    fig.update_yaxes(type="log", title_text="equity", row=1, col=1)
    if ticks:
        fig.update_yaxes(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks], row=1, col=1)
    fig.update_yaxes(title_text="%", ticksuffix="%", row=2, col=1)
    fig.update_yaxes(title_text="Sharpe", row=3, col=1)
    fig.update_yaxes(title_text="IR", row=4, col=1)
    fig.update_yaxes(title_text="position", row=5, col=1)
    reach = np.nanmax(np.abs(position), initial=0.0)
    if reach <= 1.0:  # the whole range of positions, so a constant one reads as such
        fig.update_yaxes(range=[-1.08, 1.08], row=5, col=1)
    fig.update_xaxes(title_text="date", row=5, col=1)
    fig.update_xaxes(showgrid=True, gridcolor="#eee")
    fig.update_yaxes(showgrid=True, gridcolor="#eee", zeroline=False)
    fig.update_layout(
        title={"text": title, "x": 0.01},
        height=1150,
        template="plotly_white",
        hovermode="x unified",
        margin={"l": 70, "r": 20, "t": 80, "b": 50},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.015, "x": 0.0},
    )
    return fig


def _shade_folds(fig, frame: pd.DataFrame) -> None:
    """Every other test fold shaded over all the panels, each fold named at the top, with a
    line at each boundary (nothing for a single fold)."""
    spans = fold_spans(frame)
    if len(spans) < 2:
        return
    for i, (fold, first, last) in enumerate(spans):
        if i % 2 == 0:
            fig.add_vrect(
                x0=first, x1=last, fillcolor="#f2e6c9", opacity=0.35, line_width=0,
                layer="below", row="all", col=1,
            )  # fmt: skip
        if i > 0:
            fig.add_vline(
                x=first, line={"color": "#a08040", "width": 1, "dash": "dot"}, row="all", col=1
            )
        fig.add_annotation(
            x=first + (last - first) / 2, y=1.0, xref="x", yref="y domain", text=f"fold {fold}",
            showarrow=False, yanchor="top", font={"size": 11, "color": "#806020"},
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The page

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
       color: #222; margin: 0 auto; padding: 16px 24px 48px; max-width: 1280px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.verdict { font-size: 18px; padding: 10px 14px; background: #eef3fb;
           border-left: 5px solid #1f4e9c; margin: 12px 0; }
.note { color: #666; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 10px; text-align: right; border-bottom: 1px solid #eee; }
th { background: #f6f6f6; }
tbody th { text-align: left; font-weight: normal; }
table.provenance td, table.provenance th { text-align: left; }
table.provenance td { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; }
.gain { color: #17803d; } .loss { color: #b3261e; }
#render-status { color: #b3261e; }
"""

# Installed before plotly.js: records script errors and console.error calls.
ERROR_HOOK = """
window.__tearsheetErrors = [];
window.addEventListener("error", function (e) {
  window.__tearsheetErrors.push(String(e.message || e.type));
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__tearsheetErrors.push(Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
})();
"""

# After load: waits (up to 10 s) for every plotly div to hold its SVG, then writes the count
# and any error into #render-status, shown only when something failed.
RENDER_CHECK = """
window.addEventListener("load", function () {
  var started = Date.now();
  function check() {
    var expected = document.querySelectorAll("div.plotly-graph-div").length;
    var drawn = Array.prototype.filter.call(
      document.querySelectorAll("div.plotly-graph-div"),
      function (d) { return d.querySelector("svg.main-svg") !== null; }).length;
    if (drawn < expected && Date.now() - started < 10000) { setTimeout(check, 100); return; }
    var status = document.getElementById("render-status");
    var errors = window.__tearsheetErrors;
    status.setAttribute("data-expected", expected);
    status.setAttribute("data-rendered", drawn);
    status.setAttribute("data-errors", JSON.stringify(errors));
    status.setAttribute("data-done", "1");
    if (drawn < expected || errors.length) {
      status.hidden = false;
      status.textContent = "charts rendered: " + drawn + " of " + expected +
        (errors.length ? "; errors: " + errors.join("; ") : "");
    }
  }
  check();
});
"""


def _section(title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<h2>{html.escape(title)}</h2>\n{note_html}\n{body}\n"


def render_tearsheet(view: ReportView, returns: pd.DataFrame) -> str:
    """The tearsheet page (HTML text) of a report and its per-bar returns."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    instruments = list(dict.fromkeys(returns["instrument"].astype(str)))
    frame = returns[returns["instrument"].astype(str) == instruments[0]].reset_index(drop=True)
    ppy = _float(view.provenance.get("periods_per_year")) or infer_periods_per_year(
        frame["timestamp"]
    )
    data = view.provenance.get("data")
    name = instruments[0] or (Path(str(data)).name if isinstance(data, str) else "synthetic")
    title = f"{name}: the policy against the baselines ({view.command}, {len(frame):,} bars)"
    fig = build_figure(frame, ppy, title)
    chart = pio.to_html(
        fig,
        include_plotlyjs=False,
        full_html=False,
        div_id="tearsheet-chart",
        config={"displaylogo": False, "responsive": True},
    )
    chart_note = "Net log returns compounded; hover for values, drag to zoom, click a name to "
    chart_note += "hide it. Shaded bands and dotted lines mark the test folds."
    if len(instruments) > 1:
        chart_note += (
            f" The charts and monthly table show {instruments[0]}, the first of "
            f"{len(instruments)} instruments ({', '.join(instruments)}); the metrics pool them."
        )
    if len(frame) > MAX_POINTS:
        chart_note += f" Lines thinned to about {MAX_POINTS:,} points for display."
    monthly = monthly_returns(frame["policy"].fillna(0.0), frame["timestamp"])
    provenance = pd.DataFrame(provenance_rows(view, returns, ppy)).set_index(0)
    folds = folds_frame(view, returns)
    sections = [
        _section("Provenance", _table_html(provenance, "provenance", header=False)),
        _section("Charts", chart, chart_note),
        _section(
            "Monthly returns of the policy (%)",
            monthly_table_html(monthly),
            "Net log returns compounded within each month, in percent; Year compounds the year.",
        ),
        _section(
            "Metrics: the policy and the baselines",
            _table_html(metrics_frame(view.metrics), "metrics"),
            "Over the test bars (walk-forward: the test folds pooled). Active measures are "
            "against buy & hold.",
        ),
    ]
    if folds is not None:
        sections.append(
            _section(
                "Test folds",
                _table_html(folds, "folds", index=False),
                "One sign: the position never changes sign in the fold (no timing there).",
            )
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{CSS}</style>
<script>{ERROR_HOOK}</script>
<script type="text/javascript">{get_plotlyjs()}</script>
</head>
<body>
<h1>marl-jax tearsheet: {html.escape(name)}</h1>
<p class="verdict" id="verdict">{html.escape(verdict(view, returns), quote=False)}</p>
<p id="render-status" hidden></p>
{"".join(sections)}
<script>{RENDER_CHECK}</script>
</body>
</html>
"""


def write_tearsheet(run_dir: Path) -> Path:
    """Writes ``run_dir/report.html`` (atomically) from ``run_dir``'s ``report.json`` and
    ``returns.csv``; returns its path. A :class:`TearsheetError` says what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TearsheetError(f"{run_dir}: no such folder; give a run's output folder")
    view = read_report(run_dir / REPORT_JSON)
    returns = read_returns(run_dir / view.returns_csv)
    return atomic_write_text(run_dir / REPORT_HTML, render_tearsheet(view, returns))


def _commit_cell(commit: str | None, dirty: bool | None) -> str:
    """The provenance row's commit, marked where the checkout had uncommitted changes."""
    if not commit:
        return "n/a"
    return str(commit)[:12] + (" (with uncommitted changes)" if dirty else "")
