"""Does the policy learn the market? Walk-forward on public bar files, per reward/action/sizing
variant, against buy-and-hold and the linear baseline, net of 1 bp (issue 15, section 6).

Data: the bar files two PyPI packages ship, fetched at run time with ``pip download --no-deps``
into ``--cache`` (default ``~/.cache/marl-jax/bench-data``, never the repository) and converted
there to the plain ``timestamp,open,high,low,close,volume`` CSV that ``load_bars`` reads:

- gym-anytrading 2.0.0: ``FOREX_EURUSD_1H_ASK.csv`` (hourly), ``STOCKS_GOOGL.csv`` (daily);
- backtesting 0.6.6: ``EURUSD.csv`` (hourly), ``GOOG.csv`` (daily).

Runs: for each file and variant (``pnl``, ``excess``, ``differential_sharpe`` rewards, ``delta``
actions, ``vol_target`` sizing; ``pooled``, all files in one run, once ``env.data_paths``
exists), a ``--folds``-fold ``python -m marl_jax.walkforward`` of ``--config`` at
``env.cost_bps=1`` with seed 0. Then, per file, the variant with the best mean validation score
(each fold's chosen checkpoint's validation net log return, from ``fold_K/fold.json``; the test
folds play no part) runs ``--seeds - 1`` more seeds. Each walk-forward has its own folder
``OUT/FILE/VARIANT/seed_S``: a finished one (``report.json``) is skipped, a started one
(``walkforward.json``) continues with the walk-forward's ``--resume``, so the benchmark can be
killed and rerun at will.

Table: per file and variant, the pooled out-of-sample Sharpe, active IR against buy-and-hold,
alpha t-statistic, turnover, the linear baseline's active IR, the active IR at 0x/1x/2x cost, the
test folds in which the position never changes sign (a scaled buy-and-hold there) and the wall
time; whether the goal is met (the chosen variant's mean pooled active IR over its
seeds is positive, above the linear baseline's, with non-zero turnover). Printed, and written
to ``OUT/learning.md``.

    python benchmarks/learning.py --dry-run                    # the plan, nothing trained
    nohup python benchmarks/learning.py > learning.log 2>&1 &  # hours on a 2-core CPU
    python benchmarks/learning.py --files bt_eurusd_1h --variants pnl --folds 2 \\
        --seeds 1 --set training.total_timesteps=2048         # a smoke test, ~2 CPU minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from marl_jax.run.datasets import (  # the public bar files (fetched, never committed)
    DEFAULT_CACHE,
    SOURCES,
    DatasetError,
    fetch,
)

DEFAULT_CONFIG = "configs/quickstart.yaml"
DEFAULT_OUT = "runs/learning"
COST_BPS = 1.0
TABLE = "learning.md"
WALL_TIMES = "wall_times.json"
POOLED = "pooled"
POOLED_FILE = "all"  # the file label of the pooled-instruments run

# A variant's overrides, after the base config's and the user's --set.
VARIANTS: dict[str, tuple[str, ...]] = {
    "pnl": ("env.reward=pnl",),
    "excess": ("env.reward=excess",),
    "differential_sharpe": ("env.reward=differential_sharpe",),
    "delta": ("env.action_mode=delta",),
    "vol_target": ("env.position_sizing=vol_target",),
    POOLED: (),
}


class BenchmarkError(Exception):
    """A one-line reason the benchmark cannot go on."""


# ------------------------------------------------------------------------------ plan


def pooled_supported() -> bool:
    """Whether the config schema has several instruments (``env.data_paths``)."""
    from marl_jax.config import EnvConfig

    return "data_paths" in EnvConfig.model_fields


@dataclasses.dataclass(frozen=True)
class Run:
    """One walk-forward of the benchmark."""

    file: str
    variant: str
    seed: int
    out: Path
    overrides: tuple[str, ...]
    data: str | None
    status: str  # "new", "resume", "done" or "skip"
    reason: str = ""

    @property
    def key(self) -> str:
        return f"{self.file}/{self.variant}/seed_{self.seed}"


def run_status(out: Path, folds: int) -> str:
    """``done`` (report.json), ``resume`` (walkforward.json) or ``new``; refuses a folder laid
    out for another number of folds."""
    for name, status in (("report.json", "done"), ("walkforward.json", "resume")):
        path = out / name
        if path.is_file():
            recorded = json.loads(path.read_text())["options"]["folds"]
            if recorded != folds:
                raise BenchmarkError(
                    f"{path}: a walk-forward of {recorded} folds, not --folds {folds}; use "
                    "another --out or the same --folds"
                )
            return status
    return "new"


def plan_run(
    out_root: Path,
    file: str,
    variant: str,
    seed: int,
    folds: int,
    data: Mapping[str, str],
    sets: Sequence[str] = (),
) -> Run:
    """The run of ``variant`` on ``file`` (``POOLED_FILE`` for the pooled one) with ``seed``."""
    out = out_root / file / variant / f"seed_{seed}"
    base = [f"env.cost_bps={COST_BPS:g}"]
    if variant == POOLED:
        if not pooled_supported():
            reason = "env.data_paths is not a config key yet: several instruments are not wired"
            return Run(file, variant, seed, out, (), None, "skip", reason)
        paths = [data[f] for f in data]
        base.append(f"env.data_paths=[{', '.join(paths)}]")
        path = None
    else:
        path = data[file]
    overrides = (*base, *sets, *VARIANTS[variant], f"seed={seed}")
    return Run(file, variant, seed, out, overrides, path, run_status(out, folds))


def plan_first(
    out_root: Path,
    files: Sequence[str],
    variants: Sequence[str],
    folds: int,
    data: Mapping[str, str],
    sets: Sequence[str] = (),
) -> list[Run]:
    """Seed 0 of every variant on every file (the pooled variant once, over all files)."""
    runs = [
        plan_run(out_root, f, v, 0, folds, data, sets)
        for f in files
        for v in variants
        if v != POOLED
    ]
    if POOLED in variants:
        runs.append(plan_run(out_root, POOLED_FILE, POOLED, 0, folds, data, sets))
    return runs


def command(
    run: Run, config: str, folds: int, progress: bool = True, extra: Sequence[str] = ()
) -> list[str]:
    """The ``python -m marl_jax.walkforward`` command line of ``run`` (``extra``: more flags for
    a new walk-forward; a resumed one keeps those it started with)."""
    cmd = [sys.executable, "-m", "marl_jax.walkforward", "--out", str(run.out)]
    if run.status == "resume":
        cmd.append("--resume")
    else:
        cmd += ["--config", config, "--folds", str(folds)]
        cmd += ["--data", run.data] if run.data else []
        for o in run.overrides:
            cmd += ["--set", o]
        cmd += list(extra)
    return cmd + ([] if progress else ["--no-progress"])


# ------------------------------------------------------------------------------ selection


def validation_score(out: Path) -> float | None:
    """The mean over folds of the chosen checkpoint's validation score (``fold_K/fold.json``,
    else the folds recorded in ``report.json``); None when there is none."""
    folds = [json.loads(p.read_text()) for p in sorted(out.glob("fold_*/fold.json"))]
    if not folds and (out / "report.json").is_file():
        folds = json.loads((out / "report.json").read_text()).get("folds", [])
    scores = [f["selection"]["scores"][str(f["selection"]["step"])] for f in folds]
    return statistics.fmean(scores) if scores else None


def choose(runs: Sequence[Run]) -> tuple[str | None, dict[str, float]]:
    """The variant with the best validation score among one file's seed-0 runs, or None while
    any of them is unfinished; also every finished run's score."""
    scores = {r.variant: validation_score(r.out) for r in runs if r.status == "done"}
    scores = {v: s for v, s in scores.items() if s is not None}
    pending = [r for r in runs if r.status in ("new", "resume")]
    if pending or not scores:
        return None, scores
    return max(scores, key=lambda v: (scores[v], -list(VARIANTS).index(v))), scores


# ------------------------------------------------------------------------------ table

COLUMNS = (
    ("Sharpe", "sharpe"),
    ("active IR", "active_ir"),
    ("alpha t", "alpha_t"),
    ("turnover", "turnover"),
)
COSTS = ("active_ir_0x_cost", "active_ir_1x_cost", "active_ir_2x_cost")


def _num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def row_of(report: Mapping) -> dict[str, float]:
    """The table's numbers of one finished walk-forward's ``report.json``."""
    policy, linear = report["metrics"]["policy"], report["metrics"]["linear"]
    row = {key: policy[key] for _, key in COLUMNS}
    row["linear_active_ir"] = linear["active_ir"]
    row.update({k: policy.get(k) for k in COSTS})
    return row


def one_sign_folds(out: Path) -> tuple[int, int] | None:
    """How many test folds of a finished walk-forward hold one sign of position (long, short
    or flat) at every bar, and how many folds there are (its report's ``checks``); None
    without ``report.json``.

    Such a fold is buy-and-hold scaled (or its short): within it the policy times nothing, so
    a positive pooled active IR then comes from which sign each fold chose."""
    path = out / "report.json"
    if not path.is_file():
        return None
    checks = json.loads(path.read_text())["checks"]
    return int(checks["one_sign_folds"]), int(checks["folds"])


def goal(rows: Sequence[Mapping[str, float]]) -> tuple[bool, dict[str, float]]:
    """The goal over the chosen variant's seeds: mean pooled active IR > 0 and above the linear
    baseline's mean, with mean turnover > 0."""
    mean = {
        k: statistics.fmean(r[k] for r in rows)
        for k in ("active_ir", "linear_active_ir", "turnover")
    }
    met = mean["active_ir"] > 0 and mean["active_ir"] > mean["linear_active_ir"]
    return met and mean["turnover"] > 0, mean


def format_tables(
    files: Sequence[str],
    runs: Sequence[Run],
    chosen: Mapping[str, str | None],
    vscores: Mapping[str, Mapping[str, float]],
    walls: Mapping[str, float],
    n_seeds: int,
) -> str:
    """The markdown tables: a section per file, a row per variant and seed."""
    head = ["variant", "seed", "validation", *(c for c, _ in COLUMNS), "linear active IR"]
    head += ["active IR 0x / 1x / 2x cost", "one-sign test folds", "wall"]
    lines = [f"Net of {COST_BPS:g} bp, pooled out of sample over the test folds.", ""]
    verdicts = []
    for file in files:
        src = SOURCES.get(file)
        about = f" ({src.package} {src.version} {src.member})" if src else " (all files)"
        lines += [f"### {file}{about}", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "---|" * len(head))
        chosen_rows = []
        for r in (r for r in runs if r.file == file):
            if r.status == "skip":
                lines.append(f"| {r.variant} | {r.seed} | skipped: {r.reason} |")
                continue
            if r.status != "done":
                lines.append(f"| {r.variant} | {r.seed} | not finished |")
                continue
            row = row_of(json.loads((r.out / "report.json").read_text()))
            if r.variant == chosen.get(file):
                chosen_rows.append(row)
            cells = [r.variant + (" (chosen)" if r.variant == chosen.get(file) else ""), r.seed]
            cells.append(_num(validation_score(r.out), 4))
            cells += [_num(row[k], 4 if k == "turnover" else 2) for _, k in COLUMNS]
            cells.append(_num(row["linear_active_ir"]))
            cells.append(" / ".join(_num(row[k]) for k in COSTS))
            one_sign = one_sign_folds(r.out)
            cells.append("n/a" if one_sign is None else "{} of {}".format(*one_sign))
            cells.append(_wall(walls.get(r.key)))
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        lines.append("")
        pick = chosen.get(file)
        if file == POOLED_FILE:
            lines += ["Not part of the per-file choice.", ""]
            continue
        if pick is None:
            lines += ["Chosen on validation: pending (some variants are unfinished).", ""]
            verdicts.append(None)
            continue
        shown = ", ".join(f"{v} {s:.4f}" for v, s in vscores.get(file, {}).items())
        lines.append(
            f"Chosen on validation: **{pick}** (mean over folds of the chosen checkpoint's "
            f"validation net log return: {shown})."
        )
        if len(chosen_rows) < n_seeds:
            lines += [f"Goal: pending ({len(chosen_rows)} of {n_seeds} seeds finished).", ""]
            verdicts.append(None)
            continue
        met, mean = goal(chosen_rows)
        verdicts.append(met)
        lines += [
            f"Goal: **{'met' if met else 'not met'}**: mean over {len(chosen_rows)} seeds, "
            f"active IR {mean['active_ir']:.2f} vs linear {mean['linear_active_ir']:.2f}, "
            f"turnover {mean['turnover']:.4f}.",
            "",
        ]
    if verdicts:
        overall = "pending" if None in verdicts else "met" if all(verdicts) else "not met"
        lines.append(f"Goal on every file: **{overall}**.")
    total = sum(walls.get(r.key, 0.0) for r in runs)
    lines.append(f"Wall time of the runs above: {_wall(total)}.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main


def _load_walls(path: Path) -> dict[str, float]:
    return json.loads(path.read_text()) if path.is_file() else {}


def execute(run: Run, args: argparse.Namespace, walls: dict[str, float], walls_path: Path) -> Run:
    """Runs (or resumes) ``run``'s walk-forward; records its wall time; returns it re-planned."""
    from marl_jax.files import atomic_write_text

    extra = getattr(args, "walkforward_flags", ())
    cmd = command(run, args.config, args.folds, progress=not args.no_progress, extra=extra)
    print(f"\n== {run.key}: {'resuming' if run.status == 'resume' else 'starting'}", flush=True)
    start = time.monotonic()
    try:
        rc = subprocess.run(cmd).returncode
    finally:
        walls[run.key] = walls.get(run.key, 0.0) + time.monotonic() - start
        atomic_write_text(walls_path, json.dumps(walls, indent=2) + "\n")
    if rc != 0:
        print(f"== {run.key}: the walk-forward exited {rc}; see its output above", flush=True)
    return dataclasses.replace(run, status=run_status(run.out, args.folds))


def _list(value: str | None, allowed: Sequence[str], flag: str) -> list[str]:
    if value is None:
        return list(allowed)
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise BenchmarkError(f"{flag} {value}: use a comma-separated list of {', '.join(allowed)}")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"base config ({DEFAULT_CONFIG})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder ({DEFAULT_OUT})")
    p.add_argument("--cache", default=DEFAULT_CACHE, help=f"data folder ({DEFAULT_CACHE})")
    p.add_argument("--files", help=f"comma-separated, of {', '.join(SOURCES)} (default all)")
    p.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (default all)")
    p.add_argument("--folds", type=int, default=5, help="walk-forward folds (5)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the chosen variant (3)")
    p.add_argument("--dry-run", action="store_true", help="list the planned runs, train nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (BenchmarkError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


def _main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    files = _list(args.files, list(SOURCES), "--files")
    variants = _list(args.variants, list(VARIANTS), "--variants")
    if args.folds < 1 or args.seeds < 1:
        raise BenchmarkError("--folds and --seeds must be at least 1")
    cache, out = Path(os.path.expanduser(args.cache)), Path(args.out)
    if args.dry_run:
        data = {f: str(cache / f"{f}.csv") for f in files}
    else:
        data = {f: str(fetch(f, cache)) for f in files}
    first = plan_first(out, files, variants, args.folds, data, args.set)
    print(f"plan: {len(files)} files x {len(variants)} variants, {args.folds} folds, seed 0")
    for r in first:
        print(f"  {r.key:40s} {r.status:7s}{r.reason}")
    if args.seeds > 1:
        print(f"  then seeds 1..{args.seeds - 1} of the variant validation picks on each file")
    if args.dry_run:
        return 0
    walls_path = out / WALL_TIMES
    walls = _load_walls(walls_path)
    first = [
        execute(r, args, walls, walls_path) if r.status in ("new", "resume") else r for r in first
    ]
    runs, chosen, vscores = list(first), {}, {}
    for file in files:
        chosen[file], vscores[file] = choose([r for r in first if r.file == file])
        if chosen[file] is None:
            print(f"{file}: no variant chosen: some seed-0 runs did not finish", flush=True)
            continue
        print(f"{file}: validation picks {chosen[file]} ({vscores[file]})", flush=True)
        for seed in range(1, args.seeds):
            r = plan_run(out, file, chosen[file], seed, args.folds, data, args.set)
            runs.append(execute(r, args, walls, walls_path) if r.status != "done" else r)
    shown = files + ([POOLED_FILE] if POOLED in variants else [])
    table = format_tables(shown, runs, chosen, vscores, walls, args.seeds)
    table += f"This invocation took {_wall(time.monotonic() - started)}.\n"
    from marl_jax.files import atomic_write_text

    atomic_write_text(out / TABLE, table)
    print("\n" + table + f"\n(written to {out / TABLE})")
    failed = [r.key for r in runs if r.status in ("new", "resume")]
    if failed:
        print(f"unfinished: {', '.join(failed)}; rerun to resume them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
