"""Walk-forward folds: bar ranges for training, validation and test, with a purge between them.

The last ``folds * test_bars`` bars are cut into ``folds`` consecutive test folds of
``test_bars`` bars each (by default ``n_bars // (folds + 1)``, so the first training span is
about one test fold long, as in scikit-learn's ``TimeSeriesSplit``). Fold ``k``'s train span
ends ``gap`` bars before its test fold starts; it starts at bar 0 (expanding) or ``rolling``
bars before its end (rolling, a fixed length). The last ``val_fraction`` of the span is the
validation split, and the same ``gap`` separates the part trained on from it::

    [ train ......... ] gap [ val ] gap [ test ]

A gap of ``window + 1`` bars (the least allowed) means no observation window of a later split
holds a bar of an earlier one, and no reward of an earlier split reads a later bar's return.
All ranges are ``[start, stop)`` bar indices.
"""

from __future__ import annotations

import dataclasses
import math

from marl_jax.errors import MarlJaxError

__all__ = [
    "DEFAULT_SELECT",
    "SELECT_METRICS",
    "Fold",
    "WalkForwardError",
    "make_folds",
    "min_split_bars",
]

DEFAULT_VAL_FRACTION = 0.2
# What a fold's checkpoints (or a sweep's members) can be ranked by on the validation split:
# the net active IR against buy-and-hold (a constant position scores 0, so a train span's drift
# carried into validation does not win; the default), or the net log return, what the position
# earns after costs (a Sharpe ratio would rank a constant position like buy-and-hold).
SELECT_METRICS = ("active_ir", "total_log_return")
DEFAULT_SELECT = "active_ir"


class WalkForwardError(MarlJaxError, ValueError):
    """A walk-forward cannot be laid out or continued; ``str(err)`` says what to change."""


@dataclasses.dataclass(frozen=True)
class Fold:
    """One fold's bar ranges ``(start, stop)``; ``train`` is the part trained on."""

    index: int
    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]

    @property
    def span(self) -> tuple[int, int]:
        """The whole train span: the part trained on, the purge and the validation split."""
        return (self.train[0], self.val[1])

    def to_dict(self) -> dict:
        return {"fold": self.index, "train": self.train, "val": self.val, "test": self.test}


def min_split_bars(window: int, warmup: int) -> int:
    """The fewest bars a split starting at bar 0 needs: the warm-up and one window before its
    first decision, and a next bar after it."""
    return warmup + window + 1


def _check_options(folds: int, gap: int, least_gap: int, val_fraction: float) -> None:
    """Refuses a fold count, purge or validation fraction no data could satisfy."""
    if folds < 1:
        raise WalkForwardError(f"--folds {folds}: need at least 1 fold")
    if gap < least_gap:
        raise WalkForwardError(
            f"--gap {gap}: the purge must be at least window + 1 = {least_gap} bars"
        )
    if not 0.0 < val_fraction < 1.0:
        raise WalkForwardError(f"--val-fraction {val_fraction}: must be between 0 and 1")


def _fold(
    k: int,
    n_bars: int,
    folds: int,
    test_bars: int,
    *,
    window: int,
    warmup: int,
    gap: int,
    val_fraction: float,
    rolling: int | None,
) -> Fold:
    """Fold ``k`` of ``folds`` test folds of ``test_bars`` bars each at the end of ``n_bars``
    bars; raises :class:`WalkForwardError` when its train or validation part is too short."""
    # Every split needs 2 bars (a decision and its next bar); the first decision of the train
    # part waits for the warm-up and one window.
    first_train = min_split_bars(window, warmup)
    test_start = n_bars - (folds - k) * test_bars
    span_stop = test_start - gap
    span_start = 0 if rolling is None else span_stop - int(rolling)
    span = span_stop - span_start
    val_bars = int(round(val_fraction * span))
    train_stop = span_stop - val_bars - gap
    test = (test_start, test_start + test_bars)
    fold = Fold(k, (span_start, train_stop), (span_stop - val_bars, span_stop), test)
    if span_start < 0:
        raise WalkForwardError(
            f"--rolling {rolling}: fold {k}'s train span would start before the first bar "
            f"({n_bars} bars, {folds} folds of {test_bars} test bars); use a shorter "
            "--rolling, fewer folds or more bars"
        )
    if val_bars < 2 or train_stop - max(span_start, first_train - 2) < 2:
        least_span = max((first_train + gap) / (1 - val_fraction), 2 / val_fraction)
        need = (folds + 1) * (gap + math.ceil(least_span) + 1)
        raise WalkForwardError(
            f"{n_bars} bars are too few for {folds} folds: fold {k}'s train span "
            f"[{span_start}, {span_stop}) leaves {max(train_stop - span_start, 0)} bars to "
            f"train on and {val_bars} to validate on (warm-up {warmup} + window {window}, "
            f"purge {gap}); use fewer folds or at least about {need} bars"
        )
    return fold


def make_folds(
    n_bars: int,
    folds: int,
    *,
    window: int,
    warmup: int,
    gap: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    rolling: int | None = None,
    test_bars: int | None = None,
) -> list[Fold]:
    """The folds of a walk-forward over ``n_bars`` bars (see the module docstring).

    ``gap`` defaults to ``window + 1``; ``rolling`` is the train span's fixed length (``None``:
    expanding). Raises :class:`WalkForwardError` with one line when the bars do not suffice.
    """
    least_gap = window + 1
    gap = least_gap if gap is None else int(gap)
    _check_options(folds, gap, least_gap, val_fraction)
    test_bars = n_bars // (folds + 1) if test_bars is None else int(test_bars)
    if test_bars < 2:
        raise WalkForwardError(
            f"{n_bars} bars are too few for {folds} folds: each test fold would hold "
            f"{test_bars} bars; use fewer folds or more bars"
        )
    layout = {"window": window, "warmup": warmup, "gap": gap, "val_fraction": val_fraction}
    return [_fold(k, n_bars, folds, test_bars, **layout, rolling=rolling) for k in range(folds)]
