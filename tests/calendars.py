"""Bar files on real markets' calendars, for the tests of the interval and bars per year.

US equities trade on weekdays less the exchange holidays (about 252 days a year); the federal
holidays from pandas stand in for them (within a day or two a year). Hourly US-equity bars are
the seven bars of a session, 09:30 to 15:30; hourly FX trades 24 hours on weekdays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.holiday import USFederalHolidayCalendar
from pandas.tseries.offsets import CustomBusinessDay

US_DAYS = CustomBusinessDay(calendar=USFederalHolidayCalendar())


def us_daily(n: int, start: str = "2019-01-02") -> pd.DatetimeIndex:
    """``n`` US trading days from ``start``."""
    return pd.date_range(start, periods=n, freq=US_DAYS)


def us_hourly(days: int, start: str = "2019-01-02") -> pd.DatetimeIndex:
    """Seven hourly bars (09:30 to 15:30) on each of ``days`` US trading days."""
    sessions = us_daily(days, start)
    hours = pd.to_timedelta(9.5 + np.arange(7), unit="h")
    return pd.DatetimeIndex([day + h for day in sessions for h in hours])


def fx_hourly(days: int, start: str = "2019-01-01") -> pd.DatetimeIndex:
    """24 hourly bars on each of ``days`` weekdays."""
    weekdays = pd.bdate_range(start, periods=days)
    hours = pd.to_timedelta(np.arange(24), unit="h")
    return pd.DatetimeIndex([day + h for day in weekdays for h in hours])


def bar_frame(stamps: pd.DatetimeIndex, seed: int = 0) -> pd.DataFrame:
    """Valid OHLCV bars (a random walk) stamped ``stamps``."""
    rng = np.random.default_rng(seed)
    n = len(stamps)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[100.0, close[:-1]]
    return pd.DataFrame(
        {
            "timestamp": stamps,
            "open": open_,
            "high": np.maximum(open_, close) * 1.002,
            "low": np.minimum(open_, close) * 0.998,
            "close": close,
            "volume": rng.integers(100, 1000, n).astype(float),
        }
    )


def write_bars(path: Path, stamps: pd.DatetimeIndex, seed: int = 0) -> Path:
    """A CSV bar file of :func:`bar_frame` at ``path``."""
    bar_frame(stamps, seed).to_csv(path, index=False)
    return path
