"""A whole sweep: groups of members trained as sharded populations, PBT, checkpoints, resume,
the leaderboard, the curves and the best members' reports and exports.

Layout of ``--out``::

    sweep.yaml          the resolved config and sweep (a resume must match it)
    metrics.jsonl       one line per member per update (``group``, ``member``, ``update``, ...)
    leaderboard.csv     per member: seed, hyperparameters (final; lineage for PBT), final
    leaderboard.json    reward, the greedy policy's test-split metrics, baselines, rank, status
    sweep_curves.png    every member's learning curve, the best highlighted
    best/               report.json, returns.csv, equity_curve.png, strategic_marl.pt of the
                        best member
    top/RANK-mMEMBER/   the same for the top ``export_top`` members (when more than one)
    checkpoints/gG/     Orbax steps of group G's population (the latest ``max_to_keep``)

The parts: :mod:`~marl_jax.sweep.group` trains one group, :mod:`~marl_jax.sweep.leaderboard`
ranks the members by the sweep's metric (``pbt.metric``, default ``average_reward``) averaged
over the last tenth of training (the test split is reported, never used to choose; failed
members rank last), :mod:`~marl_jax.sweep.outputs` writes the files, and
:mod:`~marl_jax.sweep.coordination` makes the processes act as one: only process 0 writes the
shared files; checkpoints are written by every process (Orbax, multi-host safe).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import yaml

from marl_jax.config import Config, config_to_dict
from marl_jax.run.rundir import TENSORBOARD, RunLock
from marl_jax.run.setup import load_market
from marl_jax.run.tracking import NO_TRACKER, Tracker, final_metrics, flatten, output_files
from marl_jax.sweep.coordination import (
    SweepRunError,
    is_writer,
    process_0_value,
    process_0_writes,
    write,
)
from marl_jax.sweep.group import GroupTrainer
from marl_jax.sweep.members import Group, describe, expand, plain
from marl_jax.sweep.options import SweepOptions
from marl_jax.sweep.outputs import write_outputs
from marl_jax.sweep.spec import SweepSpec

__all__ = ["SweepRunError", "finish_members", "log_sweep", "member_trackers", "run_sweep"]


def _sweep_record(cfg: Config, spec: SweepSpec, groups: Sequence[Group]) -> str:
    record = {
        "config": config_to_dict(cfg),
        "sweep": spec.model_dump(mode="json"),
        "groups": [
            {"static": {k: plain(v) for k, v in g.static.items()}, "members": len(g.members)}
            for g in groups
        ],
    }
    return yaml.safe_dump(record, sort_keys=False)


def member_trackers(tracker: Tracker, groups: Sequence[Group], out) -> dict[int, Tracker]:
    """A started nested run of ``tracker`` per member, by member index, with the member's
    config as parameters (TensorBoard's in ``OUT/tensorboard/mM``); none for
    :data:`~marl_jax.run.tracking.NO_TRACKER` or on a process other than 0."""
    if tracker is NO_TRACKER or not is_writer():
        return {}
    children: dict[int, Tracker] = {}
    for g_index, group in enumerate(groups):
        for member in group.members:
            child = tracker.child()
            child.start(f"member {member.index}", out / TENSORBOARD / f"m{member.index}")
            children[member.index] = child
            params = {"sweep.member": member.index, "sweep.group": g_index}
            child.log_params({**flatten(config_to_dict(member.config)), **params})
    return children


def finish_members(children: dict[int, Tracker], rows: Sequence[dict]) -> None:
    """Logs each member's leaderboard entry (its test metrics and baselines, score, rank) to
    its tracker and ends it (failed for a member that failed)."""
    for row in rows:
        child = children.pop(row["member"], None)
        if child is None:
            continue
        found = final_metrics({"policy": row["test"], "baselines": row["baselines"]})
        for key in ("rank", "score", "final_reward"):
            if isinstance(row.get(key), int | float) and np.isfinite(row[key]):
                found[f"sweep.{key}"] = float(row[key])
        child.log_metrics(found)
        child.end(failed=row["status"] != "ok")
    for child in children.values():
        child.end(failed=True)


def log_sweep(tracker: Tracker, cfg: Config, spec: SweepSpec, out: Path) -> None:
    """Logs a finished sweep to ``tracker``: the base config and the sweep (``sweep.*``) as
    parameters, the best member's test metrics, and the output files (the best member's under
    ``best``)."""
    params = {"command": "sweep", **flatten(spec.model_dump(mode="json"), "sweep.")}
    tracker.log_params({**flatten(config_to_dict(cfg)), **params})
    best = out / "best"
    report = next((p for p in (out / "report.json", best / "report.json") if p.is_file()), None)
    if report is not None:
        tracker.log_metrics(final_metrics(json.loads(report.read_text())))
    tracker.log_artifacts(output_files(out))
    tracker.log_artifacts(output_files(best), "best")


def run_sweep(
    cfg: Config,
    spec: SweepSpec,
    options: SweepOptions,
    config: str = "<dict>",
    tracker: Tracker = NO_TRACKER,
) -> list[dict]:
    """Runs the sweep of ``spec`` over ``cfg`` into ``options.out``; returns the leaderboard.
    ``config``: the config's name or path as given (recorded in the best members' reports).
    Each member is a nested run of ``tracker`` (started and ended by the caller)."""
    out = options.out
    groups = expand(cfg, spec)
    record = _sweep_record(cfg, spec, groups)
    lock = RunLock(out) if is_writer() else None
    existing = out / "sweep.yaml"
    started = bool(process_0_value(np.int32(existing.is_file())))
    differs = bool(process_0_value(np.int32(started and existing.read_text() != record)))
    if started and not options.resume:
        raise SweepRunError(
            f"{out} already holds a sweep; pass --resume to continue it or choose another --out"
        )
    if options.resume and differs:
        raise SweepRunError(
            f"{existing}: the config or sweep differs from the one this sweep started with; "
            "resume with the same --config, --sweep, --set and --grid, or choose another --out"
        )
    try:
        if lock is not None:
            lock.acquire()
        devices = options.devices or jax.devices()
        size = sum(len(g.members) for g in groups)
        if is_writer():
            print(
                f"{size} members, {describe(groups)}; {len(devices)} device(s) "
                f"({devices[0].platform}) in {jax.process_count()} process(es)",
                flush=True,
            )
        metrics_path = out / "metrics.jsonl"
        with process_0_writes():
            out.mkdir(parents=True, exist_ok=True)
            write(existing, record, "nothing was trained yet")
            if is_writer() and not metrics_path.exists():
                write(metrics_path, "", "nothing was trained yet")
        bars = load_market(cfg)
        children = member_trackers(tracker, groups, out)
        try:
            results = [
                GroupTrainer(
                    g_index, group, spec, options, bars, metrics_path, trackers=children
                ).train()
                for g_index, group in enumerate(groups)
            ]
            rows: list[dict] = []
            with process_0_writes():  # the others wait here for process 0's outputs
                if is_writer():
                    rows = write_outputs(results, bars, spec, options, config)
        except BaseException:
            for child in children.values():
                child.end(failed=True)
            raise
        finish_members(children, rows)
        return rows
    except OSError as err:  # a folder that cannot be made, locked or written
        where = err.filename or out
        raise SweepRunError(
            f"{where}: {err.strerror or err}; choose a writable --out with free space (a "
            "resume continues from the last complete checkpoint)"
        ) from None
    finally:
        if lock is not None:
            lock.release()
