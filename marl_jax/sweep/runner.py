"""A whole sweep: groups of members trained as sharded populations, PBT, checkpoints, resume,
the leaderboard, the curves and the best members' reports and exports.

Layout of ``--out``::

    sweep.yaml          the resolved config and sweep (a resume must match it)
    metrics.jsonl       one line per member per update (``group``, ``member``, ``update``, ...)
    leaderboard.csv     per member: seed, hyperparameters (final; lineage for PBT), final
    leaderboard.json    reward, the greedy policy's test-split metrics, baselines, rank, status
    sweep_curves.png    every member's learning curve, the best highlighted
    best/               report.json, equity_curve.png, strategic_marl.pt of the best member
    top/RANK-mMEMBER/   the same for the top ``export_top`` members (when more than one)
    checkpoints/gG/     Orbax steps of group G's population

Members are ranked by the sweep's metric (``pbt.metric``, default ``average_reward``) averaged
over the last tenth of training: the test split is reported, never used to choose. Failed
members rank last. Only process 0 writes the shared files; checkpoints are written by every
process (Orbax, multi-host safe).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from jax.experimental import multihost_utils

from marl_jax.agents import AGENT_NAMES
from marl_jax.config import Config, config_to_dict
from marl_jax.env import evaluate, market
from marl_jax.errors import MarlJaxError
from marl_jax.mappo import HPARAM_NAMES
from marl_jax.run.checkpointer import TrainCheckpointer
from marl_jax.run.files import atomic_write_text
from marl_jax.run.loop import read_metrics_log
from marl_jax.run.plots import plot_equity_curves, save_png
from marl_jax.run.report import REPORT_METRICS, greedy_policy
from marl_jax.run.rundir import RunLock
from marl_jax.run.setup import env_params_for, load_market
from marl_jax.run.steps import model_metadata
from marl_jax.sweep import pbt as pbt_lib
from marl_jax.sweep.members import Group, Member, describe, expand, member_hparams, seeds
from marl_jax.sweep.population import (
    Population,
    PopulationProgram,
    fitting_width,
    member_mesh,
)
from marl_jax.sweep.spec import SweepSpec

__all__ = ["SweepOptions", "run_sweep"]


class SweepRunError(MarlJaxError, RuntimeError):
    """A sweep that cannot start, continue or write its outputs."""


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep (not what: that is the config and the sweep spec)."""

    out: Path
    resume: bool = False
    progress: bool = True
    export_top: int = 1
    members_per_device: int | None = None
    devices: Sequence[jax.Device] | None = None


# ----------------------------------------------------------------------------- helpers


def _is_writer() -> bool:
    return jax.process_index() == 0


def _write(path: Path, text: str, last_good: str) -> None:
    """Atomic write by process 0; a full or unwritable disk stops the sweep in one line."""
    if not _is_writer():
        return
    try:
        atomic_write_text(path, text)
    except OSError as err:
        raise _disk_error(path, f"cannot write ({err.strerror or err})", last_good) from None


def _disk_error(where: Path, what: str, last_good: str) -> SweepRunError:
    """The one-line stop for a write that failed: what, where, and where a resume starts."""
    return SweepRunError(
        f"{where}: {what}; free space or fix permissions, then --resume ({last_good})"
    )


def _stop_together(failed: bool) -> None:
    """Every process learns whether process 0's writes failed, and the others stop too
    (else they would wait for it in their next collective)."""
    if jax.process_count() > 1 and bool(_one(np.int32(failed))) and not _is_writer():
        raise SweepRunError(
            "process 0 could not write the sweep's outputs (its own error says why); fix "
            "that, then rerun every process with --resume"
        )


@contextlib.contextmanager
def _process_0_writes():
    """Wraps the writes only process 0 makes: a failure there stops every process."""
    try:
        yield
    except BaseException:
        _stop_together(True)
        raise
    _stop_together(False)


def _bounds(name: str) -> tuple[float | None, float | None]:
    """The config's own bounds of training hyperparameter ``name`` (PBT clips into them)."""
    from marl_jax.config import TrainingConfig

    lo = hi = None
    for m in TrainingConfig.model_fields[name].metadata:
        lo = getattr(m, "ge", None) if getattr(m, "ge", None) is not None else lo
        if getattr(m, "gt", None) is not None:
            lo = float(np.nextafter(np.float32(m.gt), np.float32(np.inf)))
        hi = getattr(m, "le", None) if getattr(m, "le", None) is not None else hi
        if getattr(m, "lt", None) is not None:
            hi = float(np.nextafter(np.float32(m.lt), np.float32(-np.inf)))
    return lo, hi


def _tail(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    k = max(1, len(values) // 10)
    return float(np.mean(values[-k:]))


def _reason(err: BaseException) -> str:
    """The first line of what went wrong."""
    text = getattr(err, "strerror", None) or str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _json_safe(x: Any) -> Any:
    """``x`` with non-finite floats as None (strict JSON)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _one(value: Any) -> Any:
    """Process 0's ``value`` on every process (the same decision everywhere)."""
    if jax.process_count() == 1:
        return value
    return multihost_utils.broadcast_one_to_all(value)


def _cause(row: Mapping[str, float]) -> str:
    bad = sorted(k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v))
    return f"non-finite {bad[0]}" if bad else "non-finite parameters"


# ----------------------------------------------------------------------------- one group


@dataclasses.dataclass
class GroupResult:
    """What a trained group leaves for the leaderboard."""

    group: int
    members: tuple[Member, ...]
    program: PopulationProgram
    train_params: market.EnvParams  # host arrays
    state: Any  # host TrainState of the members (padding dropped)
    alive: np.ndarray
    failed: dict[int, dict]  # global member index -> {"update", "cause"}
    lineage: pbt_lib.Lineage
    rows: dict[int, list[dict]]  # global member index -> metrics rows


class GroupTrainer:
    """Trains one compiled group: resume, updates, NaN isolation, PBT, checkpoints."""

    def __init__(
        self,
        index: int,
        group: Group,
        spec: SweepSpec,
        options: SweepOptions,
        bars: Any,
        metrics_path: Path,
    ):
        self.index, self.group, self.spec, self.options = index, group, spec, options
        self.cfg = group.config
        self.members = group.members
        self.metrics_path = metrics_path
        self.train_params = env_params_for(self.cfg, bars, "train", None)
        self.norm = market.get_normalisation(self.train_params)
        self.mesh = member_mesh(options.devices)
        self.dir = options.out / "checkpoints" / f"g{index}"
        self.checkpointer = TrainCheckpointer(
            self.dir,
            max_to_keep=self.cfg.checkpoint.max_to_keep,
            best_metric="score",
            save_every=1,
        )
        self.num_updates = self.cfg.training.num_updates
        self.pbt = spec.pbt if spec.strategy == "pbt" else None
        self.metric = spec.pbt.metric if spec.pbt is not None else "average_reward"

    def _last_good(self) -> str:
        try:  # a checkpoint still being written in the background counts once complete
            self.checkpointer.wait_until_finished()
        except Exception:  # it failed: the latest complete one stays the last good one
            pass
        step = self.checkpointer.latest_step()
        if step is None:
            return "no checkpoint of this group was written yet"
        return f"the last good checkpoint is {self.dir / str(step)}"

    def _program(self, width: int | None) -> PopulationProgram:
        return PopulationProgram(
            self.cfg, self.train_params, len(self.members), self.mesh, width=width
        )

    def _save(self, pop: Population, update: int, host: dict) -> None:
        import orbax.checkpoint as ocp

        try:  # Orbax writes in the background: its errors may surface at the next save
            self.checkpointer.save(
                update,
                pop,
                config=config_to_dict(self.cfg),
                norm={},
                metrics={"score": 0.0, "update": update},
                models={"sweep": ocp.args.JsonSave(host)},
                force=True,
            )
        except Exception as err:  # tensorstore raises several kinds
            raise _disk_error(
                self.dir, f"cannot write checkpoint {update} ({_reason(err)})", self._last_good()
            ) from None

    def _restore(self) -> tuple[PopulationProgram, Population, dict] | None:
        """The latest checkpoint on this mesh: read whole on every process (it may have been
        saved on another number of devices, so with another padding), then placed."""
        step = self.checkpointer.latest_step()
        if step is None:
            return None
        host = self.checkpointer.restore_json(step, "sweep")
        wanted = self.options.members_per_device
        if wanted is not None and wanted != host["width"] and _is_writer():
            print(
                f"note: --members-per-device {wanted} differs from the {host['width']} this "
                "sweep started with: the resumed result will differ in the last bits"
            )
        # The saved vmap width keeps every member's arithmetic, hence the result, bit for bit.
        program = self._program(self.options.members_per_device or host["width"])
        target = jax.tree.map(
            lambda a: np.zeros((host["padded"], *a.shape[1:]), a.dtype), program.abstract()
        )
        restored = self.checkpointer.restore_item(step, "state", target)
        return program, program.from_host(restored), host

    def train(self) -> GroupResult:
        members = self.members
        restored = self._restore() if self.options.resume else None
        if restored is None:
            width = self.options.members_per_device or fitting_width(
                self.cfg, self.train_params, len(members), self.mesh
            )
            program = self._program(width)
            pop = program.init(seeds(members), member_hparams(members))
            host: dict[str, Any] = {"update": 0, "failed": {}, "lineage": []}
        else:
            program, pop, host = restored
        start = int(host["update"])
        failed = {int(k): v for k, v in host["failed"].items()}
        lineage = pbt_lib.Lineage.from_json(host["lineage"])
        rows = self._rows(start)
        t = self.cfg.training
        steps_per_update = t.num_envs * t.rollout_len
        bar = self._bar(start)
        alive = np.asarray(program.gather(pop.alive))
        try:
            for update in range(start + 1, self.num_updates + 1):
                started = time.perf_counter()
                pop, metrics = program.update(pop)
                host_metrics = program.gather(metrics)
                now_alive = np.asarray(program.gather(pop.alive))
                elapsed = time.perf_counter() - started
                lines = []
                for i, member in enumerate(members):
                    if not alive[i]:
                        continue
                    row = {k: float(v[i]) for k, v in host_metrics.items()}
                    if not now_alive[i]:
                        failed[member.index] = {"update": update, "cause": _cause(row)}
                        continue
                    record = {
                        "group": self.index,
                        "member": member.index,
                        "update": update,
                        "env_steps": update * steps_per_update,
                        **row,
                    }
                    rows[member.index].append(record)
                    lines.append(json.dumps(record) + "\n")
                alive = now_alive
                with _process_0_writes():
                    self._append(lines)
                if (
                    self.pbt is not None
                    and update % self.pbt.interval == 0
                    and update < (self.num_updates)
                ):
                    pop = self._exploit(program, pop, rows, alive, update, lineage)
                save_every = self.cfg.checkpoint.save_every
                if update % save_every == 0 or update == self.num_updates:
                    self._save(
                        pop,
                        update,
                        {
                            "update": update,
                            "width": program.width,
                            "padded": program.padded,
                            "failed": {str(k): v for k, v in failed.items()},
                            "lineage": lineage.to_json(),
                        },
                    )
                if bar is not None:
                    live = [m.index for i, m in enumerate(members) if alive[i]]
                    sign = 1.0 if self.pbt is None or self.pbt.mode == "max" else -1.0
                    scored = [j for j in live if math.isfinite(_tail(self._metric(rows[j])))]
                    best = max(
                        scored, key=lambda j: sign * _tail(self._metric(rows[j])), default=None
                    )
                    bar.update(1)
                    bar.set_postfix(
                        sps=f"{int(alive.sum()) * steps_per_update / elapsed:,.0f}",
                        best=(
                            f"m{best} {rows[best][-1]['average_reward'] * 1e4:+.2f}bp"
                            if best is not None and rows[best]
                            else "-"
                        ),
                        failed=len(failed),
                    )
        finally:
            if bar is not None:
                bar.close()
            try:
                self.checkpointer.close()
            except Exception as err:  # a pending background write failed
                raise _disk_error(
                    self.dir,
                    f"a checkpoint could not be written ({_reason(err)})",
                    self._last_good(),
                ) from None
        state = program.gather(pop.state)
        return GroupResult(
            self.index,
            members,
            program,
            self.train_params,
            state,
            alive,
            failed,
            lineage,
            rows,
        )

    # ------------------------------------------------------------------ pieces

    def _metric(self, rows: Sequence[Mapping]) -> list[float]:
        return [r[self.metric] for r in rows]

    def _rows(self, start: int) -> dict[int, list[dict]]:
        """This group's metrics rows up to ``start``; ``metrics.jsonl`` loses this group's later
        lines (written after the checkpoint a resume starts from)."""
        rows: dict[int, list[dict]] = {m.index: [] for m in self.members}
        kept = []
        for row in read_metrics_log(self.metrics_path):  # stops at a line cut by a kill
            if row.get("group") == self.index and row["update"] > start:
                continue
            kept.append(row)
            if row.get("group") == self.index:
                rows[row["member"]].append(row)
        text = "".join(json.dumps(r) + "\n" for r in kept)
        with _process_0_writes():
            if _is_writer() and self.metrics_path.read_text() != text:
                _write(self.metrics_path, text, self._last_good())
        return rows

    def _append(self, lines: list[str]) -> None:
        if not _is_writer() or not lines:
            return
        try:
            with self.metrics_path.open("a") as fh:
                fh.write("".join(lines))
        except OSError as err:
            raise _disk_error(
                self.metrics_path, f"cannot write ({err.strerror or err})", self._last_good()
            ) from None

    def _bar(self, start: int):
        if not self.options.progress or not _is_writer():
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.num_updates,
            initial=start,
            unit="update",
            dynamic_ncols=True,
            desc=f"group {self.index} ({len(self.members)} members)",
        )

    def _exploit(
        self,
        program: PopulationProgram,
        pop: Population,
        rows: Mapping[int, list[dict]],
        alive: np.ndarray,
        update: int,
        lineage: pbt_lib.Lineage,
    ) -> Population:
        """One PBT round at ``update``: rank by the metric over the last interval."""
        assert self.pbt is not None
        interval = self.pbt.interval
        scores = np.array(
            [
                np.mean([r[self.metric] for r in rows[m.index][-interval:]])
                if rows[m.index]
                else np.nan
                for m in self.members
            ]
        )
        current = program.gather(pop.state.hparams)
        table = {k: np.asarray(getattr(current, k)) for k in HPARAM_NAMES}
        names = [k.split(".", 1)[1] for k in self.spec.perturbed_keys]
        samplers = {}
        for key, dist in self.spec.random.items():
            if key.split(".", 1)[-1] in names:
                samplers[key.split(".", 1)[1]] = lambda rng, d=dist: d.sample(rng, 1)[0]
        settings = pbt_lib.PBTSettings(
            quantile=self.pbt.quantile,
            resample_prob=self.pbt.resample_prob,
            perturb=tuple(self.pbt.perturb),
            mode=self.pbt.mode,
        )
        rng = np.random.default_rng([self.spec.sample_seed, self.index, update])
        plan = pbt_lib.plan(
            rng,
            scores,
            alive,
            {k: table[k] for k in names},
            settings,
            {k: _bounds(k) for k in names},
            samplers,
            step=update,
        )
        source, new_table = _one((plan.source, {k: np.asarray(v) for k, v in plan.hparams.items()}))
        if not plan.events:
            return pop
        for event in plan.events:  # member positions -> global member indices
            event["member"] = self.members[event["member"]].index
            event["source"] = self.members[event["source"]].index
        lineage.record(plan.events)
        return program.exploit(pop, np.asarray(source), {**table, **new_table})


# ----------------------------------------------------------------------------- outputs


def _member_state(result: GroupResult, position: int) -> Any:
    return jax.tree.map(lambda x: x[position], result.state)


def _leaderboard(
    results: Sequence[GroupResult], bars: Any, metric: str, mode: str
) -> tuple[list[dict], dict[int, Any]]:
    """Rows ranked best first, and each member's (state, result, test run, baselines) for
    the exports."""
    rows, where = [], {}
    for result in results:
        cfg = result.program.config
        test = env_params_for(cfg, bars, "test", market.get_normalisation(result.train_params))
        baselines = evaluate.evaluate_baselines(test, seed=cfg.seed)
        for pos, member in enumerate(result.members):
            hp = {k: float(np.asarray(getattr(result.state.hparams, k))[pos]) for k in HPARAM_NAMES}
            history = result.rows[member.index]
            row: dict[str, Any] = {
                "member": member.index,
                "group": result.group,
                "seed": member.seed,
                "status": "ok" if member.index not in result.failed else "failed",
                "cause": result.failed.get(member.index, {}).get("cause", ""),
                "failed_at": result.failed.get(member.index, {}).get("update"),
                "values": {k: _plain(v) for k, v in member.values.items()},
                "hparams": hp,
                "updates": history[-1]["update"] if history else 0,
                "final_reward": _tail([r["average_reward"] for r in history]),
                "score": _tail([r[metric] for r in history]),
                "lineage": result.lineage.of(member.index),
                "ancestry": result.lineage.ancestry(member.index),
            }
            state = _member_state(result, pos)
            run = None
            if row["status"] == "ok":
                run = evaluate.run_policy(greedy_policy(result.program.algo, state), test)
                row["test"] = {k: float(run.metrics[k]) for k in REPORT_METRICS}
            else:
                row["test"] = {k: None for k in REPORT_METRICS}
            row["baselines"] = {
                name: {k: float(b.metrics[k]) for k in REPORT_METRICS}
                for name, b in baselines.items()
            }
            rows.append(row)
            where[member.index] = (state, result, run, baselines)
    sign = -1.0 if mode == "max" else 1.0

    def key(r: dict) -> tuple:
        ok = r["status"] == "ok" and math.isfinite(r["score"])
        return (0 if ok else 1, sign * r["score"] if ok else 0.0, r["member"])

    rows.sort(key=key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows, where


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _csv(rows: Sequence[dict]) -> str:
    hp_names = list(HPARAM_NAMES)
    value_names = sorted({k for r in rows for k in r["values"]})
    baseline_names = sorted({k for r in rows for k in r["baselines"]})
    header = [
        "rank",
        "member",
        "group",
        "seed",
        "status",
        "cause",
        "updates",
        "score",
        "final_reward",
        *[f"test_{k}" for k in REPORT_METRICS],
        *[f"{b}_sharpe" for b in baseline_names],
        *value_names,
        *[f"final_{k}" for k in hp_names],
        "ancestry",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow(
            [
                r["rank"],
                r["member"],
                r["group"],
                r["seed"],
                r["status"],
                r["cause"],
                r["updates"],
                r["score"],
                r["final_reward"],
                *[r["test"][k] for k in REPORT_METRICS],
                *[r["baselines"][b]["sharpe"] for b in baseline_names],
                *[json.dumps(r["values"].get(k)) for k in value_names],
                *[r["hparams"][k] for k in hp_names],
                " <- ".join(str(m) for m in r["ancestry"]),
            ]
        )
    return buffer.getvalue()


def _smoothed(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Updates and the moving average (a tenth of the run) of the reward, in bp."""
    updates = np.array([r["update"] for r in records])
    reward = np.array([r["average_reward"] for r in records]) * 1e4
    width = max(1, len(records) // 10)
    return updates[width - 1 :], np.convolve(reward, np.ones(width) / width, mode="valid")


def _curves(rows: Sequence[dict], history: Mapping[int, list[dict]], path: Path) -> None:
    from marl_jax.run.plots import _figure

    fig = _figure(10, 5)
    ax = fig.add_subplot(1, 1, 1)
    best = rows[0]["member"] if rows else None
    for member, records in sorted(history.items()):
        if records and member != best:
            ax.plot(*_smoothed(records), lw=0.8, alpha=0.4, color="tab:gray")
    if best is not None and history.get(best):
        ax.plot(*_smoothed(history[best]), lw=2.5, color="tab:red", label=f"best: member {best}")
        ax.legend(loc="best")
    ax.set_xlabel("update")
    ax.set_ylabel("average reward per step (bp), moving average")
    ax.set_title(f"sweep: {len(history)} members")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def _export(folder: Path, row: dict, entry: Any) -> None:
    """report.json, equity_curve.png and strategic_marl.pt of one member."""
    state, result, run, baselines = entry
    algo = result.program.algo
    curves = {"policy": run.equity, **{k: v.equity for k, v in baselines.items()}}
    folder.mkdir(parents=True, exist_ok=True)
    plot_equity_curves(
        curves, folder / "equity_curve.png", title=f"test split: member {row['member']} (greedy)"
    )
    report = {
        "split": "test",
        "member": {k: row[k] for k in ("member", "group", "seed", "rank", "values", "hparams")},
        "policy": row["test"],
        "baselines": row["baselines"],
        "training": {"updates": row["updates"], "final_reward": row["final_reward"]},
        "lineage": row["lineage"],
        "normalisation": market.get_normalisation(result.train_params).to_dict(),
    }
    atomic_write_text(folder / "report.json", json.dumps(report, indent=2) + "\n")
    try:
        from bridge.convert import new_checkpoint, save_pt_checkpoint
    except ImportError as err:
        print(
            f"warning: {folder / 'strategic_marl.pt'} not written: the bridge needs torch ({err})"
        )
        return
    variables = jax.tree.map(np.asarray, algo.model_variables(state))
    norm = market.get_normalisation(result.train_params)
    ckpt = new_checkpoint(
        {name: variables["agents"][name] for name in AGENT_NAMES},
        variables["critic"],
        algo.modules,
        metadata=model_metadata(state, norm),
    )
    save_pt_checkpoint(ckpt, folder / "strategic_marl.pt")


def _summary(rows: Sequence[dict], top: int = 10) -> str:
    head = f"{'rank':>4} {'member':>6} {'status':>7} {'score':>12} {'test sharpe':>12}  values"
    lines = [head, "-" * len(head)]
    for r in rows[:top]:
        sharpe = r["test"]["sharpe"]
        values = " ".join(f"{k}={v}" for k, v in r["values"].items())
        lines.append(
            f"{r['rank']:>4} {r['member']:>6} {r['status']:>7} {r['score']:>12.4g} "
            f"{(f'{sharpe:.3f}' if sharpe is not None else '-'):>12}  {values}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the sweep


def _sweep_record(cfg: Config, spec: SweepSpec, groups: Sequence[Group]) -> str:
    record = {
        "config": config_to_dict(cfg),
        "sweep": spec.model_dump(mode="json"),
        "groups": [
            {"static": {k: _plain(v) for k, v in g.static.items()}, "members": len(g.members)}
            for g in groups
        ],
    }
    return yaml.safe_dump(record, sort_keys=False)


def _write_outputs(
    results: Sequence[GroupResult], bars: Any, spec: SweepSpec, options: SweepOptions
) -> list[dict]:
    """The leaderboard, the curves, the best members' exports and the summary (process 0)."""
    out = options.out
    metric = spec.pbt.metric if spec.pbt is not None else "average_reward"
    mode = spec.pbt.mode if spec.pbt is not None else "max"
    rows, where = _leaderboard(results, bars, metric, mode)
    done = "training is complete"
    _write(out / "leaderboard.json", json.dumps(_json_safe(rows), indent=2) + "\n", done)
    _write(out / "leaderboard.csv", _csv(rows), done)
    history = {m: recs for res in results for m, recs in res.rows.items()}
    _curves(rows, history, out / "sweep_curves.png")
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        _export(out / "best", ok[0], where[ok[0]["member"]])
        if options.export_top > 1:
            for r in ok[: options.export_top]:
                _export(out / "top" / f"{r['rank']:02d}-m{r['member']}", r, where[r["member"]])
    print(_summary(rows), flush=True)
    return rows


def run_sweep(cfg: Config, spec: SweepSpec, options: SweepOptions) -> list[dict]:
    """Runs the sweep of ``spec`` over ``cfg`` into ``options.out``; returns the leaderboard."""
    out = options.out
    groups = expand(cfg, spec)
    record = _sweep_record(cfg, spec, groups)
    lock = RunLock(out) if _is_writer() else None
    existing = out / "sweep.yaml"
    started = bool(_one(np.int32(existing.is_file())))
    differs = bool(_one(np.int32(started and existing.read_text() != record)))
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
        if _is_writer():
            print(
                f"{size} members, {describe(groups)}; {len(devices)} device(s) "
                f"({devices[0].platform}) in {jax.process_count()} process(es)",
                flush=True,
            )
        metrics_path = out / "metrics.jsonl"
        with _process_0_writes():
            out.mkdir(parents=True, exist_ok=True)
            _write(existing, record, "nothing was trained yet")
            if _is_writer() and not metrics_path.exists():
                _write(metrics_path, "", "nothing was trained yet")
        bars = load_market(cfg)
        results = [
            GroupTrainer(g_index, group, spec, options, bars, metrics_path).train()
            for g_index, group in enumerate(groups)
        ]
        rows: list[dict] = []
        with _process_0_writes():  # the others wait here for process 0's outputs
            if _is_writer():
                rows = _write_outputs(results, bars, spec, options)
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
