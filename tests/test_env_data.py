"""Acceptance 1: every file shape loads; each validation rule rejects a broken file by row."""

import warnings

import numpy as np
import pandas as pd
import pytest
from calendars import fx_hourly, us_daily, us_hourly, write_bars

from marl_jax.env.data import (
    Bars,
    DataError,
    load_bars,
    periods_per_year_of,
    resample_bars,
    split_bars,
    split_bounds,
    synthetic_bars,
)
from marl_jax.env.market import bars_per_year, periods_per_year_at

N = 40


def _frame(n=N, start="2021-03-01 09:00", freq="30min", seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    open_ = np.r_[100.0, close[:-1]]
    high = np.maximum(open_, close) * 1.001
    low = np.minimum(open_, close) * 0.999
    volume = rng.integers(100, 1000, n).astype(float)
    ts = pd.date_range(start, periods=n, freq=freq)
    return pd.DataFrame(
        {"timestamp": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume}
    )


def _check(bars: Bars, ref: pd.DataFrame):
    assert len(bars) == len(ref)
    np.testing.assert_array_equal(bars.timestamp, ref["timestamp"].to_numpy("datetime64[ns]"))
    for col in ("open", "high", "low", "close", "volume"):
        np.testing.assert_allclose(getattr(bars, col), ref[col].to_numpy(), rtol=1e-12)
        assert getattr(bars, col).dtype == np.float64


def test_lower_case_csv(tmp_path):
    ref = _frame()
    ref.to_csv(tmp_path / "a.csv", index=False)
    _check(load_bars(tmp_path / "a.csv"), ref)


def test_capitalised_columns_with_adj_close_and_date_column(tmp_path):
    ref = _frame()
    df = ref.rename(columns=str.capitalize).rename(columns={"Timestamp": "Date"})
    df.insert(5, "Adj Close", df["Close"] * 0.5)  # must not be taken for close
    df.to_csv(tmp_path / "b.csv", index=False)
    _check(load_bars(tmp_path / "b.csv"), ref)


@pytest.mark.parametrize("name", ["Datetime", "Time", "timestamp", "DATE"])
def test_time_column_names(tmp_path, name):
    ref = _frame()
    ref.rename(columns={"timestamp": name}).to_csv(tmp_path / "c.csv", index=False)
    _check(load_bars(tmp_path / "c.csv"), ref)


def test_unnamed_index_column_holds_time(tmp_path):
    ref = _frame()
    ref.set_index("timestamp").rename_axis(None).to_csv(tmp_path / "d.csv")
    _check(load_bars(tmp_path / "d.csv"), ref)


def test_separate_date_and_time_columns(tmp_path):
    ref = _frame()
    df = ref.drop(columns="timestamp")
    df.insert(0, "Time", ref["timestamp"].dt.strftime("%H:%M"))
    df.insert(0, "Date", ref["timestamp"].dt.strftime("%Y-%m-%d"))
    df.to_csv(tmp_path / "e.csv", index=False)
    _check(load_bars(tmp_path / "e.csv"), ref)


def test_day_first_dates_with_milliseconds_are_inferred(tmp_path):
    # Days 01..12 first would also parse month-first; inference must pick day-first.
    ref = _frame(n=48 * 3, start="2021-02-01 00:00")
    df = ref.copy()
    df["timestamp"] = ref["timestamp"].dt.strftime("%d/%m/%Y %H:%M:%S.%f").str[:-3]
    df.to_csv(tmp_path / "f.csv", index=False)
    _check(load_bars(tmp_path / "f.csv"), ref)


def test_explicit_time_column_and_date_format(tmp_path):
    ref = _frame()
    df = ref.rename(columns={"timestamp": "when"})
    df["when"] = ref["timestamp"].dt.strftime("%m-%d-%Y %H.%M")
    df["date"] = "junk"  # a misleading column the option must override
    df.to_csv(tmp_path / "g.csv", index=False)
    bars = load_bars(tmp_path / "g.csv", time_column="when", date_format="%m-%d-%Y %H.%M")
    _check(bars, ref)


def test_float_volume_and_parquet(tmp_path):
    ref = _frame()
    ref["volume"] = ref["volume"] + 0.25
    ref.to_parquet(tmp_path / "h.parquet")
    _check(load_bars(tmp_path / "h.parquet"), ref)


def test_parquet_with_datetime_index(tmp_path):
    ref = _frame()
    ref.rename(columns=str.upper).set_index("TIMESTAMP").to_parquet(tmp_path / "i.parquet")
    _check(load_bars(tmp_path / "i.parquet"), ref)


# --------------------------------------------------------------------------------------------
# Validation: one rule broken at a known row each time.


def _break(df, i, rule):
    if rule == "increasing":
        df.loc[i, "timestamp"] = df.loc[i - 1, "timestamp"]
    elif rule == "nan":
        df.loc[i, "close"] = np.nan
    elif rule == "positive":
        df.loc[i, ["open", "low"]] = [-1.0, -2.0]
    elif rule == "high":
        df.loc[i, "high"] = df.loc[i, ["open", "close"]].max() * 0.99
    elif rule == "low":
        df.loc[i, "low"] = df.loc[i, ["open", "close"]].min() * 1.01
    elif rule == "volume":
        df.loc[i, "volume"] = -5.0
    return df


@pytest.mark.parametrize(
    "rule,words",
    [
        ("increasing", "strictly increasing"),
        ("nan", "NaN"),
        ("positive", "> 0"),
        ("high", "high must be >= max(open, close)"),
        ("low", "low must be <= min(open, close)"),
        ("volume", "volume must be >= 0"),
    ],
)
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_each_rule_rejects_with_file_and_row(tmp_path, rule, words, fmt):
    i = 17  # zero-based position in the frame -> data row 18
    df = _break(_frame(), i, rule)
    path = tmp_path / f"broken.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    with pytest.raises(DataError) as err:
        load_bars(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: row {i + 1}: ")
    assert words in msg
    assert err.value.row == i + 1
    assert isinstance(err.value, ValueError)


def test_unparseable_timestamp_and_missing_column(tmp_path):
    df = _frame()
    df["timestamp"] = df["timestamp"].astype(str)
    df.loc[5, "timestamp"] = "not a date"
    df.to_csv(tmp_path / "j.csv", index=False)
    with pytest.raises(DataError, match=r"j\.csv: row 6: timestamp cannot be parsed"):
        load_bars(tmp_path / "j.csv")
    _frame().drop(columns="low").to_csv(tmp_path / "k.csv", index=False)
    with pytest.raises(DataError, match=r"k\.csv: header: missing column\(s\) low"):
        load_bars(tmp_path / "k.csv")


# --------------------------------------------------------------------------------------------
# Intervals, slicing, splits, synthetic bars


def test_finer_bars_keep_their_interval_unless_resampling_is_asked(tmp_path):
    fine = _frame(n=60, start="2021-03-01 09:00", freq="5min")
    fine.to_csv(tmp_path / "fine.csv", index=False)
    as_they_are = load_bars(tmp_path / "fine.csv")
    assert len(as_they_are) == 60 and as_they_are.interval_minutes == 5
    said = []
    bars = load_bars(tmp_path / "fine.csv", resample_minutes=30, say=said.append)
    assert said == [
        f"{tmp_path / 'fine.csv'}: resampled 5-minute bars to 30-minute bars (60 to 10 bars)"
    ]
    assert len(bars) == 10
    assert bars.interval_minutes == 30
    groups = [fine.iloc[6 * k : 6 * k + 6] for k in range(10)]
    np.testing.assert_allclose(bars.open, [g["open"].iloc[0] for g in groups])
    np.testing.assert_allclose(bars.high, [g["high"].max() for g in groups])
    np.testing.assert_allclose(bars.low, [g["low"].min() for g in groups])
    np.testing.assert_allclose(bars.close, [g["close"].iloc[-1] for g in groups])
    np.testing.assert_allclose(bars.volume, [g["volume"].sum() for g in groups])
    assert str(bars.timestamp[1]) == "2021-03-01T09:30:00.000000000"


def test_resampling_to_the_bars_own_interval_changes_nothing_and_says_nothing(tmp_path):
    ref = _frame(freq="60min")
    ref.to_csv(tmp_path / "h.csv", index=False)
    said = []
    _check(load_bars(tmp_path / "h.csv", resample_minutes=60, say=said.append), ref)
    assert said == []


def test_resampling_to_a_finer_interval_is_a_one_line_error(tmp_path):
    _frame(freq="60min").to_csv(tmp_path / "h.csv", index=False)
    with pytest.raises(DataError) as err:
        load_bars(tmp_path / "h.csv", resample_minutes=15)
    assert str(err.value) == (
        f"{tmp_path / 'h.csv'}: interval: env.resample_minutes 15 is finer than the bars' "
        "60-minute interval; resampling only aggregates bars: set a multiple of 60 or null"
    )


def test_coarser_bars_load_as_they_are_with_no_warning(tmp_path):
    daily = _frame(freq="1D")
    daily.to_csv(tmp_path / "daily.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        bars = load_bars(tmp_path / "daily.csv")
    _check(bars, daily)
    assert bars.interval_minutes == 1440


def test_interval_is_configurable():
    bars = synthetic_bars(12, seed=1, interval_minutes=5)
    out = resample_bars(bars, 15)
    assert len(out) == 4 and out.interval_minutes == 15


def test_slicing_and_splits():
    bars = synthetic_bars(1000, seed=0)
    head = bars[:300]
    assert len(head) == 300 and np.array_equal(head.close, bars.close[:300])
    b = split_bounds(1000, (0.6, 0.2, 0.2))
    assert b == {"train": (0, 600), "val": (600, 800), "test": (800, 1000)}
    test = split_bars(bars, "test", (0.6, 0.2, 0.2))
    assert test.timestamp[0] > split_bars(bars, "validation", (0.6, 0.2, 0.2)).timestamp[-1]
    with pytest.raises(ValueError):
        split_bounds(10, (0.8, 0.3, 0.1))


def test_synthetic_bars_are_seeded_valid_and_regime_switching():
    a, regimes = synthetic_bars(5000, seed=3, return_regimes=True)
    b = synthetic_bars(5000, seed=3)
    c = synthetic_bars(5000, seed=4)
    assert np.array_equal(a.close, b.close) and not np.array_equal(a.close, c.close)
    from marl_jax.env.data import validate_bars

    validate_bars(a)  # raises on any broken rule
    assert set(np.unique(regimes)) == {0, 1, 2}
    assert (np.diff(regimes) != 0).mean() < 0.05  # persistent regimes
    hours = (a.timestamp.astype("datetime64[h]").astype(np.int64)) % 24
    day = a.volume[(hours >= 8) & (hours < 16)].mean()
    night = a.volume[(hours < 8) | (hours >= 16)].mean()
    assert day > 1.5 * night  # intraday-like volume


def test_to_frame_writes_what_load_bars_reads_back(tmp_path):
    bars = synthetic_bars(300, seed=3)
    frame = bars.to_frame()
    assert list(frame.columns) == ["timestamp", "open", "high", "low", "close", "volume"]
    frame.to_csv(tmp_path / "bars.csv", index=False)
    _check(load_bars(tmp_path / "bars.csv"), frame)


# --------------------------------------------------------------------------------------------
# Bars per year: the bars' own calendar


@pytest.mark.parametrize(
    ("stamps", "expected"),
    [
        (us_daily(300), 252),  # daily US equities
        (us_hourly(250), 7 * 252),  # their seven hourly bars a session
        (fx_hourly(250), 24 * 260),  # hourly FX, 24 hours on weekdays
    ],
    ids=["us-daily", "us-hourly", "fx-hourly"],
)
def test_bars_per_year_come_from_the_calendar_of_the_timestamps(tmp_path, stamps, expected):
    bars = load_bars(write_bars(tmp_path / "bars.csv", stamps))
    assert periods_per_year_of(bars.timestamp) == pytest.approx(expected, rel=0.03)
    # Measured on the train split, which every split and fold then shares.
    train = bars[: split_bounds(len(bars), (0.6, 0.2, 0.2))["train"][1]]
    per_year = bars_per_year(bars, (0.6, 0.2, 0.2))
    assert per_year == periods_per_year_of(train.timestamp)
    assert per_year == pytest.approx(expected, rel=0.03)


def test_bars_per_year_of_evenly_spaced_bars_and_of_too_few():
    bars = synthetic_bars(500, seed=0, interval_minutes=30)  # round the clock, every day
    assert periods_per_year_of(bars.timestamp) == pytest.approx(365.25 * 48)
    assert np.isnan(periods_per_year_of(bars.timestamp[:1]))
    # Too few train bars to measure: all of them; one bar: the nominal calendar.
    assert bars_per_year(bars[:3], (0.1, 0.0, 0.9)) == pytest.approx(365.25 * 48)
    assert bars_per_year(bars[:1]) == periods_per_year_at(30)
