"""benchmarks/learning.py without training or downloads: converting each source format, the plan
and its resume states, the choice on validation only, and the table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from marl_jax.env.data import load_bars
from marl_jax.run import datasets

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "learning.py"
_spec = importlib.util.spec_from_file_location("bench_learning", _PATH)
learning = importlib.util.module_from_spec(_spec)
sys.modules["bench_learning"] = learning
_spec.loader.exec_module(learning)

# Three bars in each source's own layout (as the packages ship them).
SOURCE_TEXT = {
    "gym_forex": (
        "Time,Open,High,Low,Close,Volume\n"
        "02.01.2017 22:00:00.000,1.05,1.06,1.04,1.055,1000.5\n"
        "02.01.2017 23:00:00.000,1.055,1.07,1.05,1.06,2000\n"
        "03.01.2017 00:00:00.000,1.06,1.065,1.02,1.03,1500\n",
        60,
    ),
    "gym_stocks": (
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "2009-05-25,198.5,199.5,196.2,196.9,99.0,3433700\n"
        "2009-05-26,196.2,202.7,195.2,202.4,99.0,6202700\n"
        "2009-05-27,202.4,203.0,201.0,202.0,99.0,5000000\n",
        1440,
    ),
    "backtesting": (
        ",Open,High,Low,Close,Volume\n"
        "2017-04-19 09:00:00,1.0716,1.0722,1.07083,1.07219,1413\n"
        "2017-04-19 10:00:00,1.07214,1.07296,1.07214,1.0726,1241\n"
        "2017-04-19 11:00:00,1.0726,1.0730,1.0720,1.0725,1300\n",
        60,
    ),
}
EXPECTED_FIRST = {
    "gym_forex": ("2017-01-02T22:00", 1.05, 1.055),  # day-first: 2 January, not 1 February
    "gym_stocks": ("2009-05-25T00:00", 198.5, 196.9),  # Close, not Adj Close
    "backtesting": ("2017-04-19T09:00", 1.0716, 1.07219),
}


@pytest.mark.parametrize("fmt", sorted(SOURCE_TEXT))
def test_convert_each_source_format_to_loadable_bars(tmp_path, fmt):
    text, interval = SOURCE_TEXT[fmt]
    src, dst = tmp_path / "src.csv", tmp_path / "cache" / "bars.csv"
    src.write_text(text)
    assert datasets.convert_bars(src, dst, fmt, interval) == 3
    assert dst.read_text().splitlines()[0] == "timestamp,open,high,low,close,volume"
    bars = load_bars(dst)
    stamp, first_open, first_close = EXPECTED_FIRST[fmt]
    assert str(bars.timestamp[0])[:16] == stamp
    assert bars.open[0] == first_open and bars.close[0] == first_close
    assert bars.interval_minutes == interval


def test_convert_names_the_row_and_the_missing_column(tmp_path):
    src = tmp_path / "src.csv"
    src.write_text("Time,Open,High,Low,Close,Volume\n2017-01-02 22:00,1,1,1,1,1\n")
    with pytest.raises(datasets.DatasetError, match=r"row 1: .*%d\.%m\.%Y"):
        datasets.convert_bars(src, tmp_path / "out.csv", "gym_forex")
    src.write_text("Date,Open,High,Low,Volume\n2009-05-22,1,1,1,1\n")
    with pytest.raises(datasets.DatasetError, match="missing column.*Close"):
        datasets.convert_bars(src, tmp_path / "out.csv", "gym_stocks")
    assert not (tmp_path / "out.csv").exists()


def _data(tmp_path, files):
    return {f: str(tmp_path / f"{f}.csv") for f in files}


def _fake_walkforward(out: Path, folds: int, val: list[float], test_ir: float, finished=True):
    """A walk-forward folder as the driver leaves it: the manifest, each fold's fold.json with
    its validation scores, and (when finished) report.json with pooled test metrics."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "walkforward.json").write_text(json.dumps({"options": {"folds": folds}}))
    summaries = []
    for k, score in enumerate(val):
        summary = {"fold": k, "selection": {"step": 200, "scores": {"100": 9.0, "200": score}}}
        if k > 0:  # a non-chosen checkpoint's score must not count
            summary["selection"]["scores"]["100"] = -9.0
        (out / f"fold_{k}").mkdir(exist_ok=True)
        (out / f"fold_{k}" / "fold.json").write_text(json.dumps(summary))
        summaries.append(summary)
    if finished:
        policy = {"sharpe": 1.5, "active_ir": test_ir, "alpha_t": 2.25, "turnover": 0.0125}
        policy.update(active_ir_0x_cost=0.9, active_ir_1x_cost=test_ir, active_ir_2x_cost=-0.4)
        pooled = {"policy": policy, "linear": {"active_ir": -3.7}, "buy_and_hold": {}}
        # Fold 0 changes sign, every later fold holds one (as returns.csv below).
        checks = {"folds": folds, "one_sign_folds": folds - 1, "capture": None}
        report = {"options": {"folds": folds}, "folds": summaries, "metrics": pooled}
        (out / "report.json").write_text(json.dumps({**report, "checks": checks}))
        # Fold 0 changes sign (long, flat, short); every later fold stays long, at varying size.
        rows = ["fold,timestamp,position,policy"]
        for k in range(folds):
            positions = [0.5, 0.0, -0.25] if k == 0 else [0.25, 1.0, 0.5]
            rows += [f"{k},2020-01-0{i + 1},{x},0.0" for i, x in enumerate(positions)]
        (out / "returns.csv").write_text("\n".join(rows) + "\n")


def test_plan_covers_files_by_variants_and_resumes(tmp_path, monkeypatch):
    files = ["bt_eurusd_1h", "gym_googl_1d"]
    variants = [v for v in learning.VARIANTS if v != learning.POOLED]
    out = tmp_path / "runs"
    _fake_walkforward(out / "bt_eurusd_1h" / "excess" / "seed_0", 5, [0.1] * 5, 0.2)
    _fake_walkforward(out / "gym_googl_1d" / "delta" / "seed_0", 5, [0.1], 0.2, finished=False)
    monkeypatch.setattr(learning, "pooled_supported", lambda: False)
    runs = learning.plan_first(out, files, [*variants, learning.POOLED], 5, _data(tmp_path, files))
    assert [(r.file, r.variant) for r in runs[:-1]] == [(f, v) for f in files for v in variants]
    status = {r.key: r.status for r in runs}
    assert status["bt_eurusd_1h/excess/seed_0"] == "done"
    assert status["gym_googl_1d/delta/seed_0"] == "resume"
    assert status["all/pooled/seed_0"] == "skip" and "data_paths" in runs[-1].reason
    assert sum(s == "new" for s in status.values()) == 2 * len(variants) - 2

    by_key = {r.key: r for r in runs}
    new = learning.command(by_key["gym_googl_1d/vol_target/seed_0"], "base.yaml", 5)
    sets = [new[i + 1] for i, a in enumerate(new) if a == "--set"]
    assert sets[:1] == ["env.cost_bps=1"]  # the interval is read from the file
    assert not any("interval_minutes" in s for s in sets)
    assert sets[-2:] == ["env.position_sizing=vol_target", "seed=0"]
    assert new[new.index("--data") + 1] == str(tmp_path / "gym_googl_1d.csv")
    assert new[new.index("--config") + 1] == "base.yaml" and "--resume" not in new
    resume = learning.command(by_key["gym_googl_1d/delta/seed_0"], "base.yaml", 5)
    assert "--resume" in resume and "--config" not in resume and "--set" not in resume

    with pytest.raises(learning.BenchmarkError, match="5 folds, not --folds 2"):
        learning.plan_first(out, files, variants, 2, _data(tmp_path, files))


def test_user_overrides_sit_between_the_base_and_the_variant(tmp_path):
    run = learning.plan_run(
        tmp_path, "gym_eurusd_1h", "excess", 2, 5, _data(tmp_path, ["gym_eurusd_1h"]), ["a.b=1"]
    )
    assert run.overrides == (
        "env.cost_bps=1",
        "a.b=1",
        "env.reward=excess",
        "seed=2",
    )
    assert run.out == tmp_path / "gym_eurusd_1h" / "excess" / "seed_2"


def test_pooled_variant_lists_every_file_once_the_key_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(learning, "pooled_supported", lambda: True)
    files = ["bt_eurusd_1h", "gym_eurusd_1h"]
    run = learning.plan_run(tmp_path, "all", learning.POOLED, 0, 5, _data(tmp_path, files))
    assert run.status == "new" and run.data is None
    assert f"env.data_paths=[{tmp_path}/bt_eurusd_1h.csv, {tmp_path}/gym_eurusd_1h.csv]" in (
        run.overrides
    )
    everything = _data(tmp_path, learning.SOURCES)  # hourly and daily: each its own interval
    mixed = learning.plan_run(tmp_path, "all", learning.POOLED, 0, 5, everything)
    assert mixed.status == "new"
    assert len(next(o for o in mixed.overrides if "data_paths" in o).split(",")) == 4
    assert not any("interval_minutes" in o for o in (*run.overrides, *mixed.overrides))


def test_choice_reads_validation_only(tmp_path):
    file, out = "bt_goog_1d", tmp_path / "runs"
    # pnl: better on validation, worse on test; excess: the reverse.
    _fake_walkforward(out / file / "pnl" / "seed_0", 3, [0.3, 0.1, 0.2], test_ir=-1.0)
    _fake_walkforward(out / file / "excess" / "seed_0", 3, [0.05, 0.1, 0.15], test_ir=2.0)
    runs = learning.plan_first(out, [file], ["pnl", "excess"], 3, _data(tmp_path, [file]))
    chosen, scores = learning.choose(runs)
    assert chosen == "pnl"
    assert scores == pytest.approx({"pnl": 0.2, "excess": 0.1})
    assert learning.validation_score(out / file / "pnl" / "seed_0") == pytest.approx(0.2)

    (out / file / "excess" / "seed_0" / "report.json").unlink()  # unfinished: no choice yet
    runs = learning.plan_first(out, [file], ["pnl", "excess"], 3, _data(tmp_path, [file]))
    assert learning.choose(runs)[0] is None


def test_table_rows_choice_and_goal(tmp_path):
    file, out = "bt_goog_1d", tmp_path / "runs"
    _fake_walkforward(out / file / "pnl" / "seed_0", 2, [0.3, 0.1], test_ir=0.5)
    _fake_walkforward(out / file / "excess" / "seed_0", 2, [0.0, 0.1], test_ir=-0.25)
    _fake_walkforward(out / file / "pnl" / "seed_1", 2, [0.3, 0.1], test_ir=0.7)
    data = _data(tmp_path, [file])
    runs = learning.plan_first(out, [file], ["pnl", "excess"], 2, data)
    runs.append(learning.plan_run(out, file, "pnl", 1, 2, data))
    chosen, scores = learning.choose(runs[:2])
    walls = {"bt_goog_1d/pnl/seed_0": 3725.0}
    table = learning.format_tables([file], runs, {file: chosen}, {file: scores}, walls, 2)
    rows = [line for line in table.splitlines() if line.startswith("| pnl")]
    assert rows[0].split(" | ")[1:] == [
        "0",
        "0.2000",
        "1.50",
        "0.50",
        "2.25",
        "0.0125",
        "-3.70",
        "0.90 / 0.50 / -0.40",
        "1 of 2",
        "1:02:05 |",
    ]
    assert rows[0].startswith("| pnl (chosen)") and len(rows) == 2
    assert learning.one_sign_folds(out / file / "excess" / "seed_0") == (1, 2)
    assert learning.one_sign_folds(out / file / "missing") is None
    assert "**pnl**" in table
    assert "Goal: **met**: mean over 2 seeds, active IR 0.60 vs linear -3.70" in table
    assert "Goal on every file: **met**" in table

    # Two seeds wanted, three asked for: pending; a negative mean active IR: not met.
    pending = learning.format_tables([file], runs, {file: chosen}, {file: scores}, walls, 3)
    assert "Goal: pending (2 of 3 seeds finished)" in pending
    met, mean = learning.goal([{"active_ir": -0.1, "linear_active_ir": -3.7, "turnover": 0.1}])
    assert not met and mean["active_ir"] == -0.1
    met, _ = learning.goal([{"active_ir": 0.4, "linear_active_ir": 0.2, "turnover": 0.0}])
    assert not met  # a constant position cannot meet the goal


def test_dry_run_lists_without_downloading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(learning, "fetch", lambda *a: pytest.fail("dry run downloaded"))
    argv = ["--dry-run", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")]
    assert learning.main([*argv, "--files", "bt_goog_1d", "--variants", "pnl,delta"]) == 0
    printed = capsys.readouterr().out
    assert "bt_goog_1d/pnl/seed_0" in printed and "bt_goog_1d/delta/seed_0" in printed
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()
    assert learning.main([*argv, "--variants", "nope"]) == 2
    assert "--variants nope" in capsys.readouterr().err
