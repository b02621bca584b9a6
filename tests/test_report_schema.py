"""The one report of every command (schema version 1): the JSON Schema, the provenance, the
checks and returns.csv, on reports built from the evaluator's baselines (no training; the
reports of real train, backtest, walk-forward and sweep runs are checked where those tests
produce them, with tests/report_contract.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
from report_contract import check_report
from tiny_config import tiny

import marl_jax
from marl_jax import metrics
from marl_jax.config import config_from_dict
from marl_jax.env import data, evaluate
from marl_jax.run import provenance
from marl_jax.run.report import (
    REPORT_SCHEMA,
    SplitPart,
    build_report,
    fold_entry,
    format_report,
    write_report_json,
    write_split_report,
)
from marl_jax.run.setup import env_params_for
from marl_jax.walkforward.instruments import write_instruments_outputs
from marl_jax.walkforward.pooled import format_table, write_outputs

N_BARS = 700


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """``(bar file, bars, config)`` of a small synthetic bar file."""
    root = tmp_path_factory.mktemp("report")
    path = root / "bars.csv"
    data.synthetic_bars(N_BARS, seed=3).to_frame().to_csv(path, index=False)
    bars = data.load_bars(path)
    cfg = config_from_dict(tiny(env={"data_path": str(path)}))
    return path, bars, cfg


def _runs(cfg, params, policy: str) -> dict[str, evaluate.EvalRun]:
    """The baselines over ``params``, with the baseline ``policy`` standing in for the policy."""
    runs = {"policy": evaluate.run_baseline(policy, params, seed=1)}
    runs.update(evaluate.evaluate_baselines(params, seed=cfg.seed))
    return runs


def test_the_schema_requires_every_summary_key_of_every_agent():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    shipped = project["tool"]["setuptools"]["package-data"]["marl_jax"]
    assert REPORT_SCHEMA.relative_to(Path(marl_jax.__file__).parent).as_posix() in shipped
    schema = json.loads(REPORT_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$defs"]["summary"]["required"] == list(metrics.SUMMARY_KEYS)


def test_a_single_split_report_follows_the_contract(market, tmp_path, monkeypatch):
    path, bars, cfg = market
    params = env_params_for(cfg, bars, "test", None)
    runs = _runs(cfg, params, "momentum")
    part = SplitPart(path.name, bars.timestamp, provenance.bar_calendar(cfg, bars), runs)
    monkeypatch.chdir(tmp_path)  # the working directory is not what the commit is read from
    report = write_split_report(
        tmp_path,
        "backtest",
        [part],
        cfg=cfg,
        config="tiny",
        data=str(path),
        cost_bps=2.0,
        title="test split",
    )
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert (tmp_path / "equity_curve.png").read_bytes()[:4] == b"\x89PNG"
    check_report(tmp_path, "backtest")
    # Every metric of the summary, for the policy and each baseline (not the table's 11).
    assert list(report["metrics"]) == ["policy", "buy_and_hold", "flat", "random", "momentum"]
    for name, run in runs.items():
        assert report["metrics"][name] == pytest.approx(run.metrics)
    prov = report["provenance"]
    assert prov["data_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # The commit of the code that ran (this checkout's HEAD), not of the working directory.
    assert prov["git_commit"] == provenance.git_commit(provenance.SOURCE_DIR)
    assert prov["cost_bps"] == 2.0 and prov["config"] == "tiny"
    lo, last = int(params.start_lo), int(params.last_bar)
    assert prov["bars"] == last - lo
    assert prov["first_timestamp"] == provenance.iso_timestamp(bars.timestamp[lo])
    # The calendar the evaluation annualised with: measured on the file's train split.
    assert prov["interval_minutes"] == 30.0
    assert prov["periods_per_year"] == pytest.approx(float(params.periods_per_year))
    fold = report["folds"][0]
    assert (fold["fold"], fold["first_timestamp"]) == (0, prov["first_timestamp"])
    assert report["checks"] == {
        "folds": 1,
        "one_sign_folds": 0,  # momentum changes sign
        "capture": None,
        "one_sign_fold_numbers": [],
    }
    assert max(map(len, format_report(report).splitlines())) <= 100
    # A changed metric key breaks the schema.
    broken = json.loads(json.dumps(report))
    del broken["metrics"]["flat"]["dsr"]
    with pytest.raises(jsonschema.ValidationError, match="dsr"):
        jsonschema.validate(broken, json.loads(REPORT_SCHEMA.read_text()))


def test_the_config_hash_and_git_commit(market, tmp_path):
    _, _, cfg = market
    same = config_from_dict(json.loads(json.dumps(tiny(env={"data_path": cfg.env.data_path}))))
    other = config_from_dict(tiny(env={"data_path": cfg.env.data_path, "cost_bps": 3.0}))
    assert provenance.config_sha256(same) == provenance.config_sha256(cfg)
    assert provenance.config_sha256(other) != provenance.config_sha256(cfg)
    assert provenance.git_commit(tmp_path) is None
    assert provenance.git_dirty(tmp_path) is None
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "code.py").write_text("a = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    assert provenance.git_commit(tmp_path) == head.stdout.strip()
    assert provenance.git_dirty(tmp_path) is False
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "new.py").write_text("b = 2\n")  # a new file: code that may have run
    assert provenance.git_dirty(tmp_path) is True
    assert provenance.git_dirty(tmp_path / "sub") is True
    (tmp_path / "sub" / "new.py").unlink()
    (tmp_path / "code.py").write_text("a = 2\n")
    assert provenance.git_dirty(tmp_path) is True
    (tmp_path / "sub" / "x.py").write_text("c = 3\n")
    subprocess.run([*git, "add", "sub/x.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "y", "--", "sub/x.py"], check=True)
    assert provenance.git_dirty(tmp_path / "sub") is False  # the change is outside this folder


def _fold(cfg, bars, k: int, bounds: tuple[int, int], policy: str) -> tuple[dict, dict]:
    """A finished fold as the walk-forward keeps it: ``fold.json``'s summary and its arrays."""
    params = env_params_for(cfg, bars[: bounds[1]], "test", None, bounds=bounds)
    runs = _runs(cfg, params, policy)
    summary = {
        "fold": k,
        "train": [0, bounds[0]],
        "selection": {"metric": "validation sharpe", "step": 2},
        "test": {name: r.metrics for name, r in runs.items()},
    }
    arrays = {"bar_index": runs["policy"].bar_index}
    arrays.update(
        {n: {"rewards": r.rewards, "positions": r.positions, "pnl": r.pnl} for n, r in runs.items()}
    )
    return summary, arrays


def test_a_walk_forward_report_follows_the_contract(market, tmp_path):
    path, bars, cfg = market
    folds = [
        _fold(cfg, bars, 0, (300, 500), "buy_and_hold"),  # one sign
        _fold(cfg, bars, 1, (500, N_BARS), "momentum"),
    ]
    header = {"config_name": "tiny", "data": str(path), "data_sha256": "x", "options": {}}
    report = write_outputs(tmp_path, folds, bars, header, cfg, "tiny")
    check_report(tmp_path, "walkforward")
    assert "data" not in report and report["options"] == {}  # the header, less the provenance
    assert report["checks"]["one_sign_folds"] == 1
    assert report["checks"]["one_sign_fold_numbers"] == [0]
    assert [f["metrics"]["policy"] for f in report["folds"]] == [
        f[0]["test"]["policy"] for f in folds
    ]
    assert report["folds"][1]["selection"]["step"] == 2 and "test" not in report["folds"][1]
    assert report["provenance"]["bars"] == sum(len(a["bar_index"]) for _, a in folds)
    text = format_table(report)
    assert max(map(len, text.splitlines())) <= 100
    assert "one-sign test folds: 1 of 2" in text


def test_a_walk_forward_over_instruments_follows_the_contract(market, tmp_path):
    path, bars, cfg = market
    other = data.synthetic_bars(N_BARS, seed=4)
    markets = {"bars.csv": bars, "other.csv": other}
    results = []
    for k, (bounds, policy) in enumerate((((300, 500), "buy_and_hold"), ((500, 700), "flat"))):
        parts = {name: _fold(cfg, b, k, bounds, policy) for name, b in markets.items()}
        summary = {"fold": k, "selection": {}, "test": parts["bars.csv"][0]["test"]}
        results.append((summary, {name: p[1] for name, p in parts.items()}))
    header = {"config_name": "tiny", "data": [str(path), "other.csv"], "options": {}}
    report = write_instruments_outputs(tmp_path, results, markets, header, cfg, "tiny")
    check_report(tmp_path, "walkforward")
    assert report["provenance"]["data"] == [str(path), "other.csv"]
    assert report["provenance"]["data_sha256"][1] is None  # not a file here
    assert report["checks"]["one_sign_folds"] == 2
    assert set(report["instruments"]) == set(markets)
    assert max(map(len, format_table(report).splitlines())) <= 100


def test_a_non_finite_metric_is_null_in_the_report_and_n_a_in_the_table(market, tmp_path):
    _, bars, cfg = market
    params = env_params_for(cfg, bars, "test", None)
    by_name = {k: dict(r.metrics) for k, r in _runs(cfg, params, "flat").items()}
    by_name["flat"]["sharpe"] = float("nan")
    stamps = bars.timestamp[:3]
    prov = provenance.provenance(
        cfg=cfg,
        config="tiny",
        data=None,
        stamps=stamps,
        calendar=provenance.bar_calendar(cfg, bars),
        cost_bps=1.0,
    )
    checks = {"folds": 1, "one_sign_folds": 1, "capture": None}
    report = build_report("train", prov, by_name, checks, [fold_entry(0, stamps, by_name)])
    assert report["metrics"]["flat"]["sharpe"] is None
    write_report_json(tmp_path / "report.json", report)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    jsonschema.validate(report, json.loads(REPORT_SCHEMA.read_text()))
    sharpe = next(line for line in format_report(report).splitlines() if line.startswith("sharpe"))
    assert sharpe.split()[3] == "n/a"  # policy, buy-and-hold, flat
    with pytest.raises(ValueError, match="core keys"):
        build_report("train", prov, by_name, checks, [], metrics={})
