"""A whole walk-forward as one library call: lay out the folds, run each, pool the outputs.

``OUT/walkforward.json`` (written first) records the resolved config, the data file and its
SHA-256, the options and the folds; ``--resume`` reads everything from it, refuses a changed
data file, skips finished folds and continues an unfinished one from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

from marl_jax.config import config_from_dict, config_to_dict, load_config
from marl_jax.env import evaluate
from marl_jax.env.features import WARMUP_BARS
from marl_jax.run.files import atomic_write_text
from marl_jax.run.rundir import RunLock
from marl_jax.run.setup import load_market
from marl_jax.walkforward.folds import DEFAULT_VAL_FRACTION, WalkForwardError, make_folds
from marl_jax.walkforward.pooled import write_outputs
from marl_jax.walkforward.runner import SELECT_METRIC, run_fold
from marl_jax.walkforward.sweep import FoldSweep, pooled_trials

__all__ = ["MANIFEST", "WalkForwardSpec", "fold_dir", "walk_forward"]

MANIFEST = "walkforward.json"


@dataclasses.dataclass(frozen=True)
class WalkForwardSpec:
    """What a user asks for (the walk-forward CLI's flags)."""

    out: str
    config: str = "configs/quickstart.yaml"
    overrides: Sequence[str] = ()
    data: str | None = None
    folds: int = 5
    gap: int | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    rolling: int | None = None
    sweep: str | None = None
    resume: bool = False

    def options(self) -> dict:
        return {
            "folds": self.folds,
            "gap": self.gap,
            "val_fraction": self.val_fraction,
            "rolling": self.rolling,
        }


def fold_dir(out: str | Path, index: int) -> Path:
    """The run directory of fold ``index``."""
    return Path(out) / f"fold_{index}"


def _sha256(path: str | None) -> str | None:
    if not path:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        if _sha256(cfg.env.data_path) != recorded["data_sha256"]:
            raise WalkForwardError(
                f"{cfg.env.data_path}: the data file changed since the walk-forward in "
                f"{spec.out} started; restore it or start a new walk-forward in another --out"
            )
        return cfg, recorded["options"]
    if manifest.is_file():
        raise WalkForwardError(
            f"{spec.out} already holds a walk-forward; continue it with --resume or choose "
            "another --out"
        )
    overrides = [*spec.overrides] + ([f"env.data_path={spec.data}"] if spec.data else [])
    return load_config(spec.config, overrides), spec.options()


def _sweep_for(spec: WalkForwardSpec, cfg) -> FoldSweep | None:
    """The sweep each fold trains (``--sweep``, or as recorded for ``--resume``), or None."""
    if spec.resume:
        record = json.loads((Path(spec.out) / MANIFEST).read_text()).get("sweep")
        return None if record is None else FoldSweep.from_record(record, cfg)
    return None if spec.sweep is None else FoldSweep.load(spec.sweep, cfg)


def walk_forward(spec: WalkForwardSpec, *, progress: bool = True) -> dict:
    """Runs the walk-forward ``spec`` asks for and writes its outputs; returns the report.

    Errors are :class:`~marl_jax.errors.MarlJaxError` with one-line messages; ``OUT`` is
    locked for the duration.
    """
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        raise WalkForwardError(f"--out {out}: exists and is not a folder; choose another --out")
    cfg, options = _resolve(spec)
    sweep = _sweep_for(spec, cfg)
    bars = load_market(cfg)
    folds = make_folds(
        len(bars),
        options["folds"],
        window=cfg.env.window,
        warmup=WARMUP_BARS,
        gap=options["gap"],
        val_fraction=options["val_fraction"],
        rolling=options["rolling"],
    )
    with RunLock(out):
        header = {
            "config": config_to_dict(cfg),
            "data": cfg.env.data_path,
            "data_sha256": _sha256(cfg.env.data_path),
            "n_bars": len(bars),
            "options": options,
            "selection": f"the checkpoint with the best validation {SELECT_METRIC}",
        }
        if sweep is not None:
            header["selection"] = f"the sweep member with the best validation {SELECT_METRIC}"
            header["sweep"] = sweep.record()
        layout = json.loads(json.dumps({**header, "folds": [f.to_dict() for f in folds]}))
        if not spec.resume:
            atomic_write_text(out / MANIFEST, json.dumps(layout, indent=2) + "\n")
        elif json.loads((out / MANIFEST).read_text())["folds"] != layout["folds"]:
            raise WalkForwardError(
                f"{out / MANIFEST}: its folds differ from those this version lays out; finish "
                "the walk-forward with the version that started it, or start a new one"
            )
        results = []
        for fold in folds:
            if progress:
                print(
                    f"fold {fold.index + 1}/{len(folds)}: train {fold.train}, val {fold.val}, "
                    f"test {fold.test}",
                    flush=True,
                )
            train = run_fold if sweep is None else sweep.run_fold
            results.append(train(cfg, bars, fold, fold_dir(out, fold.index), progress=progress))
        interval = bars.interval_minutes if math.isfinite(bars.interval_minutes) else 30.0
        ppy = evaluate.periods_per_year_for(interval)
        trials = None if sweep is None else pooled_trials([s for s, _ in results])
        return write_outputs(
            out, results, bars.timestamp, ppy, header, cfg.env.cost_bps, trial_sharpes=trials
        )
