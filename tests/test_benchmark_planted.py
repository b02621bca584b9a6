"""benchmarks/planted.py without training or downloads: the strength calibration, the plan, the
planted files and the table (from small fake walk-forward folders)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marl_jax.env.data import synthetic_bars
from marl_jax.run.planted import sidecar_path

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "planted.py"
_spec = importlib.util.spec_from_file_location("bench_planted", _PATH)
planted = importlib.util.module_from_spec(_spec)
sys.modules["bench_planted"] = planted
_spec.loader.exec_module(planted)
Calibration = planted.Calibration


@pytest.fixture(scope="module")
def bars():
    # The synthetic market trends by design (its own trend oracle already earns about 1), so
    # the calibration is checked on revert, which it does not hold (its oracle loses at 0).
    return synthetic_bars(2000, seed=0, interval_minutes=60)


def test_calibration_hits_each_target_and_is_monotone(bars):
    tol = 0.05
    cals = planted.calibrate(bars, "revert", [1.0, 2.0, 3.0], tolerance=tol)
    assert planted.oracle_ir(bars, "revert", 0.0) < 0  # nothing planted: no edge to find
    strengths = [cals[t].strength for t in (1.0, 2.0, 3.0)]
    for target, cal in cals.items():
        assert cal.status == "hit" and cal.signal == "revert" and cal.target == target
        assert abs(cal.achieved - target) <= tol
        # what was recorded is what planting at that strength gives
        assert planted.oracle_ir(bars, "revert", cal.strength) == pytest.approx(cal.achieved)
    assert 0 < strengths[0] < strengths[1] < strengths[2]
    achieved = [cals[t].achieved for t in (1.0, 2.0, 3.0)]
    assert achieved == sorted(achieved)


def test_calibration_reports_natural_unreachable_overflow_and_jumps():
    # The oracle already earns the target unplanted: strength 0, said so.
    cal = planted.calibrate(None, "trend", [1.0], ir_of=lambda a: 1.5 + a)[1.0]
    assert (cal.strength, cal.status, cal.achieved) == (0.0, "natural", 1.5)
    # Costs eat the edge: never reaches 2; no strength invented, the best one reported.
    cal = planted.calibrate(None, "revert", [2.0], ir_of=lambda a: min(a, 0.7) - 0.5)[2.0]
    assert cal.strength is None and cal.status == "unreachable"
    assert cal.achieved == pytest.approx(0.2) and "best is 0.200" in cal.note
    # Prices overflow beyond 0.5: the scan stops there, and the note says so.
    cal = planted.calibrate(None, "trend", [9.0], ir_of=lambda a: None if a > 0.5 else a)[9.0]
    assert cal.strength is None and "overflow" in cal.note
    # A jump across the target: the nearer side, flagged off target with its own IR.
    cal = planted.calibrate(None, "gated", [1.0], ir_of=lambda a: -1.0 if a < 0.1 else 1.3)[1.0]
    assert cal.status == "off" and cal.strength == pytest.approx(0.1, rel=1e-6)
    assert cal.achieved == 1.3 and "jumps" in cal.note

    # The smallest strength that reaches the target, even when the IR falls again beyond it.
    def hump(a):
        return 10 * a if a < 0.5 else 10 * (1 - a)

    cal = planted.calibrate(None, "trend", [2.0], tolerance=0.01, ir_of=hump)[2.0]
    assert cal.status == "hit" and cal.strength == pytest.approx(0.2, abs=1e-3)


def _cal(signal, target, strength=0.1, achieved=None):
    status = "hit" if strength is not None else "unreachable"
    achieved = target if achieved is None else achieved
    return Calibration(signal, target, strength, achieved, status, "" if strength else "no")


def _cals(files, signals, targets, unreachable=()):
    return {
        f: {
            s: {t: _cal(s, t, None if (f, s, t) in unreachable else 0.1 * t) for t in targets}
            for s in signals
        }
        for f in files
    }


def _data(tmp_path, files):
    return {f: str(tmp_path / f"{f}.csv") for f in files}


def _fake_walkforward(out: Path, folds: int, ir: dict, capture=None, one_sign_folds=0):
    """A walk-forward folder: report.json with pooled net active IR and turnover per agent in
    ``ir`` ({name: (active_ir, turnover)}; the policy's Sharpe 0.5), ``capture`` and
    ``one_sign_folds`` in its checks, and returns.csv whose first ``one_sign_folds`` folds keep
    one sign."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "walkforward.json").write_text(json.dumps({"options": {"folds": folds}}))
    pooled = {k: {"active_ir": a, "turnover": t, "sharpe": 0.5} for k, (a, t) in ir.items()}
    checks = {"folds": folds, "one_sign_folds": one_sign_folds, "capture": capture}
    report = {"options": {"folds": folds}, "folds": [], "metrics": pooled, "checks": checks}
    (out / "report.json").write_text(json.dumps(report))
    rows = ["fold,timestamp,position,policy"]
    for k in range(folds):
        xs = [0.5, 1.0, 0.25] if k < one_sign_folds else [0.5, -0.5, 0.0]
        rows += [f"{k},2020-01-0{i + 1},{x},0.0" for i, x in enumerate(xs)]
    (out / "returns.csv").write_text("\n".join(rows) + "\n")


def test_plan_is_files_by_signals_by_targets_by_seeds_plus_strength_zero(tmp_path):
    files, signals, targets = ["gym_eurusd_1h", "bt_goog_1d"], ["trend", "gated"], [1.0, 2.0]
    cals = _cals(files, signals, targets, unreachable={("bt_goog_1d", "gated", 2.0)})
    out = tmp_path / "runs"
    ir = {"policy": (0.1, 0.01)}
    _fake_walkforward(out / "gym_eurusd_1h" / "trend" / "ir_1" / "seed_1", 5, ir)
    started = out / "bt_goog_1d" / "unplanted" / "seed_0"
    started.mkdir(parents=True)
    (started / "walkforward.json").write_text(json.dumps({"options": {"folds": 5}}))
    data = _data(tmp_path, files)
    rows = planted.plan(out, files, cals, targets, 3, 5, data, ["a.b=1"])

    expected = [(f, planted.UNPLANTED, None) for f in files[:1]]
    expected += [(files[0], s, t) for s in signals for t in targets]
    expected += [(files[1], planted.UNPLANTED, None)]
    expected += [(files[1], s, t) for s in signals for t in targets]
    assert [(r.file, r.signal, r.target) for r in rows] == expected
    assert all([r.seed for r in row.runs] == [0, 1, 2] for row in rows)
    runs = {r.key: r for row in rows for r in row.runs}
    assert len(runs) == len(files) * (len(signals) * len(targets) + 1) * 3
    assert runs["gym_eurusd_1h/trend/ir_1/seed_1"].status == "done"
    assert runs["bt_goog_1d/unplanted/seed_0"].status == "resume"
    skipped = [k for k, r in runs.items() if r.status == "skip"]
    assert skipped == [f"bt_goog_1d/gated/ir_2/seed_{s}" for s in range(3)]
    assert sum(r.status == "new" for r in runs.values()) == len(runs) - 5

    run = runs["bt_goog_1d/trend/ir_2/seed_2"]
    assert run.out == out / "bt_goog_1d" / "trend" / "ir_2" / "seed_2"
    assert run.data == str(out / "data" / "bt_goog_1d_trend_ir_2.csv")
    cmd = planted.learning.command(run, "configs/real_markets.yaml", 5)
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert sets == ["env.cost_bps=1", "a.b=1", "seed=2"]
    assert cmd[cmd.index("--data") + 1] == run.data
    assert "--gate" not in cmd and "--select-by" not in cmd
    args = planted.build_parser().parse_args(["--gate", "--select-by", "total_log_return"])
    flags = planted.walkforward_flags(args)
    assert flags == ["--gate", "--select-by", "total_log_return"]
    cmd = planted.learning.command(run, "configs/real_markets.yaml", 5, extra=flags)
    assert cmd[-len(flags) :] == flags
    resumed = planted.learning.command(
        runs["bt_goog_1d/unplanted/seed_0"], "c.yaml", 5, extra=flags
    )
    assert "--gate" not in resumed  # a resumed walk-forward keeps the flags it started with
    assert runs["gym_eurusd_1h/unplanted/seed_0"].data == data["gym_eurusd_1h"]
    with pytest.raises(planted.BenchmarkError, match="5 folds, not --folds 2"):
        planted.plan(out, files, cals, targets, 3, 2, data)


def test_planted_file_is_written_once_and_a_changed_plant_refused(tmp_path):
    bars = synthetic_bars(400, seed=1, interval_minutes=60)
    source = tmp_path / "gym_eurusd_1h.csv"
    frame = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(bars.timestamp).strftime("%Y-%m-%d %H:%M:%S"),
            **{k: getattr(bars, k) for k in ("open", "high", "low", "close", "volume")},
        }
    )
    frame.to_csv(source, index=False)
    cals = {"gym_eurusd_1h": {"trend": {1.0: _cal("trend", 1.0, 0.05)}}}
    rows = planted.plan(
        tmp_path / "o", ["gym_eurusd_1h"], cals, [1.0], 1, 5, {"gym_eurusd_1h": str(source)}
    )
    path = planted.write_planted_file(rows[1], source)
    side = json.loads(Path(str(path) + ".plant.json").read_text())
    assert side["recipe"]["strength"] == 0.05 and side["recipe"]["signal"] == "trend"
    stamp = path.stat().st_mtime_ns
    assert planted.write_planted_file(rows[1], source) == path
    assert path.stat().st_mtime_ns == stamp  # kept, not rewritten
    cals["gym_eurusd_1h"]["trend"][1.0] = _cal("trend", 1.0, 0.06)
    rows = planted.plan(
        tmp_path / "o", ["gym_eurusd_1h"], cals, [1.0], 1, 5, {"gym_eurusd_1h": str(source)}
    )
    with pytest.raises(planted.BenchmarkError, match="calibration now gives"):
        planted.write_planted_file(rows[1], source)


def test_table_means_spreads_capture_one_sign_and_missing(tmp_path):
    file, out = "gym_eurusd_1h", tmp_path / "runs"
    cals = _cals([file], ["trend"], [1.0, 2.0], unreachable={(file, "trend", 2.0)})
    base = {"linear": (-0.5, 0.3), "momentum": (0.25, 0.2), "flat": (-1.0, 0.0)}
    base["buy_and_hold"] = (0.0, 0.0)
    # trend/ir_1: seeds 0 and 2 finished, seed 1 not: never filled in.
    for seed, (p_ir, cap, one) in {0: (0.4, 0.5, 2), 2: (0.8, 1.0, 0)}.items():
        ir = {**base, "oracle": (0.8, 0.15), "policy": (p_ir, 0.01 * (seed + 1))}
        _fake_walkforward(out / file / "trend" / "ir_1" / f"seed_{seed}", 2, ir, cap, one)
    # unplanted: one seed, no oracle row and no capture, losing money and to buy-and-hold.
    _fake_walkforward(out / file / "unplanted" / "seed_0", 2, {**base, "policy": (-0.3, 0.02)})
    report = json.loads((out / file / "unplanted" / "seed_0" / "report.json").read_text())
    report["metrics"]["policy"]["sharpe"] = -0.2
    (out / file / "unplanted" / "seed_0" / "report.json").write_text(json.dumps(report))

    # The planted file's sidecar: s at the three bars each fake fold holds.
    s = [0.2, 0.9, -0.1]
    sidecar = {"timestamp": [f"2020-01-0{i + 1}" for i in range(3)], "s": s}
    data = planted.planted_path(out, file, "trend", 1.0)
    data.parent.mkdir(parents=True)
    sidecar_path(data).write_text(json.dumps(sidecar))

    rows = planted.plan(out, [file], cals, [1.0, 2.0], 3, 2, _data(tmp_path, [file]))
    summaries = [planted.summarise(r) for r in rows]
    unplanted, ir1, ir2 = summaries
    m = ir1["mean"]
    assert m["policy_active_ir"]["mean"] == pytest.approx(0.6)
    assert m["policy_active_ir"]["sd"] == pytest.approx(math.sqrt(0.08))
    assert m["policy_active_ir"]["n"] == 2
    assert m["capture"]["mean"] == pytest.approx(0.75)
    assert m["oracle_active_ir"] == {"mean": 0.8, "sd": 0.0, "n": 2}
    assert ir1["seeds"]["1"] is None and ir1["runs"]["1"]["status"] == "new"
    assert ir1["seeds"]["0"]["one_sign"] == (2, 2) and ir1["seeds"]["2"]["one_sign"] == (0, 2)
    timing = {
        seed: np.corrcoef(xs * 2, s * 2)[0, 1]
        for seed, xs in {0: [0.5, 1.0, 0.25], 2: [0.5, -0.5, 0.0]}.items()
    }
    assert ir1["seeds"]["0"]["timing"] == pytest.approx(timing[0])
    assert ir1["seeds"]["2"]["timing"] == pytest.approx(timing[2])
    assert m["timing"]["mean"] == pytest.approx((timing[0] + timing[2]) / 2)
    assert unplanted["seeds"]["0"]["timing"] is None  # no sidecar: no planted signal
    assert unplanted["mean"]["oracle_active_ir"] is None
    assert unplanted["mean"]["capture"] is None
    assert all(v is None for v in ir2["seeds"].values())
    json.dumps(summaries)  # the raw file's content

    table = planted.format_table(summaries, 3, 2)
    lines = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in table.splitlines()}
    cells = [c.strip() for c in lines[(file, "trend", "1")].split("|")[1:-1]]
    assert cells[2:6] == ["1", "0.1", "1.00", "2 of 3 (missing: seed 1)"]
    assert cells[6] == "0.80 ± 0.00 / 0.1500 ± 0.0000"  # oracle
    assert cells[11] == "0.60 ± 0.28 / 0.0200 ± 0.0141"  # policy
    assert cells[13] == "0.75 ± 0.35" and cells[15] == "2/2, missing, 0/2"
    assert cells[14] == planted._cell(m["timing"])
    cells = [c.strip() for c in lines[(file, "unplanted", "-")].split("|")[1:-1]]
    assert cells[2:7] == ["-", "0 (unplanted)", "-", "1 of 3 (missing: seed 1, 2)", "n/a"]
    assert cells[11:] == [
        "-0.30 / 0.0200",
        "-0.20",
        "n/a (unplanted)",
        "n/a (unplanted)",
        "0/2, missing, missing",
        *["n/a"] * 4,  # no ensemble: one seed, and fake folds without test arrays
    ]
    ir2_line = next(line for line in table.splitlines() if "| unreachable |" in line)
    assert "none: unreachable" in ir2_line and "missing" in ir2_line
    assert "target 2: no." in table  # the calibration's note
    assert "**loses money** (mean net Sharpe -0.20)" in table
    assert "**loses to buy-and-hold** (mean net active IR -0.30), over 1 of 3 seeds" in table


def test_dry_run_calibrates_and_plans_without_training(tmp_path, capsys, monkeypatch):
    bars = synthetic_bars(600, seed=2, interval_minutes=60)
    source = tmp_path / "bars.csv"
    pd.DataFrame(
        {
            "timestamp": pd.to_datetime(bars.timestamp).strftime("%Y-%m-%d %H:%M:%S"),
            **{k: getattr(bars, k) for k in ("open", "high", "low", "close", "volume")},
        }
    ).to_csv(source, index=False)
    monkeypatch.setattr(planted.learning, "fetch", lambda name, cache: source)
    monkeypatch.setattr(planted.learning, "execute", lambda *a: pytest.fail("dry run trained"))
    out = tmp_path / "o"
    argv = ["--dry-run", "--out", str(out), "--files", "bt_eurusd_1h", "--signals", "revert"]
    assert planted.main([*argv, "--targets", "1", "--seeds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "1 files x (1 signals x 1 targets + strength 0) x 2 seeds = 4 walk-forwards" in printed
    assert "bt_eurusd_1h/unplanted" in printed and "bt_eurusd_1h/revert/ir_1" in printed
    assert "oracle IR" in printed and not out.exists()
    assert planted.main([*argv, "--targets", "1,x"]) == 2
    assert "--targets 1,x" in capsys.readouterr().err
    assert planted.main([*argv[:-1], "nope"]) == 2


def test_the_ensemble_of_seeds_is_scored_as_the_environment_scores_a_policy(tmp_path):
    """Two seeds' test folds (arrays as a walk-forward writes them): the ensemble's pooled
    figures equal the environment's own simulation of the mean position, fold by fold from
    flat; one seed, or seeds over other bars, give no ensemble."""
    from marl_jax.env import evaluate
    from marl_jax.env.market import make_env_params
    from marl_jax.run.report import stitched_summary

    bars = synthetic_bars(900, seed=3, interval_minutes=60)
    folds = [(200, 450), (450, 700)]
    rng = np.random.default_rng(0)
    s = rng.uniform(-1, 1, len(bars.close))
    data = tmp_path / "planted.csv"
    data.write_text("x\n")
    sidecar_path(data).write_text(json.dumps({"s": s.tolist()}))
    per_seed = {0: [], 1: []}
    wanted = []
    for lo, hi in folds:
        params = make_env_params(bars, bounds=(lo, hi), cost_bps=1.0, window=16)
        n = int(params.last_bar) - int(params.start_lo)
        votes = {k: rng.choice([-1.0, -1 / 3, 1 / 3, 1.0], n) for k in per_seed}
        for k, v in votes.items():
            per_seed[k].append((params, evaluate.simulate(v, params)))
        mean = (votes[0] + votes[1]) / 2
        wanted.append((params, evaluate.simulate(mean, params)))
    outs = []
    for k, runs in per_seed.items():
        out = tmp_path / f"seed_{k}"
        for i, (params, run) in enumerate(runs):
            hold = evaluate.simulate(np.ones_like(run.positions), params)
            oracle = evaluate.simulate(np.sign(s[run.bar_index]), params)
            arrays = {"bar_index": run.bar_index}
            for name, r in (("policy", run), ("buy_and_hold", hold), ("oracle", oracle)):
                arrays |= {f"{name}/positions": r.positions, f"{name}/rewards": r.rewards}
                arrays[f"{name}/pnl"] = r.pnl
            (out / f"fold_{i}").mkdir(parents=True)
            np.savez(out / f"fold_{i}" / "test_runs.npz", **arrays)
        prov = {"cost_bps": 1.0, "periods_per_year": 6240.0}
        (out / "report.json").write_text(json.dumps({"provenance": prov}))
        outs.append(out)

    ens = planted.ensemble_numbers(outs, str(data))
    parts = []
    for params, run in wanted:
        hold = evaluate.simulate(np.ones_like(run.positions), params)
        oracle = evaluate.simulate(np.sign(s[run.bar_index]), params)
        parts.append(
            {
                name: {"rewards": r.rewards, "positions": r.positions, "pnl": r.pnl}
                for name, r in (("policy", run), ("buy_and_hold", hold), ("oracle", oracle))
            }
        )
    pooled = stitched_summary(parts, 6240.0, 1.0)
    assert ens["seeds"] == 2
    assert ens["active_ir"] == pytest.approx(pooled["policy"]["active_ir"], rel=1e-5)
    assert ens["turnover"] == pytest.approx(pooled["policy"]["turnover"], rel=1e-6)
    assert ens["sharpe"] == pytest.approx(pooled["policy"]["sharpe"], rel=1e-5)
    capture = pooled["policy"]["active_ir"] / pooled["oracle"]["active_ir"]
    assert ens["capture"] == pytest.approx(capture, rel=1e-5)
    positions = np.concatenate([r.positions for _, r in wanted])
    index = np.concatenate([r.bar_index for _, r in wanted])
    assert ens["timing"] == pytest.approx(np.corrcoef(positions, s[index])[0, 1])
    assert ens["one_sign"] == (0, 2)

    assert planted.ensemble_numbers(outs[:1], str(data)) is None
    z = dict(np.load(outs[1] / "fold_1" / "test_runs.npz"))
    z["bar_index"] = z["bar_index"] + 1
    np.savez(outs[1] / "fold_1" / "test_runs.npz", **z)
    assert planted.ensemble_numbers(outs, str(data)) is None
