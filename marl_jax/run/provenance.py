"""Where a report's numbers come from: the data and its SHA-256, the bars evaluated, their
interval and annualisation, the cost, the config and its hash, the package version and the git
commit. :func:`provenance` is the ``provenance`` entry of every command's ``report.json``
(:func:`marl_jax.run.report.build_report`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from marl_jax import __version__
from marl_jax.config import Config, config_to_dict
from marl_jax.env import data as bar_data
from marl_jax.env import market
from marl_jax.files import sha256_of
from marl_jax.run.setup import periods_per_year_for

__all__ = [
    "SOURCE_DIR",
    "BarCalendar",
    "bar_calendar",
    "config_sha256",
    "file_sha256",
    "git_commit",
    "git_dirty",
    "iso_timestamp",
    "mean_calendar",
    "provenance",
]


@dataclasses.dataclass(frozen=True)
class BarCalendar:
    """The bars' interval and the bars per year their metrics are annualised at."""

    interval_minutes: float
    periods_per_year: float


def bar_calendar(cfg: Config, bars: bar_data.Bars, *, synthetic: bool | None = None) -> BarCalendar:
    """The interval and the periods per year the run's evaluation uses for ``bars`` under
    ``cfg`` (:func:`~marl_jax.run.setup.periods_per_year_for`): the one place the reports (and
    the walk-forward's pooled metrics) read them from."""
    per_year = periods_per_year_for(cfg, bars, synthetic=synthetic)
    return BarCalendar(market.interval_minutes_of(bars), per_year)


def mean_calendar(calendars: Sequence[BarCalendar]) -> BarCalendar:
    """Several instruments' calendar: the mean interval and the mean periods per year (the
    pooled metrics' annualisation)."""
    return BarCalendar(
        float(np.mean([c.interval_minutes for c in calendars])),
        float(np.mean([c.periods_per_year for c in calendars])),
    )


def file_sha256(path: str | Path | None) -> str | None:
    """The SHA-256 of a file, or None for no path or a file that is not there."""
    if not path or not Path(path).is_file():
        return None
    return sha256_of(path)


def config_sha256(cfg: Config) -> str:
    """The SHA-256 of the resolved config (its keys sorted, as JSON): equal configs, equal
    hashes, however they were written."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# The package's own folder: in a clone (an editable install) its checkout's HEAD is the code a
# run used; an installed wheel has none.
SOURCE_DIR = Path(__file__).resolve().parents[1]


def _git(args: Sequence[str], where: str | Path | None) -> str | None:
    """``git ARGS``'s output in ``where``; None where git fails, is missing or slow."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_commit(where: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the working directory (or ``where``) when it is a git
    checkout; None otherwise, or where git is missing or slow (never raises)."""
    commit = (_git(["rev-parse", "HEAD"], where) or "").strip()
    return commit or None


def git_dirty(where: str | Path | None = None) -> bool | None:
    """Whether the folder ``where`` (default: the working directory) of a git checkout holds
    changes not committed (edited, added, deleted or new files that git does not ignore), so
    its HEAD is not all of the code that ran; None outside a checkout, or where git is missing
    or slow (never raises)."""
    status = _git(["status", "--porcelain", "--", "."], where)
    return None if status is None else bool(status.strip())


def iso_timestamp(stamp: np.datetime64) -> str:
    """A bar's timestamp as ISO 8601, to the second (``2024-01-31T14:00:00``)."""
    return str(np.datetime_as_string(np.datetime64(stamp, "ns"), unit="s"))


def provenance(
    *,
    cfg: Config,
    config: str,
    data: str | Sequence[str] | None,
    stamps: np.ndarray,
    calendar: BarCalendar,
    cost_bps: float,
) -> dict:
    """The report's ``provenance``: ``data`` (the bar file; a list for several instruments;
    None for the synthetic market) and its SHA-256, the first and last of the evaluated bars'
    timestamps ``stamps`` and their count, ``calendar``, ``cost_bps``, ``config`` (the name or
    path given) and the SHA-256 of the resolved ``cfg``, the package version, the git commit
    and whether the checkout had uncommitted changes, and the time it was made (UTC)."""
    stamps = np.sort(np.asarray(stamps, dtype="datetime64[ns]"))
    if isinstance(data, str) or data is None:
        digest: str | list[str | None] | None = file_sha256(data)
    else:
        data, digest = list(data), [file_sha256(p) for p in data]
    return {
        "data": data,
        "data_sha256": digest,
        "first_timestamp": iso_timestamp(stamps[0]) if len(stamps) else None,
        "last_timestamp": iso_timestamp(stamps[-1]) if len(stamps) else None,
        "bars": len(stamps),
        "interval_minutes": float(calendar.interval_minutes),
        "periods_per_year": float(calendar.periods_per_year),
        "cost_bps": float(cost_bps),
        "config": str(config),
        "config_sha256": config_sha256(cfg),
        "version": __version__,
        "git_commit": git_commit(SOURCE_DIR),
        "git_dirty": git_dirty(SOURCE_DIR),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
