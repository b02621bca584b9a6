"""What does the learner find? Walk-forwards on public bar files with a known edge planted in
them (``python -m marl_jax.plant``), against the oracle that trades that edge, net of 1 bp
(issue 31, item 2).

Data: the bar files ``benchmarks/learning.py`` fetches (``pip download --no-deps`` into
``--cache``, default ``~/.cache/marl-jax/bench-data``, never the repository; its fetching and
conversion are reused here). Default ``--files``: gym-anytrading's hourly EURUSD
(``gym_eurusd_1h``, 6,225 bars) and daily GOOGL (``gym_googl_1d``, 2,335 bars).

Strengths: for each file, signal (``trend``, ``revert``, ``gated``; :mod:`marl_jax.env.plant`)
and target in ``--targets`` (default 1 and 2), the smallest strength ``A`` whose oracle
(``sign(s)``) earns that net active IR against buy-and-hold over the whole planted file at 1 bp
(:func:`marl_jax.env.plant.oracle_summary`; no training). :func:`calibrate` scans ``A`` = 0 and
then ``1e-3`` upwards by factors of 1.5 up to 2 (beyond a few tenths a trend's drift compounds
until the oracle holds one sign, and at some strength the prices overflow: the oracle's IR is
not monotone over the whole range), takes the first scanned strength at or above the target,
then bisects on a log scale between it and the one before until the oracle's IR is within
``--tolerance`` (0.05) of the target. Outcomes: ``hit``; ``natural`` (the unplanted file's own
oracle already reaches the target: strength 0, planted anyway so the run has an oracle row);
``off`` (the IR jumps across the target between two strengths closer than 1e-9: the nearer one
is used and its IR reported); ``unreachable`` (no scanned strength reaches it: no run, and the
table says so with the best IR found). Planted files go to ``OUT/data`` with their sidecars.

Runs: each planted file, and each unplanted file as strength 0, gets a ``--folds``-fold
``python -m marl_jax.walkforward`` of ``--config`` (default ``configs/real_markets.yaml``, the
config users run) at ``env.cost_bps=1`` for seeds ``0 .. --seeds - 1``: seed 0 of every row
first, then seed 1, and so on. Each has its own folder ``OUT/FILE/SIGNAL/ir_T/seed_S``
(``OUT/FILE/unplanted/seed_S`` at strength 0): a finished one (``report.json``) is skipped, a
started one resumed (``--resume``), so the benchmark can be killed and rerun at will.

Table: a row per file, signal and target: the strength, the oracle's whole-file IR, then the
pooled out-of-sample net active IR and turnover of the oracle, linear, momentum, flat,
buy-and-hold and the policy, the policy's capture (its net active IR over the oracle's, per
seed), its timing (the correlation of its test positions with the planted ``s``: a policy can
hold one sign and still time its size) and, beside them, each seed's one-sign test folds
(folds in which the position never changes sign: a policy that holds one sign per fold times
nothing there, whatever its capture). Each figure is the mean over the finished seeds, ``± ``
their standard deviation (two seeds or more); a seed not finished is named as missing, never
filled in. Last, the ensemble of the finished seeds (two or more): at each test bar the mean of
their positions (each seed's checkpoint chosen on its own validation split, so nothing is
chosen on the test folds), charged the same costs, with its IR, turnover, capture, timing and
one-sign folds (:func:`ensemble_numbers`). On the unplanted rows (no edge) the policy
must not lose: the verdict lines say whether its mean net Sharpe (money) and its mean net active
IR (against buy-and-hold) are at least 0. Printed, and written to ``OUT/planted.md``, with the
raw numbers in ``OUT/planted.json``.

Time on the 2-core development machine: a 5-fold walk-forward of ``configs/real_markets.yaml``
trains three members a fold (``ensemble: 3``): about 15 to 20 minutes on the 2,335 daily GOOGL
bars (each member's five folds take 4.5 to 5.3 minutes alone; ``benchmarks/RESULTS.md``). The
default grid is 2 files x (3 signals x 2 targets + strength 0) x 3 seeds = 42 walk-forwards:
about 11 to 14 hours on both cores; ``--set ensemble=1`` trains one member a fold (a third of
that). The smoke run below (one file, signal, target and seed, 2 folds, 2,048 steps: two
walk-forwards with strength 0, one member each) took 80 s of wall time on that machine.
``--dry-run`` fetches the files (if not cached) and calibrates: a few seconds a file; it writes
nothing under ``--out``.

    python benchmarks/planted.py --dry-run                    # plan and strengths, no training
    nohup python benchmarks/planted.py > planted.log 2>&1 &   # the grid: 11-14 h on 2 cores
    python benchmarks/planted.py --files gym_eurusd_1h --signals trend --targets 1 --seeds 1 \\
        --folds 2 --set training.total_timesteps=2048 --set ensemble=1 \\
        --out runs/planted_smoke   # ~1.5 min
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def _learning():
    """``benchmarks/learning.py`` as a module (its fetching, plan states, runner, one-sign
    folds and formatting are reused)."""
    name = "bench_learning"
    if name not in sys.modules:
        path = Path(__file__).resolve().with_name("learning.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


learning = _learning()
BenchmarkError = learning.BenchmarkError
SOURCES = learning.SOURCES
COST_BPS = learning.COST_BPS

DEFAULT_CONFIG = "configs/real_markets.yaml"
DEFAULT_OUT = "runs/planted"
DEFAULT_FILES = ("gym_eurusd_1h", "gym_googl_1d")
DEFAULT_TARGETS = (1.0, 2.0)
DEFAULT_TOLERANCE = 0.05
TABLE = "planted.md"
RAW = "planted.json"
UNPLANTED = "unplanted"  # the signal label of the strength-0 rows
# The calibration's scan: 0, then SCAN_LO * SCAN_FACTOR**k up to SCAN_HI.
SCAN_LO, SCAN_HI, SCAN_FACTOR = 1e-3, 2.0, 1.5
MAX_BISECTIONS = 60
# The table's columns, in order: (heading, name in report.json's metrics).
AGENTS = (
    ("oracle", "oracle"),
    ("linear", "linear"),
    ("momentum", "momentum"),
    ("flat", "flat"),
    ("buy-and-hold", "buy_and_hold"),
    ("policy", "policy"),
)


def _signals() -> tuple[str, ...]:
    from marl_jax.env.plant import SIGNALS

    return SIGNALS


# ------------------------------------------------------------------------------ calibration


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The strength chosen for one target: ``strength`` None where it is unreachable;
    ``achieved`` the oracle's whole-file net active IR there (the best found when
    unreachable); ``status`` ``hit``, ``natural``, ``off`` or ``unreachable``."""

    signal: str
    target: float
    strength: float | None
    achieved: float | None
    status: str
    note: str = ""
    evaluations: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def oracle_ir(bars, signal: str, strength: float, cost_bps: float = COST_BPS) -> float | None:
    """The oracle's net active IR over the whole of ``bars`` planted with ``signal`` at
    ``strength``; None where the planted prices overflow or the IR is not finite."""
    from marl_jax.env.plant import oracle_summary, plant

    try:
        with np.errstate(all="ignore"):  # a runaway drift overflows: None, not a warning
            planted = plant(bars, signal, strength)
            ir = float(oracle_summary(planted.bars, planted.signal, cost_bps)["active_ir"])
    except (OverflowError, FloatingPointError, ValueError):
        return None
    return ir if math.isfinite(ir) else None


def scan_strengths(lo: float = SCAN_LO, hi: float = SCAN_HI, factor: float = SCAN_FACTOR):
    """0, then ``lo * factor**k`` while below ``hi``, then ``hi``."""
    points = [0.0]
    a = lo
    while a < hi:
        points.append(a)
        a *= factor
    return [*points, hi]


def calibrate(
    bars,
    signal: str,
    targets: Sequence[float],
    tolerance: float = DEFAULT_TOLERANCE,
    cost_bps: float = COST_BPS,
    ir_of: Callable[[float], float | None] | None = None,
) -> dict[float, Calibration]:
    """The smallest strength of ``signal`` whose oracle net active IR over ``bars`` is within
    ``tolerance`` of each target (see the module docstring); ``ir_of`` replaces
    :func:`oracle_ir` (tests)."""
    memo: dict[float, float | None] = {}

    def f(a: float) -> float | None:
        if a not in memo:
            memo[a] = ir_of(a) if ir_of is not None else oracle_ir(bars, signal, a, cost_bps)
        return memo[a]

    scan = []  # (strength, IR) up to the first overflow: nothing beyond it is a market
    for a in scan_strengths():
        ir = f(a)
        if ir is None:
            break
        scan.append((a, ir))
    out = {}
    for target in targets:
        target = float(target)
        first = next((i for i, (_, ir) in enumerate(scan) if ir >= target), None)
        if first is None:
            best = max(scan, key=lambda p: p[1], default=(None, None))
            reach = f"{scan[-1][0]:g}" if scan else "0"
            stop = (
                " (beyond it the planted prices overflow)"
                if len(scan) < len(scan_strengths())
                else ""
            )
            note = (
                f"no strength in [0, {reach}]{stop} gives the oracle a net active IR of "
                f"{target:g}" + (f"; the best is {best[1]:.3f} at {best[0]:g}" if scan else "")
            )
            out[target] = Calibration(signal, target, None, best[1], "unreachable", note, len(memo))
            continue
        if first == 0:
            note = "the unplanted file's own oracle reaches the target"
            out[target] = Calibration(signal, target, 0.0, scan[0][1], "natural", note, len(memo))
            continue
        (a, fa), (b, fb) = scan[first - 1], scan[first]
        out[target] = _bisect(signal, target, tolerance, f, (a, fa), (b, fb), memo)
    return out


def _bisect(signal, target, tolerance, f, low, high, memo) -> Calibration:
    """Bisection between ``low`` (IR below the target) and ``high`` (at or above it), on a log
    scale where ``low``'s strength is above 0."""
    (a, fa), (b, fb) = low, high
    for _ in range(MAX_BISECTIONS):
        for s, v in ((b, fb), (a, fa)):
            if abs(v - target) <= tolerance:
                return Calibration(signal, target, s, v, "hit", "", len(memo))
        if b - a <= 1e-9:
            break
        m = math.sqrt(a * b) if a > 0 else 0.5 * (a + b)
        v = f(m)
        if v is None:  # an overflow inside the bracket: treat as the upper side
            b, fb = m, math.inf
        elif v < target:
            a, fa = m, v
        else:
            b, fb = m, v
    s, v = min(((a, fa), (b, fb)), key=lambda p: abs(p[1] - target))
    note = (
        f"the oracle's IR jumps from {fa:.3f} to {fb:.3f} between strengths {a:.6g} and "
        f"{b:.6g}; the nearer is used"
    )
    return Calibration(signal, target, s, v, "off", note, len(memo))


# ------------------------------------------------------------------------------ plan


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: a file at one strength (``signal`` ``unplanted``, ``target``
    None at strength 0) and its runs, one per seed (none where the target is unreachable)."""

    file: str
    signal: str
    target: float | None
    calibration: Calibration | None
    runs: tuple = ()

    @property
    def label(self) -> str:
        return UNPLANTED if self.target is None else f"{self.signal}/ir_{self.target:g}"


def planted_path(out_root: Path, file: str, signal: str, target: float) -> Path:
    """Where the planted bar file of ``file``, ``signal`` and ``target`` is written."""
    return out_root / "data" / f"{file}_{signal}_ir_{target:g}.csv"


def plan(
    out_root: Path,
    files: Sequence[str],
    calibrations: Mapping[str, Mapping[str, Mapping[float, Calibration]]],
    targets: Sequence[float],
    seeds: int,
    folds: int,
    data: Mapping[str, str],
    sets: Sequence[str] = (),
) -> list[Row]:
    """Per file: the unplanted row (strength 0), then a row per signal (of ``calibrations``)
    and target, each with a run per seed (``learning.Run``; status ``skip`` where the target
    is unreachable)."""
    rows = []
    for file in files:
        base = [f"env.cost_bps={COST_BPS:g}"]
        unplanted = Row(file, UNPLANTED, None, None)
        rows.append(_with_runs(unplanted, out_root, data[file], base, sets, seeds, folds))
        for signal, by_target in calibrations[file].items():
            for target in targets:
                cal = by_target[float(target)]
                row = Row(file, signal, float(target), cal)
                path = str(planted_path(out_root, file, signal, float(target)))
                rows.append(_with_runs(row, out_root, path, base, sets, seeds, folds))
    return rows


def _with_runs(row: Row, out_root, path, base, sets, seeds, folds) -> Row:
    runs = []
    for seed in range(seeds):
        out = out_root / row.file / row.label / f"seed_{seed}"
        overrides = (*base, *sets, f"seed={seed}")
        if row.calibration is not None and row.calibration.strength is None:
            reason = f"target unreachable: {row.calibration.note}"
            runs.append(learning.Run(row.file, row.label, seed, out, (), None, "skip", reason))
            continue
        status = learning.run_status(out, folds)
        runs.append(learning.Run(row.file, row.label, seed, out, overrides, path, status))
    return dataclasses.replace(row, runs=tuple(runs))


def write_planted_file(row: Row, source: Path) -> Path:
    """Plants ``row``'s signal at its calibrated strength into the bar file ``source`` (as the
    walk-forward loads it) and writes it with its sidecar; an existing one is kept when it is
    that plant of that file, and refused when it is another."""
    from marl_jax.env.data import read_bar_table
    from marl_jax.env.plant import DEFAULT_SPANS, plant
    from marl_jax.files import sha256_of
    from marl_jax.run.planted import sidecar_path, write_planted

    out = Path(row.runs[0].data)
    recipe = {
        "signal": row.signal,
        "strength": row.calibration.strength,
        "span": DEFAULT_SPANS[row.signal],
    }
    side = sidecar_path(out)
    if out.is_file() and side.is_file():
        record = json.loads(side.read_text())
        found = {k: record["recipe"].get(k) for k in recipe}
        same = found == recipe and record["input"]["sha256"] == sha256_of(source)
        if same and record["output"]["sha256"] == sha256_of(out):
            return out
        raise BenchmarkError(
            f"{out}: planted with {found} from another input or since changed; the calibration "
            f"now gives {recipe}: delete {out.parent} or use another --out"
        )
    table = read_bar_table(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_planted(
        table, plant(table.bars, row.signal, recipe["strength"]), recipe, source, out, COST_BPS
    )
    return out


# ------------------------------------------------------------------------------ table


def _sidecar(data: str | None) -> dict | None:
    """The plant sidecar of the bar file ``data`` (its ``timestamp`` and ``s`` per bar); None
    without one."""
    from marl_jax.run.planted import sidecar_path

    if data is None or not sidecar_path(data).is_file():
        return None
    return json.loads(sidecar_path(data).read_text())


def _correlation(position: np.ndarray, signal: np.ndarray) -> float | None:
    """The correlation of positions with the planted signal at the same bars; None where a
    bar has no signal or either does not vary."""
    position = np.asarray(position, dtype=np.float64)
    if np.isnan(signal).any() or position.std() == 0 or signal.std() == 0:
        return None
    return float(np.corrcoef(position, signal)[0, 1])


def timing(out: Path, data: str | None) -> float | None:
    """The correlation of the policy's test positions (``returns.csv``) with the planted signal
    ``s`` at the same bars (the sidecar of the bar file ``data``), pooled over the test folds:
    how much of the oracle's timing the policy has. None without a sidecar or ``returns.csv``,
    or where either does not vary."""
    path, record = out / "returns.csv", _sidecar(data)
    if record is None or not path.is_file():
        return None
    s = pd.Series(record["s"], index=pd.to_datetime(record["timestamp"]))
    frame = pd.read_csv(path, usecols=["timestamp", "position"])
    signal = s.reindex(pd.to_datetime(frame["timestamp"])).to_numpy(dtype=np.float64)
    return _correlation(frame["position"].to_numpy(), signal)


def _timing_at(bar_index: np.ndarray, positions: np.ndarray, data: str | None) -> float | None:
    """:func:`timing` of ``positions`` set at the bars ``bar_index`` of the bar file ``data``
    (the sidecar's ``s`` by bar number); None without a sidecar, past its end, or where either
    does not vary."""
    record = _sidecar(data)
    if record is None:
        return None
    s = np.asarray(record["s"], dtype=np.float64)
    if len(bar_index) and int(bar_index.max()) >= len(s):
        return None
    return _correlation(positions, s[bar_index])


def _fold_arrays(out: Path) -> list[dict[str, np.ndarray]] | None:
    """A finished walk-forward's test folds in order, each ``test_runs.npz`` as a dict; None
    where ``report.json`` or a fold's arrays are missing."""
    from marl_jax.walkforward.fold_run import TEST_RUNS

    if not (out / "report.json").is_file():
        return None
    dirs = sorted(out.glob("fold_*"), key=lambda d: int(d.name.split("_")[1]))
    if not dirs or not all((d / TEST_RUNS).is_file() for d in dirs):
        return None
    folds = []
    for d in dirs:
        with np.load(d / TEST_RUNS) as z:
            folds.append({k: np.asarray(z[k]) for k in z.files})
    return folds


def ensemble_numbers(outs: Sequence[Path], data: str | None = None) -> dict | None:
    """The ensemble of several seeds' finished walk-forwards of the same file and folds: at each
    test bar, the mean of the seeds' test positions (the mean of all their votes), each fold
    entered from flat and charged ``cost_bps`` per unit of position change, as the
    environment charges a policy. Its pooled net active IR, turnover and net Sharpe, its
    capture (over the pooled oracle's, where the file was planted), its :func:`timing` and its
    one-sign test folds; None with fewer than two finished seeds or where their test bars
    differ."""
    from marl_jax.metrics import net_returns
    from marl_jax.run.report import holds_one_sign, stitched_summary

    runs = [f for f in (_fold_arrays(o) for o in outs) if f is not None]
    if len(runs) < 2 or any(len(f) != len(runs[0]) for f in runs):
        return None
    first = json.loads((outs[0] / "report.json").read_text())["provenance"]
    cost_bps = float(first["cost_bps"])
    parts, positions, bars = [], [], []
    for folds in zip(*runs, strict=True):
        index = folds[0]["bar_index"]
        if any(not np.array_equal(f["bar_index"], index) for f in folds):
            return None
        pos = np.mean([f["policy/positions"] for f in folds], axis=0).astype(np.float32)
        r = folds[0]["buy_and_hold/pnl"].astype(np.float32)  # the held unit's gross: r[t+1]
        pnl = (pos * r).astype(np.float32)
        rewards = net_returns(pnl, pos, cost_bps)  # each fold entered from flat
        part = {"policy": {"rewards": rewards, "positions": pos, "pnl": pnl}}
        for name in ("buy_and_hold", "oracle"):
            if f"{name}/rewards" in folds[0]:
                part[name] = {k: folds[0][f"{name}/{k}"] for k in ("rewards", "positions", "pnl")}
        parts.append(part)
        positions.append(pos)
        bars.append(index)
    pooled = stitched_summary(parts, float(first["periods_per_year"]), cost_bps)
    policy, oracle = pooled["policy"], pooled.get("oracle")
    capture = None
    if oracle is not None and oracle["active_ir"] > 0:
        capture = policy["active_ir"] / oracle["active_ir"]
    return {
        "seeds": len(runs),
        "active_ir": policy["active_ir"],
        "turnover": policy["turnover"],
        "sharpe": policy["sharpe"],
        "capture": capture,
        "timing": _timing_at(np.concatenate(bars), np.concatenate(positions), data),
        "one_sign": (sum(holds_one_sign(p) for p in positions), len(positions)),
    }


def run_numbers(out: Path, data: str | None = None) -> dict | None:
    """One finished walk-forward's figures (None while ``report.json`` is missing): each
    agent's pooled net active IR and turnover (None where the report has no such row), the
    policy's net Sharpe, its capture, its :func:`timing` against the planted file ``data``
    and its one-sign test folds."""
    path = out / "report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    pooled = report["metrics"]
    agents = {
        name: (
            {"active_ir": pooled[name]["active_ir"], "turnover": pooled[name]["turnover"]}
            if name in pooled
            else None
        )
        for _, name in AGENTS
    }
    return {
        "agents": agents,
        "policy_sharpe": pooled["policy"]["sharpe"],
        "capture": report["checks"]["capture"],
        "timing": timing(out, data),
        "one_sign": learning.one_sign_folds(out),
    }


def spread(values: Sequence[float | None]) -> dict | None:
    """``{mean, sd, n}`` of the values that are not None (``sd`` None under two); None where
    there are none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    sd = statistics.stdev(xs) if len(xs) > 1 else None
    return {"mean": statistics.fmean(xs), "sd": sd, "n": len(xs)}


def summarise(row: Row) -> dict:
    """``row``'s raw numbers: the calibration, each seed's figures (None: missing; the run's
    status says why), and their mean and spread over the finished seeds."""
    seeds = {}
    for r in row.runs:
        planted = r.data if row.calibration is not None else None
        seeds[r.seed] = run_numbers(r.out, planted) if r.status == "done" else None
    done = [s for s in seeds.values() if s is not None]
    agg = {}
    for _, name in AGENTS:
        for key in ("active_ir", "turnover"):
            agg[f"{name}_{key}"] = spread([(s["agents"][name] or {}).get(key) for s in done])
    agg["policy_sharpe"] = spread([s["policy_sharpe"] for s in done])
    agg["capture"] = spread([s["capture"] for s in done])
    agg["timing"] = spread([s["timing"] for s in done])
    finished = [r.out for r in row.runs if seeds[r.seed] is not None]
    planted_data = row.runs[0].data if row.calibration is not None and row.runs else None
    return {
        "file": row.file,
        "signal": row.signal,
        "target": row.target,
        "calibration": None if row.calibration is None else row.calibration.as_dict(),
        "runs": {str(r.seed): {"status": r.status, "reason": r.reason} for r in row.runs},
        "seeds": {str(k): v for k, v in seeds.items()},
        "mean": agg,
        "ensemble": ensemble_numbers(finished, planted_data),
    }


def _cell(stat: dict | None, digits: int = 2) -> str:
    if stat is None:
        return "n/a"
    text = f"{stat['mean']:.{digits}f}"
    return text if stat["sd"] is None else f"{text} ± {stat['sd']:.{digits}f}"


def _agent_cell(summary: Mapping, name: str, present: bool) -> str:
    if not present:
        return "missing"
    ir, turnover = summary["mean"][f"{name}_active_ir"], summary["mean"][f"{name}_turnover"]
    if ir is None:
        return "n/a"
    return f"{_cell(ir)} / {_cell(turnover, 4)}"


def _seeds_cell(summary: Mapping) -> str:
    runs, seeds = summary["runs"], summary["seeds"]
    if runs and all(r["status"] == "skip" for r in runs.values()):
        return "none: unreachable"
    missing = [k for k, v in seeds.items() if v is None]
    cell = f"{len(seeds) - len(missing)} of {len(seeds)}"
    return cell + (f" (missing: seed {', '.join(missing)})" if missing else "")


def _one_sign_cell(summary: Mapping) -> str:
    parts = []
    for v in summary["seeds"].values():
        if v is None:
            parts.append("missing")
        elif v["one_sign"] is None:
            parts.append("n/a")
        else:
            parts.append("{}/{}".format(*v["one_sign"]))
    return ", ".join(parts) if parts else "n/a"


def _strength_cells(summary: Mapping) -> list[str]:
    cal = summary["calibration"]
    if cal is None:
        return ["-", "0 (unplanted)", "-"]
    target = f"{cal['target']:g}"
    if cal["strength"] is None:
        best = "n/a" if cal["achieved"] is None else f"best {cal['achieved']:.2f}"
        return [target, "unreachable", best]
    flag = {"hit": "", "natural": " (natural)", "off": " (off target)"}[cal["status"]]
    return [target, f"{cal['strength']:.4g}{flag}", f"{cal['achieved']:.2f}"]


HEAD = (
    "file",
    "signal",
    "target IR",
    "strength",
    "oracle IR, whole file",
    "seeds",
    *(f"{h}: IR / turnover" for h, _ in AGENTS),
    "policy Sharpe",
    "capture",
    "timing",
    "one-sign test folds",
    "ensemble of the seeds: IR / turnover",
    "ensemble capture",
    "ensemble timing",
    "ensemble one-sign folds",
)


def _ensemble_cells(summary: Mapping) -> list[str]:
    ens = summary.get("ensemble")
    if ens is None:
        return ["n/a"] * 4
    planted = summary["calibration"] is not None

    def num(x: float | None, digits: int = 2) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    return [
        f"{num(ens['active_ir'])} / {num(ens['turnover'], 4)} ({ens['seeds']} seeds)",
        num(ens["capture"]) if planted else "n/a (unplanted)",
        num(ens["timing"]) if planted else "n/a (unplanted)",
        "{}/{}".format(*ens["one_sign"]),
    ]


def format_table(summaries: Sequence[Mapping], seeds: int, folds: int) -> str:
    """The markdown table of :func:`summarise`'s rows, the calibration notes and the verdicts on
    the unplanted rows."""
    lines = [
        f"Net of {COST_BPS:g} bp, pooled out of sample over {folds} test folds; each figure the "
        f"mean over the finished seeds (of {seeds}) ± their standard deviation. IR: net active "
        "IR against buy-and-hold. Capture: the policy's net active IR over the oracle's, per "
        "seed. Timing: the correlation of the policy's test positions with the planted signal "
        "s (the oracle trades sign(s)). One-sign test folds: per seed, the folds in which the "
        "policy's position never changes sign (it times nothing there, whatever its capture). "
        "Ensemble of the seeds: at each test bar the mean of the finished seeds' positions (each "
        "seed's own checkpoint, chosen on its validation split), charged the same costs; n/a "
        "under two seeds.",
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "---|" * len(HEAD),
    ]
    notes, verdicts = [], []
    for s in summaries:
        present = any(v is not None for v in s["seeds"].values())
        cells = [s["file"], s["signal"], *_strength_cells(s), _seeds_cell(s)]
        cells += [_agent_cell(s, name, present) for _, name in AGENTS]
        if present:
            planted = s["calibration"] is not None
            capture = _cell(s["mean"]["capture"]) if planted else "n/a (unplanted)"
            timed = _cell(s["mean"]["timing"]) if planted else "n/a (unplanted)"
            cells += [_cell(s["mean"]["policy_sharpe"]), capture, timed]
        else:
            cells += ["missing", "missing", "missing"]
        cells.append(_one_sign_cell(s))
        cells += _ensemble_cells(s)
        lines.append("| " + " | ".join(cells) + " |")
        cal = s["calibration"]
        if cal is not None and cal["note"]:
            notes.append(f"- {s['file']} {s['signal']} target {cal['target']:g}: {cal['note']}.")
        if cal is None:
            verdicts.append(_verdict(s))
    lines.append("")
    if notes:
        lines += ["Calibration notes:", *notes, ""]
    lines += [*verdicts, ""] if verdicts else []
    return "\n".join(lines) + "\n"


def _verdict(summary: Mapping) -> str:
    """Whether the policy loses on the unplanted file: its mean net Sharpe (money) and mean net
    active IR (against buy-and-hold) over the finished seeds."""
    sharpe, ir = summary["mean"]["policy_sharpe"], summary["mean"]["policy_active_ir"]
    head = f"- {summary['file']}, unplanted (strength 0):"
    if sharpe is None:
        return f"{head} pending (no seed finished)."
    done = f"{sharpe['n']} of {len(summary['seeds'])} seeds"
    money = "does not lose money" if sharpe["mean"] >= 0 else "**loses money**"
    bench = "does not lose to buy-and-hold" if ir["mean"] >= 0 else "**loses to buy-and-hold**"
    return (
        f"{head} the policy {money} (mean net Sharpe {sharpe['mean']:.2f}) and {bench} (mean "
        f"net active IR {ir['mean']:.2f}), over {done}."
    )


# ------------------------------------------------------------------------------ main


def _floats(value: str, flag: str) -> list[float]:
    try:
        items = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        items = []
    if not items or any(not math.isfinite(x) or x <= 0 for x in items):
        raise BenchmarkError(f"{flag} {value}: use a comma-separated list of numbers above 0")
    return list(dict.fromkeys(items))


def build_parser() -> argparse.ArgumentParser:
    from marl_jax.walkforward.folds import SELECT_METRICS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"base config ({DEFAULT_CONFIG})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder ({DEFAULT_OUT})")
    p.add_argument("--cache", default=learning.DEFAULT_CACHE, help="data folder")
    files = ",".join(DEFAULT_FILES)
    p.add_argument("--files", help=f"comma-separated, of {', '.join(SOURCES)} (default {files})")
    p.add_argument(
        "--signals",
        help="comma-separated, of trend, revert, gated (default all); none: unplanted only",
    )
    p.add_argument("--targets", default="1,2", help="oracle net active IRs to plant for (1,2)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="on the IR (0.05)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per row (3)")
    p.add_argument("--folds", type=int, default=5, help="walk-forward folds (5)")
    p.add_argument(
        "--dry-run", action="store_true", help="fetch, calibrate and plan; train nothing"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--gate", action="store_true", help="the walk-forwards' --gate (a fold may hold a baseline)"
    )
    p.add_argument(
        "--select-by", choices=SELECT_METRICS, help="the walk-forwards' --select-by (their default)"
    )
    return p


def walkforward_flags(args: argparse.Namespace) -> list[str]:
    """The flags every new walk-forward of the benchmark gets from ``--gate``/``--select-by``."""
    flags = ["--gate"] if args.gate else []
    return flags + (["--select-by", args.select_by] if args.select_by else [])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (BenchmarkError, learning.DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


def calibrate_all(
    files: Sequence[str], signals: Sequence[str], targets: Sequence[float], data, tolerance
) -> dict[str, dict[str, dict[float, Calibration]]]:
    """Every file's and signal's strengths, on the bars as the walk-forward loads them."""
    from marl_jax.env.data import load_bars

    out = {}
    for file in files:
        bars = load_bars(data[file])
        out[file] = {s: calibrate(bars, s, targets, tolerance) for s in signals}
    return out


def _main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    files = learning._list(args.files or ",".join(DEFAULT_FILES), list(SOURCES), "--files")
    signals = (  # "none": the unplanted rows only
        []
        if args.signals == "none"
        else learning._list(args.signals, list(_signals()), "--signals")
    )
    targets = _floats(args.targets, "--targets")
    if args.folds < 1 or args.seeds < 1:
        raise BenchmarkError("--folds and --seeds must be at least 1")
    if not args.tolerance > 0:
        raise BenchmarkError(f"--tolerance {args.tolerance}: must be above 0")
    cache, out = Path(os.path.expanduser(args.cache)), Path(args.out)
    args.walkforward_flags = walkforward_flags(args)
    data = {f: str(learning.fetch(f, cache)) for f in files}  # calibration needs the bars
    cals = calibrate_all(files, signals, targets, data, args.tolerance)
    rows = plan(out, files, cals, targets, args.seeds, args.folds, data, args.set)
    n_runs = sum(len(r.runs) for r in rows)
    print(
        f"plan: {len(files)} files x ({len(signals)} signals x {len(targets)} targets + "
        f"strength 0) x {args.seeds} seeds = {n_runs} walk-forwards of {args.folds} folds"
    )
    for row in rows:
        cal = row.calibration
        if cal is None:
            what = "strength 0"
        elif cal.strength is None:
            what = f"unreachable ({cal.note})"
        else:
            what = f"strength {cal.strength:.6g}: oracle IR {cal.achieved:.3f} ({cal.status})"
        print(f"  {row.file}/{row.label:20s} {what}")
        for r in row.runs:
            print(f"    seed {r.seed}: {r.status}{' ' + r.reason if r.status == 'skip' else ''}")
    if args.dry_run:
        return 0
    walls_path = out / learning.WALL_TIMES
    walls = learning._load_walls(walls_path)
    for seed in range(args.seeds):  # seed 0 of every row first
        for i, row in enumerate(rows):
            run = row.runs[seed]
            if run.status not in ("new", "resume"):
                continue
            if row.calibration is not None:
                write_planted_file(row, Path(data[row.file]))
            done = learning.execute(run, args, walls, walls_path)
            runs = (*row.runs[:seed], done, *row.runs[seed + 1 :])
            rows[i] = dataclasses.replace(row, runs=runs)
    summaries = [summarise(r) for r in rows]
    table = format_table(summaries, args.seeds, args.folds)
    total = sum(walls.get(r.key, 0.0) for row in rows for r in row.runs)
    table += f"Wall time of the runs above: {learning._wall(total)}; "
    table += f"this invocation took {learning._wall(time.monotonic() - started)}.\n"
    from marl_jax.files import atomic_write_text

    raw = {
        "cost_bps": COST_BPS,
        "folds": args.folds,
        "seeds": args.seeds,
        "config": args.config,
        "sets": args.set,
        "tolerance": args.tolerance,
        "files": {f: dataclasses.asdict(SOURCES[f]) for f in files},
        "rows": summaries,
        "wall_s": {r.key: walls.get(r.key) for row in rows for r in row.runs},
    }
    atomic_write_text(out / TABLE, table)
    atomic_write_text(out / RAW, json.dumps(raw, indent=2) + "\n")
    print("\n" + table + f"\n(written to {out / TABLE} and {out / RAW})")
    unfinished = [r.key for row in rows for r in row.runs if r.status in ("new", "resume")]
    if unfinished:
        print(f"unfinished: {', '.join(unfinished)}; rerun to resume them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
