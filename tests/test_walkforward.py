"""Walk-forward evaluation: the fold arithmetic, the explicit bar ranges of the environment, no
test bar reaching a fold's training, the outputs, resuming and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from report_contract import check_report

from marl_jax.env import evaluate, market
from marl_jax.env.data import Bars, synthetic_bars
from marl_jax.env.features import WARMUP_BARS, FeatureNorm, compute_features
from marl_jax.walkforward import WalkForwardError, make_folds
from marl_jax.walkforward.__main__ import main
from marl_jax.walkforward.fold_run import apply_gate, rank_checkpoints
from tests.tiny_config import tiny

W = 8  # the tiny config's window


# ----------------------------------------------------------------------------- fold arithmetic


@pytest.mark.parametrize("rolling", [None, 600])
@pytest.mark.parametrize("gap", [None, 30])
def test_folds_are_ordered_purged_and_tile_the_end(rolling, gap):
    n, k = 5000, 4
    folds = make_folds(n, k, window=W, warmup=WARMUP_BARS, gap=gap, rolling=rolling)
    purge = W + 1 if gap is None else gap
    tb = n // (k + 1)
    assert [f.test for f in folds] == [(n - (k - i) * tb, n - (k - i - 1) * tb) for i in range(k)]
    for f in folds:
        assert f.train[0] < f.train[1] < f.val[0] < f.val[1] < f.test[0]
        assert f.val[0] - f.train[1] == purge
        assert f.test[0] - f.val[1] == purge
        span = f.val[1] - f.train[0]
        assert f.val[1] - f.val[0] == round(0.2 * span)
        if rolling is None:
            assert f.train[0] == 0
        else:
            assert span == rolling
    if rolling is None:  # expanding: each fold trains on more bars than the last
        assert all(a.train[1] < b.train[1] for a, b in zip(folds, folds[1:], strict=False))


def test_val_fraction_sets_the_validation_tail():
    a = make_folds(4000, 2, window=W, warmup=WARMUP_BARS, val_fraction=0.1)
    b = make_folds(4000, 2, window=W, warmup=WARMUP_BARS, val_fraction=0.4)
    for fa, fb in zip(a, b, strict=True):
        assert fa.val[1] == fb.val[1] and fa.test == fb.test
        assert fb.val[1] - fb.val[0] > 3 * (fa.val[1] - fa.val[0])


@pytest.mark.parametrize(
    ("n", "kwargs", "match"),
    [
        (700, {"folds": 3}, "700 bars are too few for 3 folds"),
        (5, {"folds": 3}, "too few for 3 folds"),
        (5000, {"folds": 0}, "--folds 0"),
        (5000, {"folds": 2, "gap": W}, "--gap 8: the purge must be at least window \\+ 1 = 9"),
        (5000, {"folds": 2, "val_fraction": 1.0}, "--val-fraction"),
        (5000, {"folds": 2, "rolling": 4000}, "--rolling 4000"),
    ],
)
def test_bad_layouts_get_one_line(n, kwargs, match):
    with pytest.raises(WalkForwardError, match=match) as err:
        make_folds(n, window=W, warmup=WARMUP_BARS, **kwargs)
    assert "\n" not in str(err.value)


def test_the_least_bars_the_error_suggests_are_enough():
    for k in (1, 3, 5):
        with pytest.raises(WalkForwardError) as err:
            make_folds(300, k, window=W, warmup=WARMUP_BARS)
        need = int(str(err.value).rsplit("at least about ", 1)[1].split()[0])
        make_folds(need, k, window=W, warmup=WARMUP_BARS)


# --------------------------------------------------------------------- explicit bar ranges


def test_env_params_for_a_bar_range_fit_the_normalisation_on_it():
    bars = synthetic_bars(1200, seed=3)
    raw = compute_features(bars)
    params = market.make_env_params(bars, window=W, bounds=(300, 700))
    assert (int(params.start_lo), int(params.start_hi), int(params.last_bar)) == (300, 698, 699)
    norm = market.get_normalisation(params)
    np.testing.assert_allclose(norm.center, FeatureNorm.fit(raw, 300, 700).center)
    np.testing.assert_allclose(
        market.fit_normalisation(features=raw, bounds=(300, 700)).scale, norm.scale
    )
    early = market.make_env_params(bars, window=W, bounds=(0, 400))  # warm-up clamps the start
    assert int(early.start_lo) == WARMUP_BARS + W - 1
    for bad in [(700, 300), (-1, 10), (0, 1201)]:
        with pytest.raises(ValueError, match="is not inside the 1200 bars"):
            market.make_env_params(bars, window=W, bounds=bad)
    with pytest.raises(ValueError, match="the bar range holds bars \\[300, 301\\)"):
        market.make_env_params(bars, window=W, bounds=(300, 301), norm=norm)


def _with_test_bars_changed(bars: Bars, a: int, b: int) -> Bars:
    """``bars`` with the prices of bars ``[a, b)`` raised by 7%."""
    prices = (bars.open, bars.high, bars.low, bars.close)
    return Bars(bars.timestamp, *[np.r_[x[:a], x[a:b] * 1.07, x[b:]] for x in prices], bars.volume)


def test_a_folds_train_and_val_envs_never_see_its_test_bars():
    from marl_jax.config import config_from_dict
    from marl_jax.walkforward.fold_run import fold_envs

    cfg = config_from_dict(tiny())
    bars = synthetic_bars(1500, seed=1)
    fold = make_folds(len(bars), 2, window=W, warmup=WARMUP_BARS)[0]
    changed = _with_test_bars_changed(bars, *fold.test)
    e1, e2 = fold_envs(cfg, bars, fold), fold_envs(cfg, changed, fold)
    for part in ("train", "val"):
        for x, y in zip(jax_leaves(getattr(e1, part)), jax_leaves(getattr(e2, part)), strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(e1.test.log_returns, e2.test.log_returns)
    assert e1.train.features.shape == e1.test.features.shape == (len(bars), 13)  # one program


# -------------------------------------------------------------------------- whole walk-forward


def _write_bars(path: Path, bars: Bars) -> str:
    bars.to_frame().to_csv(path, index=False)
    return str(path)


def _config(tmp_path: Path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny(checkpoint={"save_every": 1})))
    return str(path)


def _weights(run_dir: Path):
    from marl_jax.run.sources import load_models_from

    _, bundle = load_models_from(f"{run_dir}:latest")
    return {**bundle.agents, "critic": bundle.critic}


def _args(cfg, data, out, *extra):
    return ["--config", cfg, "--data", data, "--folds", "2", "--out", str(out), "--no-progress",
            *extra]  # fmt: skip


@pytest.mark.slow
def test_walk_forward_outputs_no_test_leak_and_resume(tmp_path, capsys):
    """A 2-fold walk-forward; then the same with fold 0's test bars changed: fold 0's weights
    stay bit-identical, fold 1's (which trains on those bars) do not; then a resume."""
    cfg = _config(tmp_path)
    bars = synthetic_bars(1500, seed=0)
    folds = make_folds(len(bars), 2, window=W, warmup=WARMUP_BARS)
    changed = _with_test_bars_changed(bars, *folds[0].test)
    out1, out2 = tmp_path / "wf1", tmp_path / "wf2"
    assert main(_args(cfg, _write_bars(tmp_path / "a.csv", bars), out1, "--gate")) == 0
    table = capsys.readouterr().out
    assert main(_args(cfg, _write_bars(tmp_path / "b.csv", changed), out2, "--gate")) == 0

    # No test bar reaches training, normalisation or selection.
    w1, w2 = _weights(out1 / "fold_0"), _weights(out2 / "fold_0")
    for x, y in zip(jax_leaves(w1), jax_leaves(w2), strict=True):
        np.testing.assert_array_equal(x, y)
    r1, r2 = (json.loads((o / "report.json").read_text()) for o in (out1, out2))
    assert r1["folds"][0]["selection"] == r2["folds"][0]["selection"]
    # Chosen by the default metric, the validation active IR: the best recorded score.
    selection = r1["folds"][0]["selection"]
    assert selection["metric"] == "validation active_ir"
    assert r1["options"]["select_by"] == "active_ir"
    scores = {int(s): v for s, v in selection["scores"].items()}
    assert len(scores) > 1 and selection["step"] == max(scores, key=lambda s: (scores[s], s))
    # --gate: each fold held its checkpoint or, where that did not beat them on validation,
    # the better of buy-and-hold and flat, whose test run is then the policy's.
    assert r1["options"]["gate"] is True and len(r1["gate_held"]) == 2
    for f, held in zip(r1["folds"], r1["gate_held"], strict=True):
        gate = f["selection"]["gate"]
        assert held == gate["held"] and set(gate["validation"]) == {"buy_and_hold", "flat"}
        best = max(gate["validation"].values())
        if held == "checkpoint":
            assert scores_of(f)[f["selection"]["step"]] > best
        else:
            assert gate["validation"][held] == best >= scores_of(f)[f["selection"]["step"]]
            assert f["metrics"]["policy"] == f["metrics"][held]
    assert "gate: the folds held" in table
    assert r1["folds"][0]["metrics"] != r2["folds"][0]["metrics"]
    v1, v2 = (jax_leaves(_weights(o / "fold_1")) for o in (out1, out2))
    assert any(not np.array_equal(x, y) for x, y in zip(v1, v2, strict=True))

    # returns.csv: one row per test bar, the policy and every baseline; the report from it.
    frame = pd.read_csv(out1 / "returns.csv")
    assert list(frame.columns) == ["timestamp", "fold", "instrument", "position", "policy",
                                   *evaluate.BASELINES]  # fmt: skip
    assert check_report(out1, "walkforward") == r1
    assert r1["provenance"]["config"] == str(cfg) and r1["provenance"]["data"].endswith("a.csv")
    assert set(frame["instrument"]) == {"a.csv"}
    assert len(frame) == sum(f.test[1] - f.test[0] - 1 for f in folds)
    assert frame["timestamp"].iloc[0] == str(pd.Timestamp(bars.timestamp[folds[0].test[0]]))
    for name in ("policy", *evaluate.BASELINES):
        pooled = r1["metrics"][name]["total_log_return"]
        assert frame[name].sum() == pytest.approx(pooled, rel=1e-5, abs=1e-7)
        for f in r1["folds"]:
            part = frame.loc[frame["fold"] == f["fold"], name]
            assert part.sum() == pytest.approx(f["metrics"][name]["total_log_return"], abs=1e-6)
    assert (out1 / "equity_curve.png").stat().st_size > 0
    assert "pooled" in table and "buy_and_hold" in table
    assert r1["folds"][0]["normalisation_fitted_on"] == list(folds[0].train)

    # A kill after fold 0: --resume skips fold 0 and redoes fold 1 to the same result.
    done0 = (out1 / "fold_0" / "fold.json").stat().st_mtime_ns
    (out1 / "fold_1" / "fold.json").unlink()
    (out1 / "returns.csv").unlink()
    assert main(["--resume", "--out", str(out1), "--no-progress"]) == 0
    assert (out1 / "fold_0" / "fold.json").stat().st_mtime_ns == done0
    assert pd.read_csv(out1 / "returns.csv").equals(frame)
    resumed = json.loads((out1 / "report.json").read_text())
    assert resumed["provenance"].pop("created") and r1["provenance"].pop("created")
    assert resumed == r1  # the config as given recorded in walkforward.json

    # Starting again in the same folder, or resuming with a changed layout, is refused.
    assert main(_args(cfg, str(tmp_path / "a.csv"), out1)) == 2
    assert "already holds a walk-forward" in capsys.readouterr().err
    assert main(["--resume", "--out", str(out1), "--folds", "3"]) == 2
    assert "drop --folds" in capsys.readouterr().err
    assert main(["--resume", "--out", str(out1), "--select-by", "total_log_return"]) == 2
    assert "drop --select-by" in capsys.readouterr().err
    (tmp_path / "a.csv").write_text((tmp_path / "b.csv").read_text())
    assert main(["--resume", "--out", str(out1)]) == 2
    assert "the data file changed" in capsys.readouterr().err


def test_checkpoints_rank_by_the_chosen_validation_metric():
    """The two metrics disagree here: the net return prefers step 1 (a drift carried into
    validation), the active IR step 2; instruments' scores add; a tie goes to the later step."""
    validation = {
        1: [{"active_ir": 0.0, "total_log_return": 0.30}],
        2: [{"active_ir": 0.8, "total_log_return": 0.10}],
        3: [{"active_ir": 0.1, "total_log_return": 0.05}],
    }
    assert rank_checkpoints(validation, "total_log_return")[0] == 1
    best, scores = rank_checkpoints(validation, "active_ir")
    assert best == 2 and scores == {1: 0.0, 2: 0.8, 3: 0.1}
    two = {1: [{"active_ir": 0.5}, {"active_ir": 0.5}], 2: [{"active_ir": 1.0}, {"active_ir": 0.0}]}
    assert rank_checkpoints(two, "active_ir") == (2, {1: 1.0, 2: 1.0})


def test_select_by_is_recorded_and_old_manifests_keep_the_net_return(tmp_path):
    from marl_jax.walkforward.__main__ import build_parser, spec_from_args
    from marl_jax.walkforward.driver import select_by

    parse = build_parser().parse_args
    spec = spec_from_args(parse(["--out", str(tmp_path), "--select-by", "total_log_return"]))
    assert spec.options()["select_by"] == "total_log_return"
    assert spec_from_args(parse(["--out", str(tmp_path)])).options()["select_by"] == "active_ir"
    assert select_by({"folds": 5}) == "total_log_return"  # recorded before the choice existed
    with pytest.raises(SystemExit):
        parse(["--out", str(tmp_path), "--select-by", "sharpe"])


def scores_of(fold: dict) -> dict[int, float]:
    return {int(s): v for s, v in fold["selection"]["scores"].items()}


def test_the_gate_holds_the_better_baseline_when_no_checkpoint_beats_it():
    bars = synthetic_bars(1200, seed=3)
    val = market.make_env_params(bars, "val", window=W)
    runs = evaluate.evaluate_baselines(val)
    runs["policy"] = runs["random"]
    bh = float(runs["buy_and_hold"].metrics["total_log_return"])
    for score, held in ((abs(bh) + 1.0, "checkpoint"), (-abs(bh) - 1.0, None)):
        selection, out = {}, dict(runs)
        apply_gate(selection, out, score, val, "total_log_return")
        gate = selection["gate"]
        assert gate["validation"] == {"buy_and_hold": bh, "flat": 0.0}
        expected = held or ("buy_and_hold" if bh >= 0 else "flat")
        assert gate["held"] == expected
        assert out["policy"] is (runs["random"] if held else runs[expected])
    # By active IR both score 0: buy-and-hold, the first, is held on the tie.
    selection = {}
    apply_gate(selection, dict(runs), -0.5, {"a": val}, "active_ir")
    assert selection["gate"] == {
        "validation": {"buy_and_hold": 0.0, "flat": 0.0},
        "held": "buy_and_hold",
    }


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--set", "env.synthetic_n_bars=400"], "400 bars are too few for 2 folds"),
        (["--rolling", "100000"], "--rolling 100000"),
        (["--gap", "3"], "--gap 3"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, match):
    cfg = _config(tmp_path)
    out = tmp_path / "wf"
    code = main(["--config", cfg, "--folds", "2", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1
    assert not out.exists()  # nothing is written before the layout is valid


@pytest.mark.parametrize("flag", [["--gate"], ["--sweep", "s.yaml"]])
def test_gate_and_sweep_take_one_data_file(tmp_path, capsys, flag):
    data = [
        _write_bars(tmp_path / f"{n}.csv", synthetic_bars(1500, seed=i)) for i, n in enumerate("ab")
    ]
    (tmp_path / "s.yaml").write_text("grid: {training.actor_lr: [0.001, 0.002]}\n")
    flag = [str(tmp_path / f) if f.endswith(".yaml") else f for f in flag]
    argv = ["--config", _config(tmp_path), "--data", data[0], "--data", data[1], *flag]
    assert main([*argv, "--folds", "2", "--out", str(tmp_path / "wf"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{flag[0]} with several --data files: not supported" in err and err.count("\n") == 1


def test_cli_resume_without_a_walk_forward(tmp_path, capsys):
    assert main(["--resume", "--out", str(tmp_path / "none")]) == 2
    assert "start the walk-forward without --resume" in capsys.readouterr().err


def test_resume_refuses_a_manifest_whose_folds_differ(tmp_path, capsys):
    from marl_jax.config import config_from_dict, config_to_dict

    out = tmp_path / "wf"
    out.mkdir()
    options = {"folds": 2, "gap": None, "val_fraction": 0.2, "rolling": None}
    manifest = {
        "config": config_to_dict(config_from_dict(tiny())),
        "data_sha256": None,
        "options": options,
        "folds": [f.to_dict() for f in make_folds(1500, 2, window=W, warmup=WARMUP_BARS)],
    }
    (out / "walkforward.json").write_text(json.dumps(manifest))
    manifest["folds"][0]["test"] = [0, 1]
    (tmp_path / "moved.json").write_text(json.dumps(manifest))
    # The recorded layout is accepted as far as the folds (no run starts: the lock is held).
    from marl_jax.run.rundir import RunLock

    with RunLock(out):
        assert main(["--resume", "--out", str(out)]) == 2
        assert "in use by another process" in capsys.readouterr().err
    (tmp_path / "moved.json").replace(out / "walkforward.json")
    assert main(["--resume", "--out", str(out)]) == 2
    assert "its folds differ" in capsys.readouterr().err


def test_resume_refuses_a_changed_or_removed_plant_sidecar(tmp_path, capsys):
    """The manifest records the sidecar's SHA-256 beside the data file's: a resume whose
    oracle would differ from the folds already tested is refused in one line."""
    from marl_jax.config import config_from_dict, config_to_dict
    from marl_jax.run.planted import sidecar_path
    from marl_jax.walkforward.driver import _digest, _sidecar_digest

    data = Path(_write_bars(tmp_path / "a.csv", synthetic_bars(1500, seed=0)))
    sidecar_path(data).write_text('{"s": [0.5]}')
    cfg = config_from_dict(tiny(env={"data_path": str(data)}))
    out = tmp_path / "wf"
    out.mkdir()
    manifest = {
        "config": config_to_dict(cfg),
        "data_sha256": _digest(cfg),
        "sidecar_sha256": _sidecar_digest(cfg),
        "options": {"folds": 2, "gap": None, "val_fraction": 0.2, "rolling": None},
        "folds": [],
    }
    (out / "walkforward.json").write_text(json.dumps(manifest))
    assert manifest["sidecar_sha256"] is not None
    for change in ('{"s": [0.25]}', None):
        if change is None:
            sidecar_path(data).unlink()
        else:
            sidecar_path(data).write_text(change)
        assert main(["--resume", "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "plant sidecar (.plant.json) was changed, added or removed" in err
        assert err.count("\n") == 1
