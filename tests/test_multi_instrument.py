"""Several instruments in one run: ``env.data_paths`` / repeated ``--data``, normalisation per
instrument (saved and checked on resume), and the test report per instrument and pooled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
import yaml
from report_contract import check_report
from tiny_config import TINY, tiny

from marl_jax import train
from marl_jax.config import config_to_dict, load_config
from marl_jax.env import data, evaluate, market
from marl_jax.env.features import WARMUP_BARS
from marl_jax.policy import PolicyError
from marl_jax.run import loop
from marl_jax.run.checkpointer import TrainCheckpointer
from marl_jax.run.deploy import load_policy
from marl_jax.run.report import format_report
from marl_jax.run.rundir import RunError
from marl_jax.run.session import train_run
from marl_jax.run.setup import RunSpec, _resolve_config, env_params_for, load_market
from marl_jax.run.steps import saved_normalisation
from marl_jax.walkforward import make_folds
from marl_jax.walkforward.__main__ import main as walkforward_main
from marl_jax.walkforward.pooled import format_table

# Two instruments of different lengths, price levels and volatility.
FILES = {"aaa.csv": (1500, 1, 100.0), "bbb.csv": (1300, 2, 5.0)}


def write_bars(folder: Path, name: str, seed_shift: int = 0) -> Path:
    n, seed, price = FILES[name]
    bars = data.synthetic_bars(n, seed=seed + seed_shift, start_price=price)
    path = folder / name
    bars.to_frame().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bars")
    return {name: write_bars(folder, name) for name in FILES}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, files, config_file):
    """One short run over both files, given as two ``--data``."""
    out = tmp_path_factory.mktemp("multi") / "run"
    data_args = tuple(str(p) for p in files.values())
    return train_run(RunSpec(out=str(out), config=str(config_file), data=data_args), progress=False)


def test_repeated_data_is_env_data_paths_and_one_data_is_data_path(files, config_file, tmp_path):
    a, b = (str(p) for p in files.values())
    args = train.build_parser().parse_args(["--data", a, "--data", b])
    assert args.data == [a, b]

    def resolved(**kw) -> dict:
        spec = RunSpec(out="x", config=str(config_file), **kw)
        return config_to_dict(_resolve_config(spec, None))

    repeated = resolved(data=(a, b))
    assert repeated == resolved(overrides=(f"env.data_paths=[{a}, {b}]",))
    assert repeated["env"]["data_paths"] == [a, b] and repeated["env"]["data_path"] is None
    one = resolved(data=(a,))
    assert one == resolved(data=a) == resolved(overrides=(f"env.data_path={a}",))
    assert one["env"]["data_path"] == a and one["env"]["data_paths"] == []
    # --data replaces the config file's data, whichever key it used.
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump(tiny(env={"data_paths": [a, b]})))
    cfg = _resolve_config(RunSpec(out="x", config=str(both), data=(a,)), None)
    assert cfg.env.data_path == a and cfg.env.data_paths == ()


def test_data_path_with_data_paths_is_one_line_and_exit_2(files, config_file, tmp_path, capsys):
    a, b = (str(p) for p in files.values())
    argv = ["--config", str(config_file), "--out", str(tmp_path / "run"), "--no-progress"]
    argv += ["--set", f"env.data_path={a}", "--set", f"env.data_paths=[{b}]"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "env.data_paths" in err and "not both" in err
    assert not (tmp_path / "run").exists()


def test_a_one_instrument_command_refuses_several(files, config_file):
    cfg = load_config(config_file, [f"env.data_paths=[{', '.join(map(str, files.values()))}]"])
    with pytest.raises(RunError, match="2 instruments, but this command takes one"):
        load_market(cfg)
    one = load_config(config_file, [f"env.data_paths=[{files['aaa.csv']}]"])
    assert len(load_market(one)) == FILES["aaa.csv"][0]


@pytest.mark.slow
def test_normalisation_is_fitted_per_instrument_and_saved(multi_run, files):
    run = multi_run.run
    assert list(run.instruments) == list(FILES)
    report_norms = multi_run.report["normalisation"]
    ckpt = TrainCheckpointer(run.dir.checkpoints, read_only=True)
    try:
        saved = saved_normalisation(ckpt, ckpt.latest_step())
    finally:
        ckpt.close()
    for name, path in files.items():
        own = market.fit_normalisation(
            data.load_bars(path), run.cfg.env.split_fractions, clip=run.cfg.env.norm_clip
        )
        norm = run.instruments[name].norm  # as the environment holds it, in float32
        assert np.array_equal(norm.center, own.center.astype(np.float32))
        assert np.array_equal(norm.scale, own.scale.astype(np.float32))
        assert report_norms[name] == norm.to_dict() == saved[name].to_dict()
    a, b = (run.instruments[n].norm for n in FILES)
    assert not np.allclose(a.center, b.center)
    # The one environment normalised each instrument's bars with its own.
    n_a = FILES["aaa.csv"][0]
    params = run.train_params
    assert np.allclose(params.features[:n_a], run.instruments["aaa.csv"].train_params.features)
    assert np.allclose(params.features[n_a:], run.instruments["bbb.csv"].train_params.features)


@pytest.mark.slow
def test_both_instruments_are_drawn_in_training(multi_run):
    run, state = multi_run.run, multi_run.state
    params = run.train_params
    assert params.start_lo.shape == (2,)
    init = jax.jit(run.algo.init)
    drawn = set()
    for seed in range(8):
        drawn.update(np.asarray(init(jax.random.key(seed), params, None).env_state.instrument))
    assert drawn == {0, 1}
    # The trained environments sit inside the bars of the instrument each drew.
    env = state.env_state
    inst = np.asarray(env.instrument)
    t = np.asarray(env.t)
    assert np.all(t >= np.asarray(params.start_lo)[inst])
    assert np.all(t <= np.asarray(params.last_bar)[inst])


@pytest.mark.slow
def test_the_report_gives_each_instrument_and_pooled(multi_run):
    run, report = multi_run.run, multi_run.report
    assert set(report["instruments"]) == set(FILES)
    on_disk = check_report(run.out, "train")
    assert on_disk["instruments"].keys() == report["instruments"].keys()
    assert list(pd.read_csv(run.out / "returns.csv")["instrument"].unique()) == list(FILES)
    for name, part in report["instruments"].items():
        assert set(part["metrics"]) == {"policy", *evaluate.BASELINES}
        inst = run.instruments[name]
        test = env_params_for(run.cfg, inst.bars, "test", inst.norm)
        linear = evaluate.LinearBaseline.fit(inst.train_params)
        own = evaluate.run_baseline("linear", test, linear=linear)
        assert part["metrics"]["linear"] == pytest.approx(own.metrics)
    # Pooled: the instruments' per-bar net returns concatenated.
    for key in ("policy", *evaluate.BASELINES):
        parts = [p["metrics"][key] for p in report["instruments"].values()]
        pooled = report["metrics"][key]
        assert pooled["total_log_return"] == pytest.approx(
            sum(p["total_log_return"] for p in parts), rel=1e-6, abs=1e-9
        )
    table = format_report(report)
    assert [line for line in table.splitlines() if line.endswith(":")] == [
        "aaa.csv:",
        "bbb.csv:",
        "pooled:",
    ]


@pytest.mark.slow
def test_resume_checks_every_instruments_normalisation(multi_run, tmp_path):
    run = multi_run.run
    ckpt = TrainCheckpointer(run.dir.checkpoints, read_only=True)
    try:
        loop._check_normalisation(run, ckpt, ckpt.latest_step())  # the same data: no error
    finally:
        ckpt.close()
    copy = tmp_path / "run"
    shutil.copytree(run.dir.root, copy)
    changed = {name: write_bars(tmp_path, name, seed_shift=(name == "bbb.csv")) for name in FILES}
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["env"]["data_paths"] = [str(p) for p in changed.values()]
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(RunError, match="feature normalisation differs") as err:
        train_run(RunSpec(out=str(copy), resume=True, total_timesteps=128), progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_policy_picks_the_instrument_by_the_bar_files_name(multi_run):
    root = str(multi_run.run.dir.root)
    for name, inst in multi_run.run.instruments.items():
        assert load_policy(root, instrument=name).norm.to_dict() == inst.norm.to_dict()
    with pytest.raises(PolicyError, match=r"aaa\.csv, bbb\.csv") as err:
        load_policy(root, instrument="other.csv")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- walk-forward

W = TINY["env"]["window"]


@pytest.fixture(scope="module")
def multi_walk_forward(tmp_path_factory, files):
    """A 2-fold walk-forward over both files, given as two ``--data``; its printed table."""
    root = tmp_path_factory.mktemp("wf")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(checkpoint={"save_every": 1})))
    out = root / "out"
    argv = ["--config", str(config), "--folds", "2", "--out", str(out), "--no-progress"]
    for path in files.values():
        argv += ["--data", str(path)]
    assert walkforward_main(argv) == 0
    return out


@pytest.mark.slow
def test_walk_forward_reports_each_instrument_and_pooled(multi_walk_forward, files, capsys):
    out = multi_walk_forward
    report = check_report(out, "walkforward")
    frame = pd.read_csv(out / "returns.csv")
    assert list(frame.columns[:3]) == ["timestamp", "fold", "instrument"]
    assert report["provenance"]["data"] == [str(p) for p in files.values()]
    assert list(dict.fromkeys(frame["instrument"])) == list(FILES)
    names = ("policy", *evaluate.BASELINES)
    for name, path in files.items():
        bars = data.load_bars(path)
        folds = make_folds(len(bars), 2, window=W, warmup=WARMUP_BARS)
        rows = frame[frame["instrument"] == name]
        assert len(rows) == sum(f.test[1] - f.test[0] - 1 for f in folds)
        assert rows["timestamp"].iloc[0] == str(pd.Timestamp(bars.timestamp[folds[0].test[0]]))
        for key in names:
            stitched = report["instruments"][name]["metrics"][key]["total_log_return"]
            assert rows[key].sum() == pytest.approx(stitched, rel=1e-5, abs=1e-7)
        for fold, summary in zip(folds, report["folds"], strict=True):
            part = summary["instruments"][name]
            assert part["normalisation_fitted_on"] == list(fold.train)
            assert set(part["test"]) == set(names)  # linear among them, per instrument
            # The fold's checkpoint saved this instrument's normalisation of its own train span.
            ckpt = TrainCheckpointer(out / f"fold_{fold.index}" / "checkpoints", read_only=True)
            try:
                saved = saved_normalisation(ckpt, ckpt.latest_step())[name]
            finally:
                ckpt.close()
            own = market.fit_normalisation(bars[: fold.val[1]], bounds=fold.train)
            assert np.array_equal(saved.center, own.center.astype(np.float32))
    for key in names:
        pooled = report["metrics"][key]["total_log_return"]
        assert frame[key].sum() == pytest.approx(pooled, rel=1e-5, abs=1e-7)
        for summary in report["folds"]:
            in_fold = frame.loc[frame["fold"] == summary["fold"], key].sum()
            total = summary["metrics"][key]["total_log_return"]
            assert in_fold == pytest.approx(total, abs=1e-6)
    table = format_table(report)
    assert all(name in table for name in FILES) and "pooled" in table


@pytest.mark.slow
def test_walk_forward_over_instruments_resumes(multi_walk_forward):
    out = multi_walk_forward
    report = json.loads((out / "report.json").read_text())
    frame = pd.read_csv(out / "returns.csv")
    done0 = (out / "fold_0" / "fold.json").stat().st_mtime_ns
    (out / "fold_1" / "fold.json").unlink()
    (out / "returns.csv").unlink()
    assert walkforward_main(["--resume", "--out", str(out), "--no-progress"]) == 0
    assert (out / "fold_0" / "fold.json").stat().st_mtime_ns == done0
    assert pd.read_csv(out / "returns.csv").equals(frame)
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["provenance"].pop("created") and report["provenance"].pop("created")
    assert resumed == report


@pytest.mark.slow
def test_walk_forward_over_a_planted_and_a_plain_instrument(files, tmp_path, capsys):
    """Each instrument its own sidecar: the planted one gets the oracle row and capture, the
    plain one neither, and the pooled rows hold the oracle only where every one was planted."""
    from marl_jax.plant import main as plant_main

    planted = tmp_path / "ppp.csv"
    argv = [str(files["aaa.csv"]), str(planted), "--signal", "trend", "--strength", "0.3"]
    assert plant_main(argv) == 0
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(checkpoint={"save_every": 1})))
    out = tmp_path / "out"
    argv = ["--config", str(config), "--folds", "2", "--out", str(out), "--no-progress"]
    argv += ["--data", str(planted), "--data", str(files["bbb.csv"])]
    capsys.readouterr()
    assert walkforward_main(argv) == 0
    table = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    frame = pd.read_csv(out / "returns.csv")
    rows = frame[frame["instrument"] == "ppp.csv"]
    assert rows["oracle"].notna().all()
    assert frame.loc[frame["instrument"] == "bbb.csv", "oracle"].isna().all()
    by_name = report["instruments"]["ppp.csv"]["metrics"]
    assert rows["oracle"].sum() == pytest.approx(by_name["oracle"]["total_log_return"], rel=1e-5)
    plain = report["instruments"]["bbb.csv"]
    assert "oracle" not in plain["metrics"] and "oracle" not in report["metrics"]
    assert report["checks"]["capture"] is None and "capture" not in plain
    capture = by_name["policy"]["active_ir"] / by_name["oracle"]["active_ir"]
    assert report["instruments"]["ppp.csv"]["capture"] == pytest.approx(capture)
    for summary in report["folds"]:
        part, plain = summary["instruments"]["ppp.csv"], summary["instruments"]["bbb.csv"]
        assert "oracle" in part["test"] and "capture" in part
        assert "oracle" not in plain["test"] and "capture" not in plain
    assert table.count("capture (policy active IR / oracle active IR)") == 1
