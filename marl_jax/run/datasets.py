"""The public bar files the benchmarks use, fetched at run time (never committed): each lies
inside a PyPI distribution (gym-anytrading's and backtesting.py's sample data), which
``pip download --no-deps`` puts in a cache folder; the file is extracted and converted to the
bar CSV that :func:`marl_jax.env.data.load_bars` reads (``timestamp, open, high, low, close,
volume``). ``python -m marl_jax.data fetch NAME --out FILE`` (or ``marl-jax data``) is the
command line; ``benchmarks/learning.py`` and ``benchmarks/planted.py`` call :func:`fetch`.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pandas as pd

from marl_jax.errors import MarlJaxError

__all__ = [
    "DEFAULT_CACHE",
    "FORMATS",
    "SOURCES",
    "DatasetError",
    "Source",
    "convert_bars",
    "fetch",
]

DEFAULT_CACHE = "~/.cache/marl-jax/bench-data"


class DatasetError(MarlJaxError):
    """A public bar file cannot be fetched or converted; ``str(err)`` says what to do."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A bar file inside a PyPI distribution and how to read it."""

    package: str
    version: str
    member: str  # the file's name inside the archive (any folder)
    fmt: str  # a key of FORMATS
    interval_minutes: int


SOURCES: dict[str, Source] = {
    "gym_eurusd_1h": Source("gym-anytrading", "2.0.0", "FOREX_EURUSD_1H_ASK.csv", "gym_forex", 60),
    "gym_googl_1d": Source("gym-anytrading", "2.0.0", "STOCKS_GOOGL.csv", "gym_stocks", 1440),
    "bt_eurusd_1h": Source("backtesting", "0.6.6", "EURUSD.csv", "backtesting", 60),
    "bt_goog_1d": Source("backtesting", "0.6.6", "GOOG.csv", "backtesting", 1440),
}

# (time column, its strftime format). gym-anytrading's forex file is day-first
# ("01.01.2017 22:00:00.000"), its stock file ISO dates with an extra "Adj Close" column (not
# used: the bars are the traded prices); backtesting's files keep the time in an unnamed index
# column, ISO dates or date-times. All have Open, High, Low, Close, Volume.
FORMATS: dict[str, tuple[str | None, str]] = {
    "gym_forex": ("Time", "%d.%m.%Y %H:%M:%S.%f"),
    "gym_stocks": ("Date", "%Y-%m-%d"),
    "backtesting": (None, "ISO8601"),  # None: the first column
}
_OHLCV = ("Open", "High", "Low", "Close", "Volume")


def convert_bars(src: Path, dst: Path, fmt: str, interval_minutes: int = 30) -> int:
    """Writes ``src`` (a file in source format ``fmt``) to ``dst`` as the bar CSV that
    ``load_bars`` reads, atomically, and checks that it loads with bars ``interval_minutes``
    apart; returns the number of bars."""
    from marl_jax.env.data import load_bars
    from marl_jax.files import atomic_write_text

    time_col, time_fmt = FORMATS[fmt]
    frame = pd.read_csv(src)
    time_col = frame.columns[0] if time_col is None else time_col
    missing = [c for c in (time_col, *_OHLCV) if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{src}: header: missing column(s) {', '.join(map(str, missing))} of the {fmt} "
            f"format (found {', '.join(map(str, frame.columns))})"
        )
    times = pd.to_datetime(frame[time_col], format=time_fmt, errors="coerce")
    if times.isna().any():
        row = int(times.isna().to_numpy().argmax()) + 1
        raise DatasetError(
            f"{src}: row {row}: time {frame[time_col].iloc[row - 1]!r} does not match the "
            f"{fmt} format {time_fmt!r}"
        )
    out = pd.DataFrame({"timestamp": times.dt.strftime("%Y-%m-%d %H:%M:%S")})
    for col in _OHLCV:
        out[col.lower()] = frame[col].astype("float64")
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dst, out.to_csv(index=False, float_format="%.10g"))
    bars = load_bars(dst)
    if len(bars) > 1 and abs(bars.interval_minutes - interval_minutes) > 1e-6:
        raise DatasetError(
            f"{dst}: bars are {bars.interval_minutes:g} minutes apart, not the "
            f"{interval_minutes:g} of the {fmt} source; the source changed"
        )
    return len(bars)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _archive(dist: Path, source: Source) -> Path | None:
    prefix = _norm(f"{source.package}-{source.version}")
    found = sorted(p for p in dist.glob("*") if _norm(p.name).startswith(prefix))
    return found[0] if found else None


def _extract(archive: Path, member: str) -> bytes:
    """The bytes of the archive entry whose name ends with ``/member``."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.endswith("/" + member)]
            if names:
                return z.read(sorted(names, key=len)[0])
    else:
        with tarfile.open(archive) as t:
            names = [m for m in t.getmembers() if m.isfile() and m.name.endswith("/" + member)]
            if names:
                return t.extractfile(sorted(names, key=lambda m: len(m.name))[0]).read()
    raise DatasetError(f"{archive}: holds no file {member}; delete it and rerun to download")


def fetch(name: str, cache: Path) -> Path:
    """The converted bar file of ``SOURCES[name]`` in ``cache``, downloaded and converted on
    first use."""
    source = SOURCES[name]
    converted = cache / f"{name}.csv"
    if converted.is_file():
        return converted
    dist = cache / "dist"
    archive = _archive(dist, source)
    if archive is None:
        spec = f"{source.package}=={source.version}"
        print(f"downloading {spec} into {dist}", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(dist)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        archive = _archive(dist, source)
        if done.returncode != 0 or archive is None:
            why = (done.stderr.strip().splitlines() or ["no archive"])[-1]
            raise DatasetError(f"pip download {spec} failed: {why}")
    raw = cache / "raw" / f"{name}_{source.member}"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(_extract(archive, source.member))
    n = convert_bars(raw, converted, source.fmt, source.interval_minutes)
    print(f"{name}: {n} bars from {source.package} {source.version} {source.member}", flush=True)
    return converted
