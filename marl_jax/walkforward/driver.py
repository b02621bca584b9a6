"""A whole walk-forward as one library call: lay out the folds, run each, pool the outputs.

``OUT/walkforward.json`` (written first) records the resolved config, the data file and its
SHA-256, the options and the folds; ``--resume`` reads everything from it, refuses a changed
data file, skips finished folds and continues an unfinished one from its latest checkpoint.
A data file with a plant's sidecar (:mod:`marl_jax.run.planted`) adds the ``oracle`` baseline
and the policy's ``capture`` to every fold and to the pooled outputs.

A tracker (:mod:`marl_jax.run.tracking`) gets a nested run per fold: its config, each update's
metrics (not for a fold that trains a sweep), its test metrics and files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from marl_jax.config import Config, config_from_dict, config_to_dict, load_config
from marl_jax.env.data import Bars
from marl_jax.files import atomic_write_text
from marl_jax.run.planted import sidecar_path
from marl_jax.run.provenance import file_sha256
from marl_jax.run.rundir import METRICS, TENSORBOARD, RunLock
from marl_jax.run.setup import data_label, data_overrides, load_markets, load_oracles
from marl_jax.run.tracking import (
    NO_TRACKER,
    Tracker,
    flatten,
    log_metrics_log,
    log_outcome,
    tracked,
)
from marl_jax.walkforward.ensemble import run_ensemble_fold
from marl_jax.walkforward.fold_run import DEFAULT_SELECT, FOLD_RESULT, SELECT_METRIC, run_fold
from marl_jax.walkforward.folds import DEFAULT_VAL_FRACTION, Fold, WalkForwardError
from marl_jax.walkforward.instruments import (
    instrument_folds,
    run_instruments_fold,
    write_instruments_outputs,
)
from marl_jax.walkforward.pooled import write_outputs
from marl_jax.walkforward.sweep import FoldSweep, pooled_trials

__all__ = ["MANIFEST", "WalkForwardSpec", "fold_dir", "walk_forward"]

MANIFEST = "walkforward.json"


@dataclasses.dataclass(frozen=True)
class WalkForwardSpec:
    """What a user asks for (the walk-forward CLI's flags)."""

    out: str
    config: str = "quickstart"
    overrides: Sequence[str] = ()
    data: str | Sequence[str] | None = None  # one file, or several (instruments)
    folds: int = 5
    gap: int | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    rolling: int | None = None
    sweep: str | None = None
    resume: bool = False
    select_by: str = DEFAULT_SELECT
    gate: bool = False

    def options(self) -> dict:
        return {
            "folds": self.folds,
            "gap": self.gap,
            "val_fraction": self.val_fraction,
            "rolling": self.rolling,
            "select_by": self.select_by,
            "gate": self.gate,
        }


def select_by(options: Mapping) -> str:
    """The validation metric a walk-forward ranks by (one recorded before the choice existed
    ranked by :data:`~marl_jax.walkforward.fold_run.SELECT_METRIC`)."""
    return options.get("select_by", SELECT_METRIC)


def gated(options: Mapping) -> bool:
    """Whether the walk-forward's folds are gated (``--gate``; never before the flag existed)."""
    return bool(options.get("gate", False))


def fold_dir(out: str | Path, index: int) -> Path:
    """The run directory of fold ``index``."""
    return Path(out) / f"fold_{index}"


def _digest(cfg, of=lambda path: path) -> str | dict[str, str | None] | None:
    """The data file's SHA-256, or each instrument's by name for several; ``of`` maps a data
    path to the file hashed (its plant sidecar: None where there is none)."""

    def sha(path: str | None) -> str | None:
        target = None if not path else Path(of(path))
        return file_sha256(target) if target is not None and target.is_file() else None

    if cfg.env.data_paths:
        return {Path(p).name: sha(p) for p in cfg.env.data_paths}
    return sha(cfg.env.data_path)


def _sidecar_digest(cfg) -> str | dict[str, str | None] | None:
    """The SHA-256 of each data file's plant sidecar (None where it has none)."""
    return _digest(cfg, sidecar_path)


def _single_file(cfg) -> str | None:
    """The one data file (``env.data_path``, or ``env.data_paths`` of one), or None."""
    return cfg.env.data_paths[0] if cfg.env.data_paths else cfg.env.data_path


def _resolve(spec: WalkForwardSpec) -> tuple:
    """``(config, options)`` for a new walk-forward, or as recorded for ``--resume``."""
    manifest = Path(spec.out) / MANIFEST
    if spec.resume:
        if not manifest.is_file():
            raise WalkForwardError(
                f"--resume: {manifest} not found; start the walk-forward without --resume"
            )
        recorded = json.loads(manifest.read_text())
        cfg = config_from_dict(recorded["config"], source=str(manifest))
        if _digest(cfg) != recorded["data_sha256"]:
            raise WalkForwardError(
                f"{data_label(cfg)}: the data file changed since the walk-forward in "
                f"{spec.out} started; restore it or start a new walk-forward in another --out"
            )
        if _sidecar_digest(cfg) != recorded.get("sidecar_sha256", _sidecar_digest(cfg)):
            raise WalkForwardError(
                f"{data_label(cfg)}: its plant sidecar (.plant.json) was changed, added or "
                f"removed since the walk-forward in {spec.out} started; restore it or start "
                "a new walk-forward in another --out"
            )
        return cfg, recorded["options"]
    if manifest.is_file():
        raise WalkForwardError(
            f"{spec.out} already holds a walk-forward; continue it with --resume or choose "
            "another --out"
        )
    overrides = [*spec.overrides, *data_overrides(spec.data)]
    return load_config(spec.config, overrides), spec.options()


def _sweep_for(spec: WalkForwardSpec, cfg) -> FoldSweep | None:
    """The sweep each fold trains (``--sweep``, or as recorded for ``--resume``), or None."""
    if spec.resume:
        record = json.loads((Path(spec.out) / MANIFEST).read_text()).get("sweep")
        return None if record is None else FoldSweep.from_record(record, cfg)
    return None if spec.sweep is None else FoldSweep.load(spec.sweep, cfg)


def _config_name(spec: WalkForwardSpec) -> str:
    """The config's name or path as given (``--config``; for ``--resume``, as the walk-forward
    recorded it, else its ``walkforward.json``)."""
    if not spec.resume:
        return str(spec.config)
    manifest = Path(spec.out) / MANIFEST
    return json.loads(manifest.read_text()).get("config_name", str(manifest))


def _header(cfg, options: dict, markets: dict, sweep: FoldSweep | None, config_name: str) -> dict:
    """What ``walkforward.json`` and ``report.json`` record first: the config (as given, and
    resolved), the data and its SHA-256, the options and how a fold chooses."""
    several = len(markets) > 1
    n_bars = {n: len(b) for n, b in markets.items()}
    header = {
        "config_name": config_name,
        "config": config_to_dict(cfg),
        "data": list(cfg.env.data_paths) if several else _single_file(cfg),
        "data_sha256": _digest(cfg),
        "sidecar_sha256": _sidecar_digest(cfg),
        "n_bars": n_bars if several else next(iter(n_bars.values())),
        "options": options,
        "selection": f"the checkpoint with the best validation {select_by(options)}"
        + (", summed over the instruments" if several else ""),
    }
    if cfg.ensemble > 1:
        header["selection"] = (
            f"the mean of {cfg.ensemble} seeds' positions, each member's checkpoint chosen by "
            f"its validation {select_by(options)}"
        )
    if sweep is not None:
        header["selection"] = f"the sweep member with the best validation {select_by(options)}"
        header["sweep"] = sweep.record()
    return header


def _record_layout(out: Path, header: dict, by_instrument: dict, resume: bool) -> None:
    """Writes ``walkforward.json`` (the header and the folds); on ``resume`` checks that its
    folds are those laid out now."""
    fold_layout = {n: [f.to_dict() for f in fs] for n, fs in by_instrument.items()}
    several = len(by_instrument) > 1
    layout = {**header, "folds": fold_layout if several else next(iter(fold_layout.values()))}
    layout = json.loads(json.dumps(layout))
    if not resume:
        atomic_write_text(out / MANIFEST, json.dumps(layout, indent=2) + "\n")
    elif json.loads((out / MANIFEST).read_text())["folds"] != layout["folds"]:
        raise WalkForwardError(
            f"{out / MANIFEST}: its folds differ from those this version lays out; finish "
            "the walk-forward with the version that started it, or start a new one"
        )


def _tracked_fold(
    tracker: Tracker,
    root: Path,
    index: int,
    cfg: Config,
    live: bool,
    train: Callable[..., tuple[dict, dict]],
) -> tuple[dict, dict]:
    """Fold ``index``'s run ``train`` (called with ``tracker=`` a nested run of ``tracker``
    where ``live``): the nested run gets each update's metrics where ``live`` (read from
    ``metrics.jsonl`` for a fold finished before), then the config, the fold's dates and test
    metrics (of its ``fold.json``) and its files."""
    child = tracker.child()
    finished = (root / FOLD_RESULT).is_file()
    with tracked(child, f"fold {index}", root / TENSORBOARD):
        if live and finished:
            log_metrics_log(child, root / METRICS)
        result = train(tracker=child) if live else train()
        summary = result[0]
        dates = flatten({"dates": summary.get("dates", {})})
        log_outcome(child, root, summary, config_to_dict(cfg), {"fold": index, **dates})
    return result


def walk_forward(
    spec: WalkForwardSpec, *, progress: bool = True, tracker: Tracker = NO_TRACKER
) -> dict:
    """Runs the walk-forward ``spec`` asks for and writes its outputs; returns the report.
    Each fold is a nested run of ``tracker`` (started and ended by the caller).

    Errors are :class:`~marl_jax.errors.MarlJaxError` with one-line messages; ``OUT`` is
    locked for the duration.
    """
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        raise WalkForwardError(f"--out {out}: exists and is not a folder; choose another --out")
    cfg, options = _resolve(spec)
    sweep = _sweep_for(spec, cfg)
    markets = load_markets(cfg)
    oracles = load_oracles(cfg, markets)
    by_instrument = instrument_folds(cfg, markets, options)
    several = len(markets) > 1
    if several and sweep is not None:
        raise WalkForwardError(
            "--sweep with several --data files: not supported; give one --data, or drop --sweep"
        )
    if several and gated(options):
        raise WalkForwardError(
            "--gate with several --data files: not supported; give one --data, or drop --gate"
        )
    if several and cfg.ensemble > 1:  # (a sweep refuses an ensemble itself)
        raise WalkForwardError(
            f"ensemble {cfg.ensemble} with several --data files: not supported; set "
            "ensemble=1, or give one --data"
        )
    with RunLock(out):
        header = _header(cfg, options, markets, sweep, _config_name(spec))
        _record_layout(out, header, by_instrument, spec.resume)
        if several:
            return _run_instruments(
                out, cfg, markets, oracles, by_instrument, header, progress, tracker
            )
        bars, folds = next(iter(markets.values())), next(iter(by_instrument.values()))
        oracle = next(iter(oracles.values()))
        return _run_single(out, cfg, bars, oracle, folds, sweep, header, progress, tracker)


def _run_single(
    out: Path,
    cfg: Config,
    bars: Bars,
    oracle: np.ndarray | None,
    folds: Sequence[Fold],
    sweep: FoldSweep | None,
    header: dict,
    progress: bool,
    tracker: Tracker = NO_TRACKER,
) -> dict:
    """Every fold of one instrument, each a run or a sweep (with the oracle baseline where
    ``oracle``, the planted signal, is given) and a nested run of ``tracker``, then the pooled
    outputs."""
    results = []
    for fold in folds:
        if progress:
            print(
                f"fold {fold.index + 1}/{len(folds)}: train {fold.train}, val {fold.val}, "
                f"test {fold.test}",
                flush=True,
            )
        root = fold_dir(out, fold.index)
        if sweep is not None:
            fold_fn = sweep.run_fold
        elif cfg.ensemble > 1:
            fold_fn = run_ensemble_fold
        else:
            fold_fn = run_fold
        train = functools.partial(
            fold_fn,
            cfg,
            bars,
            fold,
            root,
            progress=progress,
            oracle=oracle,
            select_by=select_by(header["options"]),
            gate=gated(header["options"]),
        )
        results.append(_tracked_fold(tracker, root, fold.index, cfg, sweep is None, train))
    trials = None if sweep is None else pooled_trials([s for s, _ in results])
    return write_outputs(
        out, results, bars, header, cfg, header["config_name"], trial_sharpes=trials
    )


def _run_instruments(
    out, cfg, markets, oracles, by_instrument, header, progress: bool, tracker: Tracker
) -> dict:
    """Every fold over all instruments (:mod:`marl_jax.walkforward.instruments`), each
    instrument with its oracle where it was planted, and a nested run of ``tracker``."""
    count = len(next(iter(by_instrument.values())))
    results = []
    for k in range(count):
        folds = {name: fs[k] for name, fs in by_instrument.items()}
        if progress:
            print(f"fold {k + 1}/{count}: {len(folds)} instruments", flush=True)
        root = fold_dir(out, k)
        train = functools.partial(
            run_instruments_fold,
            cfg,
            markets,
            folds,
            root,
            progress=progress,
            oracles=oracles,
            select_by=select_by(header["options"]),
        )
        results.append(_tracked_fold(tracker, root, k, cfg, True, train))
    return write_instruments_outputs(out, results, markets, header, cfg, header["config_name"])
