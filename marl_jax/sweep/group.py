"""One compiled group of a sweep, trained as a sharded population: resume from its latest
checkpoint, the updates, NaN isolation, PBT rounds, ``metrics.jsonl`` lines and checkpoints."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from marl_jax.config import TrainingConfig
from marl_jax.env import market
from marl_jax.run.checkpointer import TrainCheckpointer
from marl_jax.run.metrics_log import metrics_lines, tenth_mean, trim_metrics_log
from marl_jax.run.setup import env_params_for
from marl_jax.run.tracking import Tracker, update_metrics
from marl_jax.sweep import pbt as pbt_lib
from marl_jax.sweep.coordination import (
    disk_error,
    first_line,
    is_writer,
    process_0_value,
    process_0_writes,
    write,
)
from marl_jax.sweep.members import Group, Member, member_hparams, seeds
from marl_jax.sweep.options import SweepOptions
from marl_jax.sweep.population import (
    Population,
    PopulationProgram,
    fitting_width,
    member_mesh,
)
from marl_jax.sweep.spec import SweepSpec

__all__ = ["GroupResult", "GroupTrainer"]


def _bounds(name: str) -> tuple[float | None, float | None]:
    """The config's own bounds of training hyperparameter ``name`` (PBT clips into them)."""
    lo = hi = None
    for m in TrainingConfig.model_fields[name].metadata:
        lo = getattr(m, "ge", None) if getattr(m, "ge", None) is not None else lo
        if getattr(m, "gt", None) is not None:
            lo = float(np.nextafter(np.float32(m.gt), np.float32(np.inf)))
        hi = getattr(m, "le", None) if getattr(m, "le", None) is not None else hi
        if getattr(m, "lt", None) is not None:
            hi = float(np.nextafter(np.float32(m.lt), np.float32(-np.inf)))
    return lo, hi


def _cause(row: Mapping[str, float]) -> str:
    bad = sorted(k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v))
    return f"non-finite {bad[0]}" if bad else "non-finite parameters"


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

    def member_state(self, position: int) -> Any:
        """The trained state of the member at ``position`` in the group."""
        return jax.tree.map(lambda x: x[position], self.state)


def _checkpoint_json(
    program: PopulationProgram, update: int, failed: Mapping[int, dict], lineage: pbt_lib.Lineage
) -> dict[str, Any]:
    """What a checkpoint records beside the population: the update, the vmap width and
    padding, the failed members and the PBT lineage."""
    return {
        "update": update,
        "width": program.width,
        "padded": program.padded,
        "failed": {str(k): v for k, v in failed.items()},
        "lineage": lineage.to_json(),
    }


class GroupTrainer:
    """Trains one compiled group: resume, updates, NaN isolation, PBT, checkpoints.

    A checkpoint step holds the whole population, which has no single score: the group's
    checkpoints keep the latest ``checkpoint.max_to_keep`` and no "best" (the leaderboard
    ranks the members from ``metrics.jsonl``).
    """

    def __init__(
        self,
        index: int,
        group: Group,
        spec: SweepSpec,
        options: SweepOptions,
        bars: Any,
        metrics_path: Path,
        train_params: market.EnvParams | None = None,
        trackers: Mapping[int, Tracker] | None = None,
    ):
        self.index, self.group, self.spec, self.options = index, group, spec, options
        # Each member's tracker (started), by global member index: its per-update metrics.
        self.trackers = dict(trackers or {})
        self.cfg = group.config
        self.members = group.members
        self.metrics_path = metrics_path
        # A walk-forward fold passes its own train environment (its span, its normalisation).
        if train_params is None:
            train_params = env_params_for(self.cfg, bars, "train", None)
        self.train_params = train_params
        self.mesh = member_mesh(options.devices)
        self.dir = options.out / "checkpoints" / f"g{index}"
        self.checkpointer = TrainCheckpointer(
            self.dir, max_to_keep=self.cfg.checkpoint.max_to_keep, best_metric=None
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
                metrics={"update": update},
                models={"sweep": ocp.args.JsonSave(host)},
            )
        except Exception as err:  # tensorstore raises several kinds
            raise disk_error(
                self.dir,
                f"cannot write checkpoint {update} ({first_line(err)})",
                self._last_good(),
            ) from None

    def _restore(self) -> tuple[PopulationProgram, Population, dict] | None:
        """The latest checkpoint on this mesh: read whole on every process (it may have been
        saved on another number of devices, so with another padding), then placed."""
        step = self.checkpointer.latest_step()
        if step is None:
            return None
        host = self.checkpointer.restore_json(step, "sweep")
        wanted = self.options.members_per_device
        if wanted is not None and wanted != host["width"] and is_writer():
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
        """Trains the group to ``training.num_updates`` (from its latest checkpoint on
        ``--resume``): metrics lines, PBT rounds, checkpoints, the progress bar."""
        members = self.members
        program, pop, host = self._start()
        start = int(host["update"])
        failed = {int(k): v for k, v in host["failed"].items()}
        lineage = pbt_lib.Lineage.from_json(host["lineage"])
        rows = self._rows(start)
        for member in members:  # the updates before a resume's checkpoint
            self._track(rows[member.index])
        bar = self._bar(start)
        alive = np.asarray(program.gather(pop.alive))
        try:
            for update in range(start + 1, self.num_updates + 1):
                started = time.perf_counter()
                pop, metrics = program.update(pop)
                host_metrics = program.gather(metrics)
                now_alive = np.asarray(program.gather(pop.alive))
                elapsed = time.perf_counter() - started
                records = self._records(update, host_metrics, alive, now_alive, failed, rows)
                alive = now_alive
                with process_0_writes():
                    self._append(records)
                self._track(records)
                if self.pbt is not None and update % self.pbt.interval == 0:
                    if update < self.num_updates:
                        pop = self._exploit(program, pop, rows, alive, update, lineage)
                if update % self.cfg.checkpoint.save_every == 0 or update == self.num_updates:
                    self._save(pop, update, _checkpoint_json(program, update, failed, lineage))
                if bar is not None:
                    sps = int(alive.sum()) * self.cfg.training.batch_size / elapsed
                    self._show(bar, rows, alive, failed, sps)
        finally:
            self._close(bar)
        state = program.gather(pop.state)
        return GroupResult(
            self.index, members, program, self.train_params, state, alive, failed, lineage, rows
        )

    def _start(self) -> tuple[PopulationProgram, Population, dict[str, Any]]:
        """The program, population and checkpoint record to start from: the latest checkpoint
        on ``--resume`` when there is one, else a new population."""
        restored = self._restore() if self.options.resume else None
        if restored is not None:
            return restored
        width = self.options.members_per_device or fitting_width(
            self.cfg, self.train_params, len(self.members), self.mesh
        )
        program = self._program(width)
        pop = program.init(seeds(self.members), member_hparams(self.members))
        return program, pop, {"update": 0, "failed": {}, "lineage": []}

    def _records(
        self,
        update: int,
        host_metrics: Mapping[str, np.ndarray],
        alive: np.ndarray,
        now_alive: np.ndarray,
        failed: dict[int, dict],
        rows: dict[int, list[dict]],
    ) -> list[dict]:
        """The ``metrics.jsonl`` lines of one update, one per member alive after it (also
        appended to ``rows``); a member that turned non-finite goes into ``failed``."""
        records = []
        for i, member in enumerate(self.members):
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
                "env_steps": update * self.cfg.training.batch_size,
                **row,
            }
            rows[member.index].append(record)
            records.append(record)
        return records

    def _close(self, bar: Any) -> None:
        """Closes the progress bar and the checkpointer (a pending background write that
        failed is a disk error)."""
        if bar is not None:
            bar.close()
        try:
            self.checkpointer.close()
        except Exception as err:  # a pending background write failed
            raise disk_error(
                self.dir,
                f"a checkpoint could not be written ({first_line(err)})",
                self._last_good(),
            ) from None

    # ------------------------------------------------------------------ pieces

    def _rows(self, start: int) -> dict[int, list[dict]]:
        """This group's metrics rows up to ``start``; ``metrics.jsonl`` loses this group's later
        lines (written after the checkpoint a resume starts from)."""

        def keep(row: dict) -> bool:
            return not (row.get("group") == self.index and row["update"] > start)

        def rewrite(path: Path, text: str) -> None:
            write(path, text, self._last_good())

        with process_0_writes():
            kept = trim_metrics_log(self.metrics_path, keep, rewrite if is_writer() else None)
        rows: dict[int, list[dict]] = {m.index: [] for m in self.members}
        for row in kept:
            if row.get("group") == self.index:
                rows[row["member"]].append(row)
        return rows

    def _append(self, records: list[dict]) -> None:
        if not is_writer() or not records:
            return
        try:
            with self.metrics_path.open("a") as fh:
                fh.write(metrics_lines(records))
        except OSError as err:
            raise disk_error(
                self.metrics_path, f"cannot write ({err.strerror or err})", self._last_good()
            ) from None

    def _track(self, records: list[dict]) -> None:
        """Logs each record to its member's tracker, at its update."""
        for record in records:
            tracker = self.trackers.get(record["member"])
            if tracker is not None:
                tracker.log_metrics(update_metrics(record), step=int(record["update"]))

    def _bar(self, start: int):
        if not self.options.progress or not is_writer():
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.num_updates,
            initial=start,
            unit="update",
            dynamic_ncols=True,
            desc=f"group {self.index} ({len(self.members)} members)",
        )

    def _show(
        self,
        bar: Any,
        rows: Mapping[int, list[dict]],
        alive: np.ndarray,
        failed: Mapping[int, dict],
        sps: float,
    ) -> None:
        """One update on the progress bar: speed, the best member so far, the failures."""
        live = [m.index for i, m in enumerate(self.members) if alive[i]]
        sign = 1.0 if self.pbt is None or self.pbt.mode == "max" else -1.0
        score = {j: tenth_mean([r[self.metric] for r in rows[j]]) for j in live}
        scored = [j for j in live if math.isfinite(score[j])]
        best = max(scored, key=lambda j: sign * score[j], default=None)
        bar.update(1)
        bar.set_postfix(
            sps=f"{sps:,.0f}",
            best=(
                f"m{best} {rows[best][-1]['average_reward'] * 1e4:+.2f}bp"
                if best is not None and rows[best]
                else "-"
            ),
            failed=len(failed),
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
        table = pbt_lib.host_hparams(current)
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
        source, new_table = process_0_value(
            (plan.source, {k: np.asarray(v) for k, v in plan.hparams.items()})
        )
        if not plan.events:
            return pop
        for event in plan.events:  # member positions -> global member indices
            event["member"] = self.members[event["member"]].index
            event["source"] = self.members[event["source"]].index
        lineage.record(plan.events)
        return program.exploit(pop, np.asarray(source), {**table, **new_table})
