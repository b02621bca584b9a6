"""Bars: loading, validation, resampling, a synthetic market and time splits.

Public API
----------
``Bars``
    Frozen dataclass of NumPy arrays: ``timestamp`` (``datetime64[ns]``), ``open``, ``high``,
    ``low``, ``close`` and ``volume`` (all float64). ``len(bars)`` is the number of bars and
    ``bars[a:b]`` slices by bar index (``bars[:t]`` is the first ``t`` bars).
``load_bars(path, *, time_column=None, date_format=None, dayfirst=None,
resample_minutes=None, say=None) -> Bars``
    Reads a CSV or Parquet file of OHLCV bars and validates it; the bars keep the file's own
    interval unless ``resample_minutes`` asks for coarser ones (``say`` gets one line then).
``read_bar_table(path, *, time_column=None, date_format=None, dayfirst=None) -> BarTable``
    The file as read (every column), the names of its OHLCV columns and its validated bars, one
    per row, not resampled: what a tool that rewrites a bar file needs.
``validate_bars(bars, source="<bars>", row_offset=1) -> None``
    Applies the validation rules; raises :class:`DataError`.
``resample_bars(bars, interval_minutes, source="<bars>") -> Bars``
    Finer bars are aggregated into ``interval_minutes`` buckets (first open, max high, min low,
    last close, summed volume); bars at the interval are returned as they are; a finer
    interval than the bars' raises :class:`DataError`.
``periods_per_year_of(timestamps) -> float``
    Bars per year of the bars' own calendar: ``(n - 1)`` spacings over the elapsed years of
    the timestamps (about 252 for daily US equities, 1,760 for their hourly bars, 6,240 for
    24x5 hourly FX); nan for fewer than two bars.
``synthetic_bars(n, seed=0, *, interval_minutes=30, ...) -> Bars``
    A seeded regime-switching market (trending, mean-reverting, volatile regimes with
    persistence) with intraday-shaped volume; the embedded default data set.
``split_bounds(n, fractions=(0.7, 0.15, 0.15)) -> dict[str, tuple[int, int]]`` and
``split_bars(bars, split, fractions) -> Bars``
    Contiguous train / val / test splits by time (``"validation"`` is an alias of ``"val"``).

Errors
------
Every problem with a file raises :class:`DataError` (a ``ValueError``) whose message is one line
of the form ``"<file>: row <n>: <rule>"``. Rows are counted from 1 over the data rows, the header
excluded (for a CSV file, data row ``n`` is on line ``n + 1``). Nothing is returned when any
rule fails, so a CLI can print ``str(err)`` and exit non-zero.

Validation rules (checked on the rows as they are in the file, before any resampling):
timestamps parse and are strictly increasing; no NaN in open, high, low, close, volume;
prices > 0; ``high >= max(open, close)`` and ``low <= min(open, close)``; volume >= 0.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from marl_jax.errors import MarlJaxError

__all__ = [
    "Bars",
    "BarTable",
    "DataError",
    "DEFAULT_INTERVAL_MINUTES",
    "SPLITS",
    "load_bars",
    "read_bar_table",
    "validate_bars",
    "resample_bars",
    "periods_per_year_of",
    "synthetic_bars",
    "split_bounds",
    "split_bars",
    "canonical_split",
]

DEFAULT_INTERVAL_MINUTES = 30
# Mean length of a calendar year (Julian), in nanoseconds.
_YEAR_NS = 365.25 * 24 * 3600e9
SPLITS = ("train", "val", "test")
_PRICE_FIELDS = ("open", "high", "low", "close")
_FIELDS = (*_PRICE_FIELDS, "volume")

_ALIASES = {
    "open": ("open", "o", "open_price", "opening_price"),
    "high": ("high", "h", "high_price", "max"),
    "low": ("low", "l", "low_price", "min"),
    "close": ("close", "c", "close_price", "closing_price", "last", "price"),
    "volume": ("volume", "vol", "v", "volume_traded", "qty", "tick_volume", "tickvol"),
}
_TIME_NAMES = ("timestamp", "datetime", "date_time", "time_stamp", "dt", "time", "date")


class DataError(MarlJaxError, ValueError):
    """A bar file (or bar array) breaks a rule. ``str(err)`` is one line: file, row and rule
    (``row`` None: the header; a string: that place in words, e.g. ``"interval"``)."""

    def __init__(self, source: str, row: int | str | None, rule: str) -> None:
        self.source = str(source)
        self.row = row
        self.rule = rule
        where = "header" if row is None else row if isinstance(row, str) else f"row {row}"
        super().__init__(f"{self.source}: {where}: {rule}")


@dataclass(frozen=True)
class Bars:
    """OHLCV bars as NumPy arrays. Prices and volume are float64, timestamps datetime64[ns]."""

    timestamp: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __post_init__(self):
        n = len(self.timestamp)
        object.__setattr__(self, "timestamp", np.asarray(self.timestamp, dtype="datetime64[ns]"))
        for name in _FIELDS:
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (n,):
                raise ValueError(f"Bars.{name} has shape {arr.shape}, expected ({n},)")
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return len(self.timestamp)

    def __getitem__(self, index) -> Bars:
        if not isinstance(index, slice):
            raise TypeError("Bars can only be sliced by bar index, e.g. bars[:t]")
        return Bars(**{name: getattr(self, name)[index] for name in ("timestamp", *_FIELDS)})

    @property
    def interval_minutes(self) -> float:
        """Median spacing of the timestamps in minutes (nan for fewer than two bars)."""
        if len(self) < 2:
            return float("nan")
        step = np.median(np.diff(self.timestamp.astype(np.int64)))
        return float(step) / 60e9

    def to_frame(self) -> pd.DataFrame:
        """The bars as a DataFrame with the columns :func:`load_bars` reads back."""
        return pd.DataFrame({name: getattr(self, name) for name in ("timestamp", *_FIELDS)})


# --------------------------------------------------------------------------------------------
# Loading


def _norm_name(name) -> str:
    """A column name lower-cased, with runs of spaces and dashes as one underscore."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _read_frame(path: Path) -> tuple[pd.DataFrame, str | None]:
    """The file as a DataFrame (a datetime index becomes a column) and that column's name (None
    without one); raises DataError."""
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif any(s in (".csv", ".txt", ".tsv") for s in suffixes):
            frame = pd.read_csv(path, sep="\t" if ".tsv" in suffixes else ",")
            if frame.shape[1] == 1 and ";" in str(frame.columns[0]):
                frame = pd.read_csv(path, sep=";")
        else:
            rule = f"unsupported file type {path.suffix!r} (use .csv or .parquet)"
            raise DataError(path, None, rule)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except Exception as exc:  # parser errors from pandas / pyarrow
        msg = " ".join(str(exc).split())
        raise DataError(path, None, f"cannot be read: {msg}") from None
    if isinstance(frame.index, pd.DatetimeIndex):
        name = frame.index.name if frame.index.name is not None else "timestamp"
        return frame.reset_index(names=name), name
    return frame, None


def _find_column(columns: dict[str, str], names: Sequence[str]) -> str | None:
    """The file's name for the first of ``names`` present among the normalised ``columns``."""
    for name in names:
        if name in columns:
            return columns[name]
    return None


def _normalised_columns(frame: pd.DataFrame) -> dict[str, str]:
    """Normalised column name -> the file's column name (the first one wins on a clash)."""
    columns: dict[str, str] = {}
    for col in frame.columns:
        columns.setdefault(_norm_name(col), col)
    return columns


def _ohlcv_columns(columns: dict[str, str], source) -> dict[str, str | None]:
    """The file's column for each OHLCV field (volume may be None); raises on a missing price."""
    found = {field: _find_column(columns, _ALIASES[field]) for field in _FIELDS}
    missing = [f for f in _PRICE_FIELDS if found[f] is None]
    if missing:
        raise DataError(source, None, f"missing column(s) {', '.join(missing)}")
    return found


def _time_values(
    frame: pd.DataFrame, columns: dict[str, str], time_column: str | None, source
) -> pd.Series:
    """The raw time of each row, from the column chosen as :func:`load_bars` describes."""
    if time_column is not None:
        if time_column not in frame.columns:
            key = _norm_name(time_column)
            if key not in columns:
                raise DataError(source, None, f"time column {time_column!r} not found")
            time_column = columns[key]
        return frame[time_column]
    if "date" in columns and "time" in columns:
        return (
            frame[columns["date"]].astype(str).str.strip()
            + " "
            + frame[columns["time"]].astype(str).str.strip()
        )
    name = _find_column(columns, _TIME_NAMES)
    if name is None:
        unnamed = [c for c in frame.columns if str(c).startswith("Unnamed") or str(c) == ""]
        if unnamed:
            name = unnamed[0]
        elif _norm_name(frame.columns[0]) == "index":
            name = frame.columns[0]
    if name is None:
        raise DataError(source, None, "no time column found; pass time_column=")
    return frame[name]


def _parse_times(
    values: pd.Series, source, date_format: str | None, dayfirst: bool | None
) -> np.ndarray:
    """Parse a time column into int64 nanoseconds; unparseable entries become NaT (min int)."""
    if date_format is not None:
        parsed = pd.to_datetime(values, format=date_format, errors="coerce")
        return _to_ns(parsed)
    if pd.api.types.is_datetime64_any_dtype(values):
        return _to_ns(pd.to_datetime(values))
    if pd.api.types.is_numeric_dtype(values):
        return _parse_epoch(values)
    return _parse_time_strings(values, source, dayfirst)


def _parse_epoch(values: pd.Series) -> np.ndarray:
    """Epoch numbers to int64 nanoseconds, the unit (s, ms, us, ns) read from their magnitude."""
    numbers = values.astype(np.float64)
    finite = numbers[np.isfinite(numbers)]
    scale = np.abs(finite).max() if len(finite) else 0
    unit = "ns" if scale > 1e17 else "us" if scale > 1e14 else "ms" if scale > 1e11 else "s"
    return _to_ns(pd.to_datetime(numbers, unit=unit, errors="coerce"))


def _parse_time_strings(values: pd.Series, source, dayfirst: bool | None) -> np.ndarray:
    """Date strings to int64 nanoseconds, month-first or day-first as ``dayfirst`` or the data
    says."""
    strings = values.astype(str).str.strip()
    options = [dayfirst] if dayfirst is not None else [False, True]
    candidates = []
    for first in options:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                parsed = _to_ns(pd.to_datetime(strings, dayfirst=first, errors="coerce"))
            except (ValueError, TypeError):
                continue
        candidates.append(parsed)
    if not candidates:
        raise DataError(source, None, "time column cannot be parsed; pass date_format=")
    if len(candidates) == 1:
        return candidates[0]
    return min(candidates, key=_reading_score)


def _reading_score(ns: np.ndarray) -> tuple[int, bool, int]:
    """Rank of one reading of ambiguous dates, lowest best: most rows parsed, then strictly
    increasing, then the shorter span (a day-first file read month-first jumps by months)."""
    nat = np.iinfo(np.int64).min
    ok = ns != nat
    good = ns[ok]
    increasing = bool(np.all(np.diff(good) > 0)) if len(good) > 1 else True
    span = int(good[-1] - good[0]) if len(good) > 1 else 0
    return (-int(ok.sum()), not increasing, span)


def _to_ns(parsed) -> np.ndarray:
    """Parsed times as int64 nanoseconds, time-zone-aware ones converted to naive UTC."""
    series = pd.Series(parsed)
    if getattr(series.dt, "tz", None) is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    return series.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def _numeric_values(
    frame: pd.DataFrame, found: dict[str, str | None], source
) -> dict[str, np.ndarray]:
    """Each OHLCV field as float64 (a missing volume as zeros, with a warning to the caller of
    :func:`load_bars`); raises on the first entry that is not a number."""
    values = {}
    for field in _FIELDS:
        col = found[field]
        if col is None:
            warnings.warn(f"{source}: no volume column; volume set to 0", stacklevel=3)
            values[field] = np.zeros(len(frame))
            continue
        raw = frame[col]
        numeric = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(numeric) & raw.notna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad)) + 1
            raise DataError(source, row, f"{field} is not a number: {raw.iloc[row - 1]!r}")
        values[field] = numeric
    return values


def _check_parsed(ns: np.ndarray, times: pd.Series, source) -> None:
    """Raise for the first row whose timestamp did not parse."""
    nat = np.iinfo(np.int64).min
    if (ns == nat).any():
        row = int(np.argmax(ns == nat)) + 1
        raise DataError(source, row, f"timestamp cannot be parsed: {times.iloc[row - 1]!r}")


@dataclass(frozen=True)
class BarTable:
    """A bar file as read: ``frame`` (every column; a datetime index as the column ``index``
    names, else ``index`` is None), ``columns`` (each OHLCV field's column in ``frame``; volume
    may be None) and ``bars`` (validated, one per row in file order, not resampled)."""

    frame: pd.DataFrame
    columns: dict[str, str | None]
    bars: Bars
    index: str | None = None


def read_bar_table(
    path: str | Path,
    *,
    time_column: str | None = None,
    date_format: str | None = None,
    dayfirst: bool | None = None,
) -> BarTable:
    """Reads and validates a CSV or Parquet file of OHLCV bars as :func:`load_bars` does,
    keeping the file's table and column names (see :class:`BarTable`)."""
    path = Path(path)
    frame, index = _read_frame(path)
    if len(frame) == 0:
        raise DataError(path, None, "file holds no rows")
    columns = _normalised_columns(frame)
    found = _ohlcv_columns(columns, path)
    times = _time_values(frame, columns, time_column, path)
    ns = _parse_times(times, path, date_format, dayfirst)
    values = _numeric_values(frame, found, path)
    _check_parsed(ns, times, path)
    bars = Bars(timestamp=ns.astype("datetime64[ns]"), **values)
    validate_bars(bars, source=str(path))
    return BarTable(frame, found, bars, index)


def load_bars(
    path: str | Path,
    *,
    time_column: str | None = None,
    date_format: str | None = None,
    dayfirst: bool | None = None,
    resample_minutes: float | None = None,
    say: Callable[[str], None] | None = None,
) -> Bars:
    """Read and validate a CSV or Parquet file of OHLCV bars, at the file's own interval.

    Column names are matched case-insensitively (``Open``/``open``/``o`` ...); extra columns
    such as ``Adj Close`` are ignored. The time comes from ``time_column`` if given, else the
    first of ``timestamp``/``datetime``/``time``/``date`` present, else a separate ``Date`` plus
    ``Time`` pair, else an unnamed first column (a saved index). Day-first versus month-first
    dates are inferred from the data; pass ``dayfirst=`` or ``date_format=`` where that is
    ambiguous. A missing volume column loads as zeros with a warning.

    ``resample_minutes`` aggregates finer bars into buckets of that many minutes
    (:func:`resample_bars`; a finer interval than the bars' raises :class:`DataError`); when
    that changed the bars, ``say`` (if given) gets one line saying so.
    """
    path = Path(path)
    table = read_bar_table(
        path, time_column=time_column, date_format=date_format, dayfirst=dayfirst
    )
    bars = table.bars
    if resample_minutes is None:
        return bars
    resampled = resample_bars(bars, resample_minutes, source=str(path))
    if resampled is not bars and say is not None:
        say(
            f"{path}: resampled {bars.interval_minutes:g}-minute bars to "
            f"{float(resample_minutes):g}-minute bars ({len(bars)} to {len(resampled)} bars)"
        )
    return resampled


def periods_per_year_of(timestamps: np.ndarray) -> float:
    """Bars per year of the bars' own calendar: the ``n - 1`` spacings between ``n``
    timestamps over the years they span (a year of 365.25 days), so weekends, nights and
    holidays without bars count as they are; nan for fewer than two bars."""
    ts = np.asarray(timestamps, dtype="datetime64[ns]").astype(np.int64)
    if len(ts) < 2 or ts[-1] <= ts[0]:
        return float("nan")
    return float((len(ts) - 1) / ((ts[-1] - ts[0]) / _YEAR_NS))


# --------------------------------------------------------------------------------------------
# Validation and resampling


def validate_bars(bars: Bars, source: str = "<bars>", row_offset: int = 1) -> None:
    """Raise :class:`DataError` for the first row (counted from ``row_offset``) that breaks a
    rule; rules are checked in the order listed in the module docstring."""
    n = len(bars)
    ts = bars.timestamp.astype(np.int64)
    if n > 1:
        bad = np.diff(ts) <= 0
        if bad.any():
            i = int(np.argmax(bad)) + 1
            raise DataError(
                source,
                i + row_offset,
                f"timestamps must be strictly increasing ({bars.timestamp[i]} does not follow "
                f"{bars.timestamp[i - 1]})",
            )
    stacked = np.stack([getattr(bars, f) for f in _FIELDS], axis=1)
    nan_rows = np.isnan(stacked).any(axis=1)
    if nan_rows.any():
        i = int(np.argmax(nan_rows))
        field = _FIELDS[int(np.argmax(np.isnan(stacked[i])))]
        raise DataError(source, i + row_offset, f"{field} is NaN (no NaN allowed)")
    prices = stacked[:, :4]
    bad = (prices <= 0).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        field = _FIELDS[int(np.argmax(prices[i] <= 0))]
        raise DataError(source, i + row_offset, f"prices must be > 0 ({field} = {prices[i]})")
    top = np.maximum(bars.open, bars.close)
    bad = bars.high < top
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            source,
            i + row_offset,
            f"high must be >= max(open, close) (high {bars.high[i]} < {top[i]})",
        )
    bottom = np.minimum(bars.open, bars.close)
    bad = bars.low > bottom
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            source,
            i + row_offset,
            f"low must be <= min(open, close) (low {bars.low[i]} > {bottom[i]})",
        )
    bad = bars.volume < 0
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(source, i + row_offset, f"volume must be >= 0 ({bars.volume[i]})")


def resample_bars(
    bars: Bars, interval_minutes: float = DEFAULT_INTERVAL_MINUTES, *, source: str = "<bars>"
) -> Bars:
    """Aggregate finer bars into ``interval_minutes`` buckets aligned to the epoch (so 30-minute
    buckets start on the hour and half hour); a bucket is stamped with its start time. Bars at
    the interval are returned unchanged (the same object); a finer interval than the bars'
    raises :class:`DataError` (resampling only aggregates)."""
    minutes = float(interval_minutes)
    if not minutes > 0:
        raise DataError(source, "interval", f"cannot resample to {minutes:g} minutes; use > 0")
    if len(bars) < 2:
        return bars
    step = bars.interval_minutes
    if np.isclose(step, minutes):
        return bars
    if step > minutes:
        raise DataError(
            source,
            "interval",
            f"env.resample_minutes {minutes:g} is finer than the bars' {step:g}-minute "
            "interval; resampling only aggregates bars: set a multiple of "
            f"{step:g} or null",
        )
    width = int(round(minutes * 60e9))
    ts = bars.timestamp.astype(np.int64)
    bucket = ts // width
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(bars)] - 1
    return Bars(
        timestamp=(bucket[starts] * width).astype("datetime64[ns]"),
        open=bars.open[starts],
        high=np.maximum.reduceat(bars.high, starts),
        low=np.minimum.reduceat(bars.low, starts),
        close=bars.close[ends],
        volume=np.add.reduceat(bars.volume, starts),
    )


# --------------------------------------------------------------------------------------------
# Synthetic market

TREND, MEAN_REVERT, VOLATILE = 0, 1, 2


def synthetic_bars(
    n: int,
    seed: int = 0,
    *,
    interval_minutes: float = DEFAULT_INTERVAL_MINUTES,
    start: str = "2020-01-01",
    start_price: float = 100.0,
    persistence: float = 0.99,
    trend_drift: float = 1e-3,
    base_vol: float = 2.5e-3,
    volatile_mult: float = 2.5,
    reversion: float = 0.05,
    level_band: float = 0.25,
    return_regimes: bool = False,
) -> Bars | tuple[Bars, np.ndarray]:
    """A seeded regime-switching OHLCV series of ``n`` bars.

    A hidden Markov chain stays in its regime with probability ``persistence`` per bar (mean
    duration ``1 / (1 - persistence)`` bars) and otherwise jumps to one of the other two:

    - trending: log return ``±trend_drift + N(0, base_vol)``, the sign drawn on entry, except
      that once the log price has left the band ``±level_band`` around its start, a new trend
      heads back towards it (so the long-run drift is nil: holding a constant position earns
      nothing systematic, and the structure left to learn is the trends themselves);
    - mean-reverting: the log price is pulled towards its level on entry,
      ``-reversion * (x - anchor) + N(0, base_vol)``;
    - volatile: ``N(0, volatile_mult * base_vol)``.

    Trends persist long enough that a momentum rule (sign of the last 20-bar return) earns a
    positive Sharpe ratio while a random policy earns none. Volume follows a U-shaped intraday
    profile over the hour of day, rises in the volatile regime and with the bar's absolute
    return, and has lognormal noise. Highs and lows extend the open-close range by half-normal
    wicks, so every bar passes validation. With ``return_regimes=True`` the regime path is
    returned too, as ``(bars, regimes)``.
    """
    if n < 1:
        raise ValueError("synthetic_bars needs n >= 1")
    rng = np.random.default_rng(seed)
    regimes, returns = _regime_returns(
        rng,
        n,
        persistence=persistence,
        trend_drift=trend_drift,
        base_vol=base_vol,
        volatile_mult=volatile_mult,
        reversion=reversion,
        level_band=level_band,
    )
    open_, high, low, close = _ohlc(rng, returns, regimes, start_price, base_vol, volatile_mult)
    ts = _bar_times(n, start, interval_minutes)
    volume = _intraday_volume(rng, ts, regimes, returns)
    bars = Bars(ts.astype("datetime64[ns]"), open_, high, low, close, volume)
    return (bars, regimes) if return_regimes else bars


def _regime_returns(
    rng: np.random.Generator,
    n: int,
    *,
    persistence: float,
    trend_drift: float,
    base_vol: float,
    volatile_mult: float,
    reversion: float,
    level_band: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The hidden regime path (int8) and the per-bar log returns it generates."""
    jump = rng.random(n) > persistence
    pick = rng.integers(1, 3, size=n)
    direction = rng.choice([-1.0, 1.0], size=n)
    noise = rng.standard_normal(n) * base_vol

    regimes = np.empty(n, dtype=np.int8)
    returns = np.empty(n)
    regime = int(rng.integers(0, 3))
    sign = direction[0]
    x = 0.0
    anchor = 0.0
    for t in range(n):
        if jump[t]:
            regime = (regime + int(pick[t])) % 3
            sign = direction[t] if abs(x) <= level_band else -np.sign(x)
            anchor = x
        if regime == TREND:
            r = sign * trend_drift + noise[t]
        elif regime == MEAN_REVERT:
            r = -reversion * (x - anchor) + noise[t]
        else:
            r = volatile_mult * noise[t]
        regimes[t] = regime
        returns[t] = r
        x += r
    return regimes, returns


def _ohlc(
    rng: np.random.Generator,
    returns: np.ndarray,
    regimes: np.ndarray,
    start_price: float,
    base_vol: float,
    volatile_mult: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Open, high, low and close from the log returns, with half-normal wicks."""
    n = len(returns)
    close = start_price * np.exp(np.cumsum(returns))
    open_ = np.r_[start_price, close[:-1]] * np.exp(rng.standard_normal(n) * base_vol * 0.05)
    vol_scale = np.where(regimes == VOLATILE, volatile_mult, 1.0) * base_vol
    high = np.maximum(open_, close) * np.exp(np.abs(rng.standard_normal(n)) * 0.5 * vol_scale)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.standard_normal(n)) * 0.5 * vol_scale)
    return open_, high, low, close


def _bar_times(n: int, start: str, interval_minutes: float) -> np.ndarray:
    """``n`` evenly spaced bar times from ``start`` as int64 nanoseconds."""
    width = int(round(interval_minutes * 60e9))
    t0 = np.datetime64(pd.Timestamp(start).to_datetime64(), "ns").astype(np.int64)
    return t0 + np.arange(n, dtype=np.int64) * width


def _intraday_volume(
    rng: np.random.Generator, ts: np.ndarray, regimes: np.ndarray, returns: np.ndarray
) -> np.ndarray:
    """Whole-number volumes: a U-shaped intraday profile, raised by volatility, with noise."""
    n = len(ts)
    hour = (ts // 3_600_000_000_000) % 24 + ((ts // 60_000_000_000) % 60) / 60.0
    # U-shaped around a session from 08:00 to 16:00, quieter overnight.
    session = (hour >= 8) & (hour < 16)
    u_shape = 1.0 + 1.5 * ((hour - 12.0) / 4.0) ** 2
    profile = np.where(session, u_shape, 0.4)
    activity = 1.0 + 0.8 * (regimes == VOLATILE) + 50.0 * np.abs(returns)
    return np.round(1000.0 * profile * activity * rng.lognormal(0.0, 0.3, size=n))


# --------------------------------------------------------------------------------------------
# Splits


def canonical_split(split: str) -> str:
    """``"train"``, ``"val"`` or ``"test"`` (``"validation"`` and ``"valid"`` mean ``"val"``)."""
    name = {"validation": "val", "valid": "val", "eval": "val"}.get(split, split)
    if name not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return name


def split_bounds(
    n: int, fractions: Sequence[float] = (0.7, 0.15, 0.15)
) -> dict[str, tuple[int, int]]:
    """``{"train": (0, a), "val": (a, b), "test": (b, c)}``: contiguous bar-index ranges
    ``[start, stop)`` in time order. ``fractions`` are the train, val and test shares; they must
    be non-negative and sum to at most 1 (a remainder at the end is left unused)."""
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() > 1 + 1e-9:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to <= 1: {fr}")
    edges = np.floor(np.cumsum(np.r_[0.0, fr]) * n + 1e-9).astype(int)
    edges = np.minimum(edges, n)
    return {name: (int(edges[i]), int(edges[i + 1])) for i, name in enumerate(SPLITS)}


def split_bars(bars: Bars, split: str, fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> Bars:
    """The bars of one split (``"train"``, ``"val"``/``"validation"`` or ``"test"``)."""
    lo, hi = split_bounds(len(bars), fractions)[canonical_split(split)]
    return bars[lo:hi]
