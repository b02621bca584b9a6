"""Acceptance 2 (causality) and the features' shapes, ranges and normalisation."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marl_jax.env.data import Bars, load_bars, synthetic_bars
from marl_jax.env.features import (
    AGENT_FEATURES,
    FEATURE_NAMES,
    FEATURE_WARMUP,
    WARMUP_BARS,
    FeatureNorm,
    compute_features,
    valid_mask,
)

T = 700
BARS = synthetic_bars(T, seed=11)
FEATS = compute_features(BARS)


def _real_shaped(tmp_path_factory) -> Bars:
    """Bars as a real file gives them: written to CSV with rounded prices (ties, flat bars,
    repeated closes), zero-volume bars and a long flat stretch, then loaded back."""
    rng = np.random.default_rng(5)
    n = 600
    close = np.round(50 * np.exp(np.cumsum(rng.standard_t(3, n) * 0.003)), 2)
    close[200:260] = close[199]  # a market that stops moving
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) + np.round(np.abs(rng.normal(0, 0.05, n)), 2)
    low = np.minimum(open_, close) - np.round(np.abs(rng.normal(0, 0.05, n)), 2)
    high[200:260], low[200:260] = close[199], close[199]
    volume = np.where(rng.random(n) < 0.1, 0, rng.integers(1, 500, n)).astype(float)
    volume[200:260] = 0
    import pandas as pd

    df = pd.DataFrame(
        {
            "Date": pd.date_range("2022-06-01", periods=n, freq="30min").strftime(
                "%d.%m.%Y %H:%M:%S.000"
            ),
            "Open": open_,
            "High": high,
            "Low": low,
            "Close": close,
            "Adj Close": close,
            "Volume": volume,
        }
    )
    path = tmp_path_factory.mktemp("real") / "real.csv"
    df.to_csv(path, index=False)
    return load_bars(path)


@pytest.fixture(scope="module")
def real_bars(tmp_path_factory):
    return _real_shaped(tmp_path_factory)


def test_shape_dtype_names_and_agent_slices():
    assert FEATS.shape == (T, 13) and FEATS.dtype == np.float32
    assert FEATURE_NAMES[:4] == ("mlmi_value", "mlmi_signal", "momentum_20", "momentum_50")
    assert FEATURE_NAMES[-3:] == ("mmd_score", "volatility_30", "volume_profile_skew")
    assert [b - a for a, b in AGENT_FEATURES.values()] == [4, 6, 3]


def test_warm_up_rows_are_marked_zero_and_never_nan(real_bars):
    for feats in (FEATS, compute_features(real_bars)):
        assert np.isfinite(feats).all()
        assert np.all(feats[:WARMUP_BARS] == 0)
        assert np.any(feats[WARMUP_BARS:] != 0, axis=0).all()  # every feature comes alive
    mask = valid_mask(T)
    assert not mask[:WARMUP_BARS].any() and mask[WARMUP_BARS:].all()
    assert WARMUP_BARS == max(FEATURE_WARMUP.values())
    assert compute_features(BARS[:5]).shape == (5, 13)


def _assert_prefix(bars: Bars, full: np.ndarray, t: int):
    np.testing.assert_array_equal(compute_features(bars[:t]), full[:t])


@settings(max_examples=15, deadline=None, database=None)
@given(t=st.integers(min_value=1, max_value=T))
def test_causality_random_prefixes(t):
    _assert_prefix(BARS, FEATS, t)


def test_causality_real_shaped_data(real_bars):
    full = compute_features(real_bars)
    rng = np.random.default_rng(0)
    for t in [1, 3, WARMUP_BARS, WARMUP_BARS + 1, 230, 261, len(real_bars) - 1]:
        _assert_prefix(real_bars, full, t)
    for t in rng.integers(1, len(real_bars), 6):
        _assert_prefix(real_bars, full, int(t))


def test_causality_detects_a_future_leak():
    """The prefix check is sharp: perturbing a later bar must leave earlier rows alone, and
    a feature that peeked one bar ahead would fail it."""
    t = 400
    changed = Bars(
        timestamp=BARS.timestamp,
        open=BARS.open,
        high=np.r_[BARS.high[:t], BARS.high[t:] * 1.05],
        low=BARS.low,
        close=np.r_[BARS.close[:t], BARS.close[t:] * 1.04],
        volume=BARS.volume,
    )
    feats = compute_features(changed)
    np.testing.assert_array_equal(feats[:t], FEATS[:t])
    assert np.any(feats[t] != FEATS[t])

    def leaky(bars):  # row t holds row t+1's features
        return np.roll(compute_features(bars), -1, axis=0)

    assert not np.array_equal(leaky(BARS[:t]), leaky(BARS)[:t])


def test_feature_definitions_on_known_values():
    f = dict(zip(FEATURE_NAMES, FEATS.T, strict=True))
    logc = np.log(BARS.close)
    t = np.arange(WARMUP_BARS, T)
    np.testing.assert_allclose(f["momentum_20"][t], logc[t] - logc[t - 20], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(f["momentum_50"][t], logc[t] - logc[t - 50], rtol=1e-5, atol=1e-7)
    r = np.diff(logc, prepend=logc[0])
    vol = np.array([r[i - 29 : i + 1].std(ddof=1) for i in t])
    np.testing.assert_allclose(f["volatility_30"][t], vol, rtol=1e-5)
    assert set(np.unique(f["mlmi_signal"])) <= {0.0, 1.0}
    np.testing.assert_array_equal(f["mlmi_signal"][t], (f["mlmi_value"][t] > 0).astype(np.float32))
    assert np.all(np.abs(f["mlmi_value"]) <= 1) and np.all(np.abs(f["nwrqk_pred"]) <= 1)
    assert np.all((f["lvn_strength"] >= 0) & (f["lvn_strength"] <= 1))
    assert np.all(np.abs(f["volume_imbalance"]) <= 1) and np.all(f["mmd_score"] >= 0)
    assert np.all(f["level_touches"] == np.round(f["level_touches"]))


def test_fvg_and_mmd_react_to_their_patterns():
    n = 300
    close = 100 * np.exp(np.cumsum(np.random.default_rng(2).normal(0, 1e-3, n)))
    close[250:] *= 1.05  # a gap up at bar 250
    close[280:] *= np.exp(np.random.default_rng(3).normal(0, 0.02, n - 280))  # volatility burst
    open_ = np.r_[close[0], close[:-1]]
    bars = Bars(
        timestamp=(np.arange(n) * 30).astype("datetime64[m]"),
        open=open_,
        high=np.maximum(open_, close) * 1.0002,
        low=np.minimum(open_, close) * 0.9998,
        close=close,
        volume=np.full(n, 100.0),
    )
    f = dict(zip(FEATURE_NAMES, compute_features(bars).T, strict=True))
    assert f["fvg_size"][251] > 0.03  # low of 251 far above the high of 249
    assert np.all(np.abs(f["fvg_size"][200:249]) < 5e-3)
    assert f["mmd_score"][290] > 5 * np.median(f["mmd_score"][WARMUP_BARS:240])


def test_normalisation_fits_on_train_rows_only_and_round_trips():
    stop = 500
    norm = FeatureNorm.fit(FEATS, 0, stop)
    changed = FEATS.copy()
    changed[stop:] *= 100  # the future must not move the statistics
    again = FeatureNorm.fit(changed, 0, stop)
    np.testing.assert_array_equal(norm.center, again.center)
    np.testing.assert_array_equal(norm.scale, again.scale)
    z = norm.apply(FEATS[WARMUP_BARS:stop])
    i = FEATURE_NAMES.index("momentum_20")
    assert abs(z[:, i].mean()) < 1e-5 and abs(z[:, i].std() - 1) < 1e-4
    j = FEATURE_NAMES.index("volatility_30")
    assert (z[:, j] > 0).all() and abs(z[:, j].mean() - 1) < 1e-4
    k = FEATURE_NAMES.index("mlmi_signal")
    np.testing.assert_array_equal(z[:, k], FEATS[WARMUP_BARS:stop, k])
    restored = FeatureNorm.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(restored.apply(FEATS), norm.apply(FEATS))
    assert norm.apply(FEATS * 1e6).max() <= norm.clip
    with pytest.raises(ValueError):
        FeatureNorm.from_dict({**norm.to_dict(), "feature_names": ["x"] * 13})
