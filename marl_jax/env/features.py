"""The 13 strategic features, strictly causal and vectorised (NumPy), plus their normalisation.

Public API
----------
``FEATURE_NAMES``
    The 13 names in the original's order; the agents read slices of it:
    ``AGENT_FEATURES = {name: feature_slice(name) for name in AGENT_NAMES}`` (start, stop).
``compute_features(bars) -> np.ndarray``
    ``(T, 13)`` float32. Row ``t`` depends on bars ``0..t`` only, so the features of ``bars[:t]``
    equal the first ``t`` rows of the features of ``bars``. Rows ``t < WARMUP_BARS``, where some
    window is not yet full, are warm-up rows: they hold 0.0 (never NaN) and are excluded from
    episodes (see ``valid_mask``). ``FEATURE_WARMUP[name]`` is each feature's first valid row.
``valid_mask(n) -> np.ndarray``
    Boolean ``(n,)``, False on warm-up rows.
``FeatureNorm``
    Frozen dataclass ``(feature_names, center, scale, clip)`` with ``fit(features, start, stop)``
    (statistics from rows ``[max(start, WARMUP_BARS), stop)``, i.e. the training split only),
    ``apply(features) -> float32``, ``to_dict()`` / ``from_dict(d)`` (plain JSON-able lists) so
    the statistics can be saved with a model and applied the same way at inference.
    ``apply`` computes ``clip((x - center) / scale, -clip, clip)``. Most features are z-scored;
    ``mlmi_signal`` (0/1) is left as is and ``volatility_30`` is divided by its training mean
    (centre 0) so that it stays positive, as the MMD actor's volatility factor expects.

Formulas and parameters are documented in ``docs/features.md``; the constants below are the
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from marl_jax.agents import AGENT_NAMES, FEATURE_NAMES, feature_slice

from .data import Bars

__all__ = [
    "FEATURE_NAMES",
    "AGENT_FEATURES",
    "NUM_FEATURES",
    "FEATURE_WARMUP",
    "WARMUP_BARS",
    "compute_features",
    "valid_mask",
    "FeatureNorm",
]

NUM_FEATURES = len(FEATURE_NAMES)
AGENT_FEATURES = {name: feature_slice(name) for name in AGENT_NAMES}

# Parameters (see docs/features.md).
RSI_FAST = 5
RSI_SLOW = 20
KNN_MEMORY = 100
KNN_K = 10
MOM_SHORT = 20
MOM_LONG = 50
NW_WINDOW = 64
NW_BANDWIDTH = 8.0
NW_ALPHA = 8.0
NW_SLOPE_LAG = 8
VOL_WINDOW = 30
PROFILE_WINDOW = 100
PROFILE_BINS = 24
IMBALANCE_WINDOW = 20
TOUCH_WINDOW = 50
TOUCH_TOLERANCE = 0.25
MMD_RECENT = 12
MMD_REFERENCE = 36
MMD_BANDWIDTH = 1.0
EPS = 1e-12

# First valid row of each feature (log returns exist from row 1 on).
FEATURE_WARMUP = {
    "mlmi_value": RSI_SLOW + KNN_MEMORY,
    "mlmi_signal": RSI_SLOW + KNN_MEMORY,
    "momentum_20": MOM_SHORT,
    "momentum_50": MOM_LONG,
    "nwrqk_pred": max(NW_WINDOW - 1 + NW_SLOPE_LAG, VOL_WINDOW),
    "lvn_strength": PROFILE_WINDOW - 1,
    "fvg_size": 2,
    "price_distance": max(NW_WINDOW - 1, VOL_WINDOW),
    "volume_imbalance": IMBALANCE_WINDOW - 1,
    "level_touches": TOUCH_WINDOW,
    "mmd_score": MMD_RECENT + MMD_REFERENCE,
    "volatility_30": VOL_WINDOW,
    "volume_profile_skew": PROFILE_WINDOW - 1,
}
WARMUP_BARS = max(FEATURE_WARMUP.values())
_CHUNK = 4096


def _rolling(x: np.ndarray, w: int) -> np.ndarray:
    """``(T, w)`` read-only view whose row ``t`` is ``x[t-w+1 .. t]``; the front is padded with
    ``x[0]`` so early (warm-up) rows stay finite."""
    padded = np.concatenate([np.full(w - 1, x[0], dtype=x.dtype), x])
    return sliding_window_view(padded, w)


def _lag(x: np.ndarray, k: int) -> np.ndarray:
    """``x[t-k]``, with ``x[0]`` repeated in front."""
    k = min(k, len(x))
    if k == 0:
        return x
    return np.concatenate([np.full(k, x[0], dtype=x.dtype), x[: len(x) - k]])


def _safe_div(num: np.ndarray, den: np.ndarray, default: float = 0.0) -> np.ndarray:
    """``num / den``, ``default`` where ``|den| <= EPS``."""
    ok = np.abs(den) > EPS
    return np.where(ok, num / np.where(ok, den, 1.0), default)


def _rsi(r: np.ndarray, w: int) -> np.ndarray:
    """Cutler's RSI in [0, 1]: the share of up-moves in the absolute moves of the last w bars."""
    win = _rolling(r, w)
    up = np.maximum(win, 0.0).sum(axis=1)
    down = np.maximum(-win, 0.0).sum(axis=1)
    return _safe_div(up, up + down, 0.5)


def _mlmi(r: np.ndarray) -> np.ndarray:
    """k-nearest-neighbour vote of the next-bar direction in (fast RSI, slow RSI) space."""
    n = len(r)
    points = np.stack([_rsi(r, RSI_FAST), _rsi(r, RSI_SLOW)], axis=1)
    labels = np.sign(np.r_[r[1:], 0.0])  # label of bar s: direction of bar s+1 (known at s+1)
    # Memory of bar t: bars t-M .. t-1 (their labels are known at t).
    mem_x = _rolling(_lag(points[:, 0], 1), KNN_MEMORY)
    mem_y = _rolling(_lag(points[:, 1], 1), KNN_MEMORY)
    mem_l = _rolling(_lag(labels, 1), KNN_MEMORY)
    out = np.empty(n)
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        d = (mem_x[a:b] - points[a:b, :1]) ** 2 + (mem_y[a:b] - points[a:b, 1:]) ** 2
        nearest = np.argpartition(d, KNN_K - 1, axis=1)[:, :KNN_K]
        out[a:b] = np.take_along_axis(mem_l[a:b], nearest, axis=1).mean(axis=1)
    return out


def _nadaraya_watson(x: np.ndarray) -> np.ndarray:
    """Causal Nadaraya-Watson estimate with a rational-quadratic kernel over the last
    ``NW_WINDOW`` values: weight of lag i is ``(1 + i^2 / (2 alpha h^2))^-alpha``."""
    lags = np.arange(NW_WINDOW, dtype=np.float64)
    weights = (1.0 + lags**2 / (2.0 * NW_ALPHA * NW_BANDWIDTH**2)) ** (-NW_ALPHA)
    weights = weights[::-1] / weights.sum()  # oldest first, to match the window order
    return (_rolling(x, NW_WINDOW) * weights).sum(axis=1)  # row sums, no BLAS: deterministic


def _volume_profile(tp, low, high, close, volume):
    """Volume profile features over the last ``PROFILE_WINDOW`` bars:
    lvn_strength (1 - profile at the close's bin / max profile) and the volume-weighted
    skewness of the typical price."""
    n = len(tp)
    w = PROFILE_WINDOW
    tp_w, vol_w = _rolling(tp, w), _rolling(volume, w)
    lo = _rolling(low, w).min(axis=1)
    hi = _rolling(high, w).max(axis=1)
    span = hi - lo
    lvn = np.zeros(n)
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        rel = _safe_div(tp_w[a:b] - lo[a:b, None], span[a:b, None], 0.5)
        idx = np.clip((rel * PROFILE_BINS).astype(np.int64), 0, PROFILE_BINS - 1)
        rows = np.arange(b - a)[:, None] * PROFILE_BINS
        profile = np.bincount(
            (rows + idx).ravel(), weights=vol_w[a:b].ravel(), minlength=(b - a) * PROFILE_BINS
        ).reshape(b - a, PROFILE_BINS)
        rel_c = _safe_div(close[a:b] - lo[a:b], span[a:b], 0.5)
        cbin = np.clip((rel_c * PROFILE_BINS).astype(np.int64), 0, PROFILE_BINS - 1)
        at_close = profile[np.arange(b - a), cbin]
        peak = profile.max(axis=1)
        lvn[a:b] = np.where(peak > EPS, 1.0 - at_close / np.where(peak > EPS, peak, 1.0), 0.0)

    total = vol_w.sum(axis=1)
    mean = _safe_div((vol_w * tp_w).sum(axis=1), total)
    dev = tp_w - mean[:, None]
    var = _safe_div((vol_w * dev**2).sum(axis=1), total)
    third = _safe_div((vol_w * dev**3).sum(axis=1), total)
    skew = _safe_div(third, np.maximum(var, 0.0) ** 1.5)
    skew = np.where(var > EPS * np.maximum(mean, 1.0) ** 2, skew, 0.0)
    return lvn, skew


def _mmd(r: np.ndarray) -> np.ndarray:
    """Biased MMD^2 (Gaussian kernel) between the last ``MMD_RECENT`` returns and the
    ``MMD_REFERENCE`` returns before them, both standardised by the reference mean and std.

    With weights ``w = -1/k`` on the reference and ``+1/m`` on the recent returns,
    ``MMD^2 = w^T K w = sum(w^2) + 2 sum_{i<j} w_i w_j K_ij`` (K has a unit diagonal), so only
    the upper triangle of the Gram matrix is evaluated (in float32, for speed)."""
    n = len(r)
    m, k = MMD_RECENT, MMD_REFERENCE
    weights = np.r_[np.full(k, -1.0 / k), np.full(m, 1.0 / m)]
    iu, ju = np.triu_indices(m + k, 1)
    pair_w = (2.0 * weights[iu] * weights[ju]).astype(np.float32)
    diag = float((weights**2).sum())
    win = _rolling(r, m + k)
    out = np.empty(n)
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        ref = win[a:b, :k]
        sd = ref.std(axis=1, keepdims=True)
        z = (win[a:b] / np.where(sd > EPS, sd, 1.0)).astype(np.float32)
        d = z[:, iu] - z[:, ju]  # the reference mean cancels in differences
        d *= d
        d *= np.float32(-0.5 / MMD_BANDWIDTH**2)
        np.exp(d, out=d)
        d *= pair_w  # an explicit row sum, not BLAS: the result must not depend on b - a
        out[a:b] = np.maximum(diag + d.sum(axis=1, dtype=np.float64), 0.0)
    return out


def _volume_imbalance(high, low, close, volume) -> np.ndarray:
    """Volume signed by where each bar closes in its range, over the window's total volume."""
    rng = high - low
    close_loc = _safe_div(close - low, rng, 0.5)
    signed = volume * (2.0 * close_loc - 1.0)
    return _safe_div(
        _rolling(signed, IMBALANCE_WINDOW).sum(axis=1),
        _rolling(volume, IMBALANCE_WINDOW).sum(axis=1),
    )


def _level_touches(high, low, close) -> np.ndarray:
    """How many of the previous ``TOUCH_WINDOW`` bars have their high or low within
    ``TOUCH_TOLERANCE`` times those bars' mean range of the close."""
    prev_h = _rolling(_lag(high, 1), TOUCH_WINDOW)
    prev_l = _rolling(_lag(low, 1), TOUCH_WINDOW)
    tol = TOUCH_TOLERANCE * (prev_h - prev_l).mean(axis=1)
    near = (np.abs(prev_h - close[:, None]) <= tol[:, None]) | (
        np.abs(prev_l - close[:, None]) <= tol[:, None]
    )
    return near.sum(axis=1).astype(np.float64)


def compute_features(bars: Bars) -> np.ndarray:
    """``(len(bars), 13)`` float32 features in ``FEATURE_NAMES`` order; warm-up rows are 0."""
    n = len(bars)
    if n == 0:
        return np.zeros((0, NUM_FEATURES), dtype=np.float32)
    h, lo_, c, v = bars.high, bars.low, bars.close, bars.volume
    logc = np.log(c)
    r = np.r_[0.0, np.diff(logc)]

    vol30 = _rolling(r, VOL_WINDOW).std(axis=1, ddof=1)

    mlmi_value = _mlmi(r)
    mlmi_signal = (mlmi_value > 0).astype(np.float64)
    momentum_20 = logc - _lag(logc, MOM_SHORT)
    momentum_50 = logc - _lag(logc, MOM_LONG)

    nw = _nadaraya_watson(logc)
    nw_slope = nw - _lag(nw, NW_SLOPE_LAG)
    nwrqk_pred = np.tanh(_safe_div(nw_slope, vol30 * np.sqrt(NW_SLOPE_LAG)))
    tp = (h + lo_ + c) / 3.0
    lvn_strength, profile_skew = _volume_profile(tp, lo_, h, c, v)
    bull_gap = np.maximum(lo_ - _lag(h, 2), 0.0)
    bear_gap = np.maximum(_lag(lo_, 2) - h, 0.0)
    fvg_size = (bull_gap - bear_gap) / c
    price_distance = _safe_div(logc - nw, vol30)

    volume_imbalance = _volume_imbalance(h, lo_, c, v)
    level_touches = _level_touches(h, lo_, c)
    mmd_score = _mmd(r)

    columns = {
        "mlmi_value": mlmi_value,
        "mlmi_signal": mlmi_signal,
        "momentum_20": momentum_20,
        "momentum_50": momentum_50,
        "nwrqk_pred": nwrqk_pred,
        "lvn_strength": lvn_strength,
        "fvg_size": fvg_size,
        "price_distance": price_distance,
        "volume_imbalance": volume_imbalance,
        "level_touches": level_touches,
        "mmd_score": mmd_score,
        "volatility_30": vol30,
        "volume_profile_skew": profile_skew,
    }
    out = np.stack([columns[name] for name in FEATURE_NAMES], axis=1)
    out[:WARMUP_BARS] = 0.0
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out.astype(np.float32)


def valid_mask(n: int) -> np.ndarray:
    """True on rows whose every feature window is full (rows ``>= WARMUP_BARS``)."""
    return np.arange(n) >= WARMUP_BARS


# --------------------------------------------------------------------------------------------
# Normalisation

_UNSCALED = ("mlmi_signal",)
_SCALE_ONLY = ("volatility_30",)


@dataclass(frozen=True)
class FeatureNorm:
    """Per-feature affine normalisation ``clip((x - center) / scale, -clip, clip)``."""

    center: np.ndarray
    scale: np.ndarray
    clip: float = 10.0
    feature_names: tuple[str, ...] = field(default=FEATURE_NAMES)

    def __post_init__(self):
        center = np.asarray(self.center, dtype=np.float64).reshape(-1)
        scale = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        names = tuple(self.feature_names)
        if names != FEATURE_NAMES:
            raise ValueError(f"FeatureNorm is for features {names}, expected {FEATURE_NAMES}")
        if center.shape != (NUM_FEATURES,) or scale.shape != (NUM_FEATURES,):
            raise ValueError("FeatureNorm center and scale must have 13 entries")
        if not (np.all(np.isfinite(center)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError("FeatureNorm needs finite centres and positive finite scales")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "feature_names", names)
        object.__setattr__(self, "clip", float(self.clip))

    @classmethod
    def fit(
        cls, features: np.ndarray, start: int = 0, stop: int | None = None, clip: float = 10.0
    ) -> FeatureNorm:
        """Fit on rows ``[max(start, WARMUP_BARS), stop)``: pass the training split's bounds."""
        stop = len(features) if stop is None else stop
        rows = np.asarray(features[max(start, WARMUP_BARS) : stop], dtype=np.float64)
        if len(rows) < 2:
            raise ValueError(
                f"cannot fit normalisation on {len(rows)} post-warm-up rows "
                f"(warm-up is {WARMUP_BARS} bars); use more data"
            )
        center = rows.mean(axis=0)
        scale = rows.std(axis=0)
        for i, name in enumerate(FEATURE_NAMES):
            if name in _UNSCALED:
                center[i], scale[i] = 0.0, 1.0
            elif name in _SCALE_ONLY:
                center[i], scale[i] = 0.0, np.abs(rows[:, i]).mean()
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(center=center, scale=scale, clip=clip)

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Normalised float32 features, ``clip((x - center) / scale, -clip, clip)``."""
        x = (np.asarray(features, dtype=np.float64) - self.center) / self.scale
        return np.clip(x, -self.clip, self.clip).astype(np.float32)

    def to_dict(self) -> dict:
        """The statistics as plain JSON-able lists (read back by :meth:`from_dict`)."""
        return {
            "feature_names": list(self.feature_names),
            "center": [float(x) for x in self.center],
            "scale": [float(x) for x in self.scale],
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureNorm:
        """The normalisation that :meth:`to_dict` wrote."""
        return cls(
            center=d["center"],
            scale=d["scale"],
            clip=d.get("clip", 10.0),
            feature_names=tuple(d.get("feature_names", FEATURE_NAMES)),
        )
