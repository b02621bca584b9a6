"""``python -m marl_jax.train``: exact resume after SIGKILL, --init-from, outputs, bad input."""

from __future__ import annotations

import datetime
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from report_contract import check_report
from tiny_config import tiny

from marl_jax import train as train_cli
from marl_jax.run import loop as run_loop
from marl_jax.run.checkpointer import TrainCheckpointer
from marl_jax.run.rundir import RunLock
from marl_jax.run.sources import load_models_from

TINY = tiny(training={"total_timesteps": 8 * 32})
# The SIGKILL test's run: long enough that the kill, up to a second after the first checkpoint,
# lands before the end even when the compilation cache makes each update a few milliseconds.
KILLED_UPDATES = 64

ROOT = Path(__file__).resolve().parents[1]


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "marl_jax.train", "--no-progress", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def final_state(run_dir: Path, checkpoints: str = "checkpoints"):
    """The latest step's training state with the models that the step embeds, and its
    metrics."""
    with TrainCheckpointer(run_dir / checkpoints) as ckpt:
        state, metrics = ckpt.restore()
    _, bundle = load_models_from(f"{run_dir}:latest")
    return {**state, "agents": bundle.agents, "critic": bundle.critic}, metrics


def write_config_and_run(tmp_path: Path, name: str, data: dict, *extra: str) -> Path:
    config = write_config(tmp_path / f"{name}.yaml", data)
    out = tmp_path / name
    args = ["--config", str(config), "--out", str(out), "--no-progress", *extra]
    assert train_cli.main(args) == 0
    return out


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    data = tiny(training={"total_timesteps": KILLED_UPDATES * 32})
    config = write_config(tmp_path / "tiny.yaml", data)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # The straight run starts after the kill, so it and the resumed run load the programs that
    # the killed run compiled from the compilation cache instead of compiling them again.
    b = cli("--config", str(config), "--out", str(killed))
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "2").is_dir():
        assert b.poll() is None, f"run ended before its first checkpoint: {b.stderr.read()}"
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))
    b.send_signal(signal.SIGKILL)
    b.communicate()
    assert b.returncode == -signal.SIGKILL
    done_before_kill = max(
        int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit()
    )
    assert done_before_kill < KILLED_UPDATES, "the kill came too late to test resuming"

    a = cli("--config", str(config), "--out", str(straight))
    code, _, err = finish(cli("--out", str(killed), "--resume"))
    assert code == 0, err
    code, _, err = finish(a)
    assert code == 0, err

    s_state, _ = final_state(straight)
    k_state, _ = final_state(killed)
    assert (straight / "config.yaml").read_text() == (killed / "config.yaml").read_text()
    s_leaves, k_leaves = jax.tree.leaves(s_state), jax.tree.leaves(k_state)
    assert len(s_leaves) == len(k_leaves) > 10
    for x, y in zip(s_leaves, k_leaves, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    s_rows = (straight / "metrics.jsonl").read_text().splitlines()
    k_rows = (killed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["update"] for r in k_rows] == list(range(1, KILLED_UPDATES + 1))
    assert s_rows == k_rows
    for name in (
        "config.yaml",
        "report.json",
        "learning_curve.png",
        "equity_curve.png",
        "strategic_marl.pt",
    ):
        assert (killed / name).is_file(), name


@pytest.mark.slow
def test_report_has_policy_and_baselines(tmp_path):
    old_umask = os.umask(0o022)
    try:
        write_config_and_run(tmp_path, "r", tiny(checkpoint={"dir": "my_ckpts"}))
    finally:
        os.umask(old_umask)
    # checkpoint.dir names the checkpoint folder inside the run directory.
    assert (tmp_path / "r" / "my_ckpts" / "2").is_dir()
    assert not (tmp_path / "r" / "checkpoints").exists()
    # Results get the umask's mode (readable by others), not a temporary file's 0600.
    for name in (
        "report.json",
        "config.yaml",
        "metrics.jsonl",
        "learning_curve.png",
        "equity_curve.png",
        "strategic_marl.pt",
    ):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o644, name
    report = check_report(tmp_path / "r", "train")
    assert (tmp_path / "r" / "returns.csv").stat().st_mode & 0o777 == 0o644
    keys = {"sharpe", "total_log_return", "max_drawdown", "hit_rate", "turnover"}
    keys |= {"sortino", "calmar", "beta", "alpha_t", "active_ir", "psr", "dsr"}
    by_name = report["metrics"]
    assert set(by_name["policy"]) >= keys | {"active_ir_2x_cost"}
    assert list(by_name) == ["policy", "buy_and_hold", "flat", "random", "momentum", "linear"]
    assert all(set(m) == set(by_name["policy"]) for m in by_name.values())
    assert by_name["buy_and_hold"]["beta"] == pytest.approx(1.0)
    assert by_name["flat"]["total_log_return"] == 0.0
    prov = report["provenance"]
    assert prov["data"] is None and prov["config"].endswith(".yaml")  # the synthetic market
    assert prov["cost_bps"] == 1.0 and report["split"] == "test" and report["training"]
    resolved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert resolved["training"]["total_timesteps"] == 64
    assert resolved["agents"]["mlmi"]["hidden_dims"] == [8, 8, 8]


def test_missing_data_file_is_a_clear_error(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", TINY)
    missing = tmp_path / "nope.csv"
    code = train_cli.main(
        ["--config", str(config), "--data", str(missing), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert str(missing) in err and "\n" not in err
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_broken_config_names_key_and_file(tmp_path, capsys):
    config = write_config(tmp_path / "bad.yaml", {**TINY, "training": {"learning_rate": 0.1}})
    code = train_cli.main(["--config", str(config), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "training.learning_rate" in err and "bad.yaml" in err and "\n" not in err
    code = train_cli.main(["--config", str(config), "--set", "training.gamma=2", "--out", "x"])
    assert code != 0


def test_resume_without_a_run_and_reuse_of_a_run_dir_are_refused(tmp_path, capsys):
    assert train_cli.main(["--out", str(tmp_path / "none"), "--resume"]) != 0
    assert "config.yaml" in capsys.readouterr().err
    (tmp_path / "used" / "checkpoints" / "2").mkdir(parents=True)
    assert train_cli.main(["--out", str(tmp_path / "used")]) != 0
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_non_finite_loss_stops_and_names_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "tiny.yaml", TINY)
    real_to_floats = run_loop.to_floats
    calls = {"n": 0}

    def poisoned(metrics):
        row = real_to_floats(metrics)
        calls["n"] += 1
        if calls["n"] == 5:  # one row per update: update 5 gets a NaN loss
            row["loss"] = float("nan")
        return row

    monkeypatch.setattr(run_loop, "to_floats", poisoned)
    out = tmp_path / "nan"
    code = train_cli.main(["--config", str(config), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "non-finite loss" in err and "step 4" in err and "\n" not in err
    with TrainCheckpointer(out / "checkpoints") as ckpt:
        assert ckpt.latest_step() == 4
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["update"] for r in rows] == [1, 2, 3, 4]


@pytest.mark.slow
def test_init_from_fixture_checkpoint_exports_a_matching_pt(reference_ckpt_path, tmp_path):
    torch = pytest.importorskip("torch")
    from bridge import torch_reference
    from bridge.convert import load_pt_checkpoint

    jax.config.update("jax_default_matmul_precision", "highest")
    small_run = {
        "training": {"num_envs": 2, "rollout_len": 4, "total_timesteps": 8, "update_epochs": 1},
        "env": {"episode_len": 16, "synthetic_n_bars": 1200},
        "checkpoint": {"save_every": 1},
    }
    config = write_config(tmp_path / "full.yaml", small_run)
    out = tmp_path / "ft"
    code = train_cli.main(
        [
            "--config",
            str(config),
            "--init-from",
            str(reference_ckpt_path),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    exported = torch.load(out / "strategic_marl.pt", weights_only=True)
    original = torch.load(reference_ckpt_path, weights_only=True)
    state, _ = final_state(out)
    ckpt = load_pt_checkpoint(out / "strategic_marl.pt")
    rng = np.random.default_rng(0)
    for name, cls in torch_reference.AGENT_CLASSES.items():
        model = cls()
        model.load_state_dict(exported["model_state_dicts"]["agents"][name], strict=True)
        model.eval()
        before = original["model_state_dicts"]["agents"][name]["output_head.3.weight"]
        after = exported["model_state_dicts"]["agents"][name]["output_head.3.weight"]
        assert not torch.equal(before, after), f"{name} was not trained"
        module = ckpt.modules[name]
        x = rng.standard_normal((3, module.input_dim, 48)).astype(np.float32)
        x[:, 1] = np.abs(x[:, 1]) + 0.1
        ours = module.apply(state["agents"][name], x, deterministic=True)
        with torch.no_grad():
            theirs = model(torch.from_numpy(x), deterministic=True)
        for key in ("action_probs", "logits", "value", "log_prob"):
            np.testing.assert_allclose(np.asarray(ours[key]), theirs[key].numpy(), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(ours["action"]), theirs["action"].numpy())
    critic = torch_reference.CentralizedCritic(state_dim=13)
    critic.load_state_dict(exported["model_state_dicts"]["critic"], strict=True)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["agents"]["nwrqk"]["hidden_dims"] == [256, 128, 64]


@pytest.mark.slow
def test_a_run_can_be_made_longer_and_equals_a_straight_run(tmp_path, capsys):
    """--resume --total-timesteps raises the length; the result is the straight longer run.
    With the auxiliary return loss on, so that its heads and their optimizer state resume too
    (the other resume tests run without it)."""
    short = tiny(training={"total_timesteps": 64, "aux_return_coef": 0.5})
    long = tiny(training={"total_timesteps": 128, "aux_return_coef": 0.5})
    extended = write_config_and_run(tmp_path, "extended", short)
    args = ["--out", str(extended), "--resume", "--no-progress"]
    assert train_cli.main([*args, "--total-timesteps", "32"]) != 0
    assert "only be made longer" in capsys.readouterr().err
    assert train_cli.main([*args, "--total-timesteps", "128"]) == 0
    straight = write_config_and_run(tmp_path, "straight", long)
    e_state, _ = final_state(extended)
    s_state, _ = final_state(straight)
    e_config, s_config = (
        yaml.safe_load((d / "config.yaml").read_text()) for d in (extended, straight)
    )
    assert e_config == s_config and e_config["training"]["total_timesteps"] == 128
    assert int(e_state["update_step"]) == 4
    assert {"mlmi", "nwrqk", "mmd"} <= {str(k) for k in e_state["aux"]}
    for x, y in zip(jax.tree.leaves(e_state), jax.tree.leaves(s_state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows = (extended / "metrics.jsonl").read_text().splitlines()
    assert rows == (straight / "metrics.jsonl").read_text().splitlines()

    # A resume checks the market against the normalisation its checkpoint was trained with.
    e_config["env"]["synthetic_seed"] += 1
    (extended / "config.yaml").write_text(yaml.safe_dump(e_config))
    assert train_cli.main([*args, "--total-timesteps", "160"]) == 2
    err = capsys.readouterr().err.strip()
    assert "feature normalisation differs" in err and "\n" not in err
    assert str(extended / "checkpoints" / "4") in err


def test_a_run_directory_in_use_is_refused_with_the_owner_pid(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "busy"
    with RunLock(out):
        code = train_cli.main(["--config", str(config), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err
    assert f"pid {os.getpid()}" in err and str(out) in err
    assert not (out / "config.yaml").exists()


def _short_bars(tmp_path: Path) -> Path:
    start = datetime.datetime(2024, 1, 1)
    rows = ["time,open,high,low,close,volume"]
    for i in range(60):  # fewer rows than the feature warm-up
        when = start + datetime.timedelta(minutes=30 * i)
        rows.append(f"{when:%Y-%m-%d %H:%M},1,1.1,0.9,{1 + 0.01 * (i % 3)},5")
    path = tmp_path / "short.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _no_close_column(tmp_path: Path) -> Path:
    path = tmp_path / "noclose.csv"
    path.write_text("time,open,high,low,volume\n2024-01-01 00:00,1,1,1,1\n")
    return path


BROKEN = {
    "config file missing": lambda t, c: ["--config", str(t / "nope.yaml")],
    "config not YAML": lambda t, c: ["--config", str(_text(t / "bad.yaml", "a: [1, 2"))],
    "config not a mapping": lambda t, c: ["--config", str(_text(t / "list.yaml", "- 1\n"))],
    "unknown key": lambda t, c: ["--config", c, "--set", "training.nope=1"],
    "wrong type": lambda t, c: ["--config", c, "--set", "training.num_envs=many"],
    "override without =": lambda t, c: ["--config", c, "--set", "training.num_envs"],
    "out of bounds": lambda t, c: ["--config", c, "--set", "training.gamma=1.5"],
    "data file missing": lambda t, c: ["--config", c, "--data", str(t / "none.csv")],
    "bars fewer than warm-up": lambda t, c: ["--config", c, "--data", str(_short_bars(t))],
    "data without close": lambda t, c: ["--config", c, "--data", str(_no_close_column(t))],
    "init-from missing": lambda t, c: ["--config", c, "--init-from", str(t / "none.pt")],
    "init-from plain folder": lambda t, c: ["--config", c, "--init-from", str(t)],
    "init-from damaged pt": lambda t, c: [
        "--config",
        c,
        "--init-from",
        str(_text(t / "damaged.pt", "not a zip")),
    ],
    "resume without a run": lambda t, c: ["--resume"],
    "out is a file": lambda t, c: ["--config", c, "--out", str(_text(t / "file", "x"))],
}


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_input_gives_one_line_and_non_zero_exit(case, tmp_path, capsys):
    config = str(write_config(tmp_path / "tiny.yaml", TINY))
    args = BROKEN[case](tmp_path, config)
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "run")]
    code = train_cli.main([*args, "--no-progress"])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (case, err)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    print(f"{case}: {err}")
    assert not (tmp_path / "run").exists()  # nothing written, not even the lock
    assert case != "bars fewer than warm-up" or "warm-up" in err or "normalisation" in err, err


@pytest.mark.parametrize(
    ("calendar", "minutes", "per_year"),
    [("us_daily", 1440, 252), ("us_hourly", 60, 7 * 252), ("fx_hourly", 60, 24 * 260)],
)
def test_a_run_reads_the_interval_and_bars_per_year_from_the_file(
    tmp_path, capsys, calendar, minutes, per_year
):
    """No resampling, no warning, and the bars' own calendar annualises the run."""
    import calendars

    from marl_jax.run.setup import RunSpec, prepare

    stamps = getattr(calendars, calendar)(300 if calendar == "us_daily" else 60)
    data = calendars.write_bars(tmp_path / "bars.csv", stamps)
    config = write_config(tmp_path / "tiny.yaml", TINY)
    run = prepare(RunSpec(out=str(tmp_path / "r"), config=str(config), data=str(data)))
    try:
        assert len(run.bars) == len(stamps) and run.interval_minutes == minutes
        assert run.periods_per_year == pytest.approx(per_year, rel=0.03)
        assert run.train_params.periods_per_year == run.periods_per_year
    finally:
        run.lock.release()
    captured = capsys.readouterr()
    assert captured.err == "" and "resampled" not in captured.out


def test_real_bars_without_a_bar_file_in_the_config_are_measured_not_synthetic():
    """A config naming no file annualises the synthetic market's bars on the nominal calendar,
    and real bars handed to it (as the benchmarks do) on their own measured calendar."""
    import calendars

    from marl_jax.config import config_from_dict
    from marl_jax.env import data, market
    from marl_jax.run.setup import periods_per_year_for

    cfg = config_from_dict(TINY)
    synthetic = data.synthetic_bars(2000, seed=1, interval_minutes=cfg.env.interval_minutes)
    nominal = market.periods_per_year_at(cfg.env.interval_minutes)
    assert periods_per_year_for(cfg, synthetic) == nominal
    frame = calendars.bar_frame(calendars.us_daily(300))
    daily = data.Bars(**{k: frame[k].to_numpy() for k in frame.columns})
    assert periods_per_year_for(cfg, daily) == pytest.approx(252, rel=0.03)


@pytest.mark.slow
def test_a_daily_bar_file_trains_with_no_warning(tmp_path, capsys):
    """Daily bars: no line on stderr at all (no Python warning, no plain one)."""
    from calendars import us_daily, write_bars

    data = write_bars(tmp_path / "daily.csv", us_daily(400))
    config = write_config(tmp_path / "tiny.yaml", TINY)
    argv = ["--config", str(config), "--data", str(data), "--out", str(tmp_path / "r")]
    assert train_cli.main([*argv, "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
