"""Experiment trackers: where a run's parameters, per-update metrics, final metrics and files
are logged besides its own folder.

A :class:`Tracker` is started once per run (``start``), takes the flattened config
(``log_params``), each update's metrics (``log_metrics`` with ``step`` = the update) and the
final report's (``log_metrics`` without a step), then the output files (``log_artifacts``), and
is ended (``end``). ``child()`` gives an unstarted tracker whose run nests under this one: a
sweep's members, a walk-forward's folds. The kinds:

- :data:`NO_TRACKER`: logs nothing (the default);
- :class:`TensorBoardTracker`: the per-update metrics as TensorBoard scalars in the folder given
  to ``start`` (needs tensorboardX: ``pip install 'marl-jax[tensorboard]'``);
- :class:`MlflowTracker`: an MLflow run in a local store, no server needed (needs MLflow:
  ``pip install 'marl-jax[mlflow]'``); by default ``sqlite:///mlflow.db`` with the artifacts in
  ``./mlruns``, MLflow's own default (its plain-file store is in maintenance mode and refused
  unless opted into, so it is not used);
- :class:`Trackers`: several at once.

Neither MLflow nor tensorboardX is imported before a tracker of theirs is made.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from marl_jax.errors import MarlJaxError, one_line
from marl_jax.run.metrics_log import read_metrics_log

__all__ = [
    "MLFLOW_EXPERIMENT",
    "NO_TRACKER",
    "TRACKERS",
    "MlflowTracker",
    "NoTracker",
    "TensorBoardTracker",
    "Tracker",
    "TrackingError",
    "Trackers",
    "default_tracking_uri",
    "final_metrics",
    "flatten",
    "log_metrics_log",
    "log_outcome",
    "mlflow_tracker",
    "open_tracker",
    "output_files",
    "tracked",
    "update_metrics",
]

TRACKERS = ("mlflow",)  # the choices of --tracker
MLFLOW_EXPERIMENT = "marl-jax"
# The files of an output folder logged as artifacts (those that exist), besides *.png and *.pt.
OUTPUT_FILES = (
    "report.json",
    "returns.csv",
    "report.html",
    "config.yaml",
    "fold.json",
    "walkforward.json",
    "sweep.yaml",
    "leaderboard.json",
    "leaderboard.csv",
)
# An MLflow run's per-update metrics are written in batches: when this many seconds passed since
# the last write (a write costs tens of milliseconds, whatever its size), and at the end.
FLUSH_SECONDS = 5.0
# Keys of a metrics row that say which update (or member) it is, not how it went.
ROW_KEYS = ("update", "group", "member")


class TrackingError(MarlJaxError):
    """A tracker that cannot be made or written to; the message is one line."""


class Tracker(Protocol):
    """Where a run is logged besides its folder (see the module docstring)."""

    def start(self, name: str, folder: Path) -> None:
        """Opens the run ``name``; ``folder`` is where it keeps local logs (TensorBoard's)."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Logs flat ``{dotted.key: value}`` parameters."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Logs ``metrics`` at ``step`` (an update), or as final values when None."""

    def log_artifacts(self, paths: Iterable[Path], under: str | None = None) -> None:
        """Copies the files ``paths`` into the run's artifacts (into their folder ``under``)."""

    def end(self, failed: bool = False) -> None:
        """Closes the run, marked failed when ``failed``."""

    def child(self) -> Tracker:
        """An unstarted tracker whose run nests under this one's."""


class NoTracker:
    """Logs nothing."""

    def start(self, name: str, folder: Path) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifacts(self, paths: Iterable[Path], under: str | None = None) -> None:
        pass

    def end(self, failed: bool = False) -> None:
        pass

    def child(self) -> Tracker:
        return self


NO_TRACKER = NoTracker()


def _import_tensorboardx():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise TrackingError(
            "--tensorboard needs tensorboardX: pip install 'marl-jax[tensorboard]'"
        ) from None
    return SummaryWriter


class TensorBoardTracker:
    """The per-update metrics as TensorBoard scalars in the folder given to ``start`` (the
    event file is made at the first update logged, and supersedes the events an earlier
    writer left there from that update on: a resume); final metrics, parameters and files
    are not logged."""

    def __init__(self) -> None:
        self._writer_class = _import_tensorboardx()  # a missing package fails before training
        self._folder: Path | None = None
        self._writer: Any = None

    def start(self, name: str, folder: Path) -> None:
        self._folder = Path(folder)

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is None or self._folder is None:
            return
        if self._writer is None:  # TensorBoard drops what an earlier writer logged from here on
            self._writer = self._writer_class(str(self._folder), purge_step=step)
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)

    def log_artifacts(self, paths: Iterable[Path], under: str | None = None) -> None:
        pass

    def end(self, failed: bool = False) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def child(self) -> Tracker:
        return TensorBoardTracker()


class Trackers:
    """Several trackers as one."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = tuple(trackers)

    def start(self, name: str, folder: Path) -> None:
        for t in self.trackers:
            t.start(name, folder)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for t in self.trackers:
            t.log_metrics(metrics, step)

    def log_artifacts(self, paths: Iterable[Path], under: str | None = None) -> None:
        paths = list(paths)
        for t in self.trackers:
            t.log_artifacts(paths, under)

    def end(self, failed: bool = False) -> None:
        for t in self.trackers:
            t.end(failed)

    def child(self) -> Tracker:
        return Trackers([t.child() for t in self.trackers])


# ----------------------------------------------------------------------------------- MLflow


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else MLflow's own default for local use:
    ``sqlite:///mlflow.db`` in the working directory (absolute here)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _artifact_location(uri: str) -> str | None:
    """Where a new experiment in the store ``uri`` keeps its files: ``mlruns`` beside a sqlite
    file (as MLflow does from the working directory), else the store's own choice."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()


@contextlib.contextmanager
def _quiet_mlflow(uri: str) -> Iterator[None]:
    """MLflow's notices and warnings silenced (they are not for users), and its errors one
    :class:`TrackingError` line naming the store."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except MarlJaxError:
        raise
    except Exception as err:  # MLflow, SQLAlchemy and the file system raise many kinds
        first = (one_line(err) or type(err).__name__)[:300]
        raise TrackingError(
            f"MLflow tracking store {uri}: {first}; check --tracking-uri (or drop --tracker)"
        ) from None


def _refuse_a_file_store(uri: str) -> None:
    """A one-line :class:`TrackingError` for a plain-folder store (a path or ``file:``), which
    MLflow refuses unless ``MLFLOW_ALLOW_FILE_STORE`` is true."""
    folder = urlparse(uri).scheme in ("", "file") and uri not in ("databricks", "uc")
    allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true")
    if folder and not allowed:
        raise TrackingError(
            f"MLflow store {uri}: MLflow keeps a plain-folder store only in maintenance mode; "
            "give a database such as sqlite:///mlflow.db (or set MLFLOW_ALLOW_FILE_STORE=true)"
        )


# Opening a store over HTTP: MLflow's own defaults retry a refused or silent server for minutes
# (7 retries, backoff factor 2, 120 s a request) before a command can say what is wrong.
# Opening tries once more after this many seconds at most; the runs' later requests keep
# MLflow's retries. A user's own MLFLOW_HTTP_REQUEST_* settings are left as they are.
OPEN_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextlib.contextmanager
def _opening(uri: str) -> Iterator[None]:
    """MLflow's HTTP retries cut to :data:`OPEN_HTTP` for the block (over ``http(s)`` only,
    and only where the user has not set them)."""
    if urlparse(uri).scheme not in ("http", "https"):
        yield
        return
    added = {k: v for k, v in OPEN_HTTP.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def mlflow_tracker(uri: str | None = None, experiment: str = MLFLOW_EXPERIMENT) -> MlflowTracker:
    """An :class:`MlflowTracker` on the store ``uri`` (default :func:`default_tracking_uri`),
    in ``experiment`` (made when missing); a one-line :class:`TrackingError` when MLflow is not
    installed or the store cannot be opened."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError(
            "--tracker mlflow needs MLflow: pip install 'marl-jax[mlflow]'"
        ) from None
    uri = uri or default_tracking_uri()
    _refuse_a_file_store(uri)
    with _quiet_mlflow(uri), _opening(uri):
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            experiment_id = client.create_experiment(
                experiment, artifact_location=_artifact_location(uri)
            )
    return MlflowTracker(client, uri, experiment_id)


class MlflowTracker:
    """One MLflow run (a nested one for a :meth:`child`), written through ``MlflowClient``,
    not MLflow's process-wide active run. Per-update metrics are written every
    :data:`FLUSH_SECONDS` and at the end; final metrics at once."""

    def __init__(self, client: Any, uri: str, experiment_id: str, parent: str | None = None):
        self.client, self.uri, self.experiment_id, self.parent = client, uri, experiment_id, parent
        self.run_id: str | None = None
        self._pending: list[Any] = []
        self._flushed = time.monotonic()

    def start(self, name: str, folder: Path) -> None:
        tags = {"mlflow.parentRunId": self.parent} if self.parent else {}
        with _quiet_mlflow(self.uri):
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        self.run_id = run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        items = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
        with _quiet_mlflow(self.uri):
            for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
                batch = items[i : i + MAX_PARAMS_TAGS_PER_BATCH]
                self.client.log_batch(self._id(), params=batch)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if step is None or time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Writes the metrics logged since the last write."""
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        items, self._pending = self._pending, []
        self._flushed = time.monotonic()
        with _quiet_mlflow(self.uri):
            for i in range(0, len(items), MAX_METRICS_PER_BATCH):
                batch = items[i : i + MAX_METRICS_PER_BATCH]
                self.client.log_batch(self._id(), metrics=batch)

    def log_artifacts(self, paths: Iterable[Path], under: str | None = None) -> None:
        with _quiet_mlflow(self.uri):
            for path in paths:
                self.client.log_artifact(self._id(), str(path), under)

    def end(self, failed: bool = False) -> None:
        if self.run_id is None:
            return
        self.flush()
        with _quiet_mlflow(self.uri):
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
        self.run_id = None

    def child(self) -> Tracker:
        return MlflowTracker(self.client, self.uri, self.experiment_id, parent=self._id())

    def _id(self) -> str:
        if self.run_id is None:
            raise TrackingError("an MLflow run was written to before it was started")
        return self.run_id


# ----------------------------------------------------------------------------- using them


def open_tracker(
    kind: str | None = None, tracking_uri: str | None = None, tensorboard: bool = False
) -> Tracker:
    """The tracker the flags ask for: ``--tracker`` (None or one of :data:`TRACKERS`),
    ``--tracking-uri`` and ``--tensorboard``; :data:`NO_TRACKER` when none. Fails at once (a
    one-line :class:`TrackingError`) where a package is missing."""
    if kind is not None and kind not in TRACKERS:
        raise TrackingError(f"--tracker {kind}: unknown; choose one of {', '.join(TRACKERS)}")
    if tracking_uri is not None and kind is None:
        raise TrackingError("--tracking-uri needs --tracker mlflow")
    trackers: list[Tracker] = []
    if kind == "mlflow":
        trackers.append(mlflow_tracker(tracking_uri))
    if tensorboard:
        trackers.append(TensorBoardTracker())
    if not trackers:
        return NO_TRACKER
    return trackers[0] if len(trackers) == 1 else Trackers(trackers)


@contextlib.contextmanager
def tracked(tracker: Tracker, name: str, folder: Path) -> Iterator[Tracker]:
    """``tracker`` started as ``name`` for the block, ended after it (failed on an
    exception)."""
    tracker.start(name, folder)
    try:
        yield tracker
    except BaseException:
        tracker.end(failed=True)
        raise
    tracker.end()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _numbers(flat: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``flat`` as floats (booleans and None left out)."""
    return {
        k: float(v)
        for k, v in flat.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def final_metrics(report: Mapping[str, Any], prefix: str = "test") -> dict[str, float]:
    """A report's metrics flat under ``prefix`` (``test.policy.active_ir``,
    ``test.buy_and_hold.sharpe``, ...) and its numeric ``checks`` (``checks.capture``): read
    from the report's ``metrics``; a report without it is read from its ``pooled`` (a
    walk-forward's), ``test`` (a fold's) or ``policy`` and ``baselines`` (a run's) entries."""
    if "metrics" in report:
        by_name = report["metrics"]
    elif "pooled" in report:
        by_name = report["pooled"]
    elif "test" in report and isinstance(report["test"], Mapping):
        by_name = report["test"]
    else:
        by_name = {"policy": report.get("policy", {}), **report.get("baselines", {})}
    found = _numbers(flatten(by_name, f"{prefix}."))
    checks = report.get("checks")
    if isinstance(checks, Mapping):
        found.update(_numbers(flatten(checks, "checks.")))
    else:  # before the report's checks: a walk-forward's one-sign folds, the capture
        one = report.get("one_sign_folds")
        if isinstance(one, Mapping):
            found.update({"checks.one_sign_folds": one["count"], "checks.folds": one["of"]})
        if isinstance(report.get("capture"), int | float):
            found["checks.capture"] = float(report["capture"])
    return {k: v for k, v in found.items() if not math.isnan(v)}


def update_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """A ``metrics.jsonl`` row's metrics: everything but which update or member it is."""
    return _numbers({k: v for k, v in row.items() if k not in ROW_KEYS})


def log_metrics_log(tracker: Tracker, path: Path, up_to: int | None = None) -> int:
    """Logs the updates of the ``metrics.jsonl`` at ``path`` (up to ``up_to``) to ``tracker``,
    each at its update (a resumed or finished run's history); returns how many."""
    rows = read_metrics_log(path, up_to)
    for row in rows:
        tracker.log_metrics(update_metrics(row), step=int(row["update"]))
    return len(rows)


def output_files(folder: Path) -> list[Path]:
    """The files of an output folder that are logged as artifacts: those of
    :data:`OUTPUT_FILES` that exist, the plots (``*.png``) and the ``.pt`` exports."""
    folder = Path(folder)
    named = [folder / name for name in OUTPUT_FILES]
    globbed = sorted(folder.glob("*.png")) + sorted(folder.glob("*.pt"))
    return [p for p in named + globbed if p.is_file()]


def log_outcome(
    tracker: Tracker,
    folder: Path,
    report: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    extra_params: Mapping[str, Any] | None = None,
) -> None:
    """Logs a finished run's resolved ``config`` (flattened) and ``extra_params`` as
    parameters, its ``report``'s :func:`final_metrics`, and the :func:`output_files` of its
    ``folder``."""
    params = {**flatten(config or {}), **(extra_params or {})}
    if params:
        tracker.log_params(params)
    tracker.log_metrics(final_metrics(report))
    tracker.log_artifacts(output_files(folder))
