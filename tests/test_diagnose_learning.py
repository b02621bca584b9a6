"""python -m marl_jax.diagnose on a tiny 2-fold walk-forward: the walk-forward's own
validation scores, the entropies of metrics.jsonl, the signal shares and the critic's
correlation as the deployed Policy computes them, and the one-line error. On the same
walk-forward: benchmarks/selection.py's rescoring of every kept checkpoint."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from marl_jax import diagnose as diag
from marl_jax.config import load_config
from marl_jax.env.data import synthetic_bars
from marl_jax.run.deploy import load_policy
from marl_jax.walkforward import Fold
from marl_jax.walkforward.__main__ import main as walk_forward_main
from marl_jax.walkforward.fold_run import fold_envs
from tests.tiny_config import tiny


def test_a_folder_that_is_not_a_walk_forward_is_one_line_and_exit_2(tmp_path, capsys):
    assert diag.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path) in err and "not a walk-forward folder" in err
    assert not (tmp_path / diag.DIAGNOSIS).exists()


def test_correlation_and_signal_shares():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    c = diag.correlation(x, 2 * x + 0.1 * rng.normal(size=200))
    assert 0.99 < c["pearson"] <= 1 and 0.99 < c["spearman"] <= 1
    assert diag.correlation(np.ones(200), x) == {"pearson": None, "spearman": None}
    shares = diag.signal_shares(np.array([-1 / 3, 0.0, 0.0, 1 / 3, -0.0]))
    assert shares == {"-0.333": 0.2, "+0.000": 0.6, "+0.333": 0.2}


@pytest.fixture(scope="module")
def walk_forward(tmp_path_factory) -> Path:
    """A tiny 2-fold walk-forward on synthetic bars (2 checkpoints per fold)."""
    root = tmp_path_factory.mktemp("diag")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny(checkpoint={"save_every": 1})))
    data = root / "bars.csv"
    synthetic_bars(1500, seed=0).to_frame().to_csv(data, index=False)
    out = root / "wf"
    argv = ["--config", str(cfg), "--data", str(data), "--folds", "2", "--out", str(out)]
    assert walk_forward_main([*argv, "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_diagnosis_of_a_walk_forward(walk_forward, tmp_path, capsys):
    assert diag.main([str(walk_forward), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / diag.DIAGNOSIS).read_text())
    assert not (walk_forward / diag.DIAGNOSIS).exists()
    d = result["walkforwards"][str(walk_forward)]
    assert [f["fold"] for f in d["folds"]] == [0, 1]
    for f in d["folds"]:
        root = walk_forward / f"fold_{f['fold']}"
        summary = json.loads((root / "fold.json").read_text())
        # 1. Every checkpoint's validation score is the walk-forward's own selection score.
        scores = summary["selection"]["scores"]
        assert f["selection_metric"] == "active_ir"  # the walk-forward's default
        assert [r["step"] for r in f["curve"]] == sorted(map(int, scores))
        for r in f["curve"]:
            assert r["val_score"] == pytest.approx(scores[str(r["step"])], rel=1e-6, abs=1e-9)
            assert r["train_turnover"] >= 0 and r["val_turnover"] >= 0
            assert 0 < r["train_modal_share"] <= 1 and 0 < r["val_modal_share"] <= 1
        assert f["chosen_step"] == summary["selection"]["step"]
        # 2. The entropies are metrics.jsonl's (2 updates: the first and the last row).
        rows = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
        for name in ("mlmi", "nwrqk", "mmd"):
            e, key = f["training_metrics"][f"{name}/entropy"], f"{name}/entropy"
            assert e["first"] == pytest.approx(rows[0][key])
            assert e["last"] == pytest.approx(rows[-1][key])
            assert 0 < e["min"] <= min(e["first"], e["last"]) <= math.log(3) + 1e-5
        loss = f["training_metrics"]["value_loss"]
        assert loss["first"] == pytest.approx(rows[0]["value_loss"])
        # 3. and 4. Against the deployed Policy on the same validation bars.
        cfg = load_config(root / "config.yaml")
        bars = synthetic_bars(1500, seed=0)
        test = json.loads((walk_forward / "walkforward.json").read_text())["folds"][f["fold"]]
        fold = Fold(f["fold"], tuple(f["train"]), tuple(f["val"]), tuple(test["test"]))
        val = fold_envs(cfg, bars, fold).val
        ts = np.arange(int(val.start_lo), int(val.last_bar))
        decided = load_policy(f"{root}:{f['chosen_step']}").decide_many(bars, ts[0], ts[-1] + 1)
        for kind in ("greedy", "sampled"):
            assert sum(f["signal_shares"][kind].values()) == pytest.approx(1.0)
        assert f["signal_shares"]["greedy"] == diag.signal_shares(decided.signal)
        next_r = np.asarray(val.log_returns, np.float64)[ts + 1]
        corr = f["correlation_with_next_return"]
        # ValueNorm's denormalisation is affine and increasing: the correlation is the raw one.
        expected = diag.correlation(decided.value.astype(np.float64), next_r)
        assert corr["critic_value"]["pearson"] == pytest.approx(expected["pearson"], abs=1e-4)
        for c in corr.values():
            assert all(v is None or -1 <= v <= 1 for v in c.values())
        assert set(corr) >= {"critic_value", "advantage", "linear_prediction"}
        assert f["valuenorm_std"]["divided_by"] >= 0.1 - 1e-6  # ValueNorm's variance floor
        assert f["valuenorm_std"]["target_std"] >= 0 and f["critic_td_std_over_return_std"] > 0
    pooled = d["pooled"]
    for kind in ("greedy", "sampled"):
        assert sum(pooled["signal_shares"][kind].values()) == pytest.approx(1.0)
    assert "train_ret" in printed and "pooled" in printed and "critic_value" in printed


@pytest.mark.slow
def test_every_checkpoint_rescored_on_the_test_folds(walk_forward, tmp_path, capsys):
    """benchmarks/selection.py: the ``validation`` rule reproduces the report's pooled figure
    and its one-sign folds; each kept step is a rule whose pooled figure is the stitched
    test folds of that step's checkpoints; hindsight takes, fold by fold, the step with the
    best test figure."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "selection.py"
    spec = importlib.util.spec_from_file_location("bench_selection", path)
    selection = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(selection)
    report = json.loads((walk_forward / "report.json").read_text())
    out = tmp_path / "rescored.json"
    assert selection.main([str(walk_forward), "--json", str(out)]) == 0
    (res,) = json.loads(out.read_text())
    assert res["validation"]["active_ir"] == pytest.approx(report["metrics"]["policy"]["active_ir"])
    assert res["validation"]["one_sign"] == report["checks"]["one_sign_folds"]
    assert res["validation"]["oracle_ir"] is None  # not planted
    steps = sorted(int(p.name) for p in (walk_forward / "fold_0" / "checkpoints").iterdir())
    assert {f"update {s}" for s in steps} <= set(res)
    chosen = {
        json.loads((walk_forward / f"fold_{k}" / "fold.json").read_text())["selection"]["step"]
        for k in (0, 1)
    }
    if len(chosen) == 1:  # both folds chose the same step: that rule is the walk-forward's
        assert res[f"update {chosen.pop()}"]["active_ir"] == pytest.approx(
            res["validation"]["active_ir"]
        )
    hindsight = res[selection.HINDSIGHT]["active_ir"]
    assert hindsight >= min(res[f"update {s}"]["active_ir"] for s in steps) - 1e-9
    printed = capsys.readouterr().out
    assert "| validation |" in printed and "best on test (hindsight)" in printed
    assert selection.main([str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
