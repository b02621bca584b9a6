"""``python -m marl_jax.train``: exact resume after SIGKILL, --init-from, outputs, bad input."""

from __future__ import annotations

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

from marl_jax import train as train_cli
from marl_jax.checkpoint import TrainCheckpointer

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "agents": {
        name: {"hidden_dims": [8, 8, 8], "conv_channels": [4, 4, 4], "sequence_length": 8}
        for name in ("mlmi", "nwrqk", "mmd")
    },
    "critic": {"hidden_dims": [16, 8, 8]},
    "training": {
        "num_envs": 4,
        "rollout_len": 8,
        "total_timesteps": 8 * 32,
        "update_epochs": 2,
        "num_minibatches": 2,
    },
    "env": {"window": 8, "episode_len": 16, "synthetic_n_bars": 1500},
    "checkpoint": {"save_every": 2},
}


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


def final_state(run_dir: Path):
    with TrainCheckpointer(run_dir / "checkpoints") as ckpt:
        state, config, _, metrics = ckpt.restore()
    return state, config, metrics


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", TINY)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    a = cli("--config", str(config), "--out", str(straight))
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
    assert done_before_kill < 8, "the kill came too late to test resuming"

    code, _, err = finish(cli("--out", str(killed), "--resume"))
    assert code == 0, err
    code, _, err = finish(a)
    assert code == 0, err

    s_state, s_config, _ = final_state(straight)
    k_state, k_config, _ = final_state(killed)
    assert s_config == k_config
    s_leaves, k_leaves = jax.tree.leaves(s_state), jax.tree.leaves(k_state)
    assert len(s_leaves) == len(k_leaves) > 10
    for x, y in zip(s_leaves, k_leaves, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    s_rows = (straight / "metrics.jsonl").read_text().splitlines()
    k_rows = (killed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["update"] for r in k_rows] == list(range(1, 9))
    assert s_rows == k_rows
    for name in (
        "config.yaml",
        "report.json",
        "learning_curve.png",
        "equity_curve.png",
        "strategic_marl.pt",
    ):
        assert (killed / name).is_file(), name


def test_report_has_policy_and_baselines(tmp_path):
    config = write_config(
        tmp_path / "tiny.yaml", {**TINY, "training": {**TINY["training"], "total_timesteps": 64}}
    )
    assert (
        train_cli.main(["--config", str(config), "--out", str(tmp_path / "r"), "--no-progress"])
        == 0
    )
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    keys = {"sharpe", "total_log_return", "max_drawdown", "hit_rate", "turnover"}
    assert set(report["policy"]) == keys
    assert set(report["baselines"]) == {"buy_and_hold", "flat", "random", "momentum"}
    assert all(set(m) == keys for m in report["baselines"].values())
    assert report["baselines"]["flat"]["total_log_return"] == 0.0
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


def test_non_finite_loss_stops_and_names_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "tiny.yaml", TINY)
    real_to_floats = train_cli.to_floats
    calls = {"n": 0}

    def poisoned(metrics, index):
        row = real_to_floats(metrics, index)
        calls["n"] += 1
        if calls["n"] == 5:  # one row per update: update 5 gets a NaN loss
            row["loss"] = float("nan")
        return row

    monkeypatch.setattr(train_cli, "to_floats", poisoned)
    out = tmp_path / "nan"
    code = train_cli.main(["--config", str(config), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "non-finite loss" in err and "step 4" in err and "\n" not in err
    with TrainCheckpointer(out / "checkpoints") as ckpt:
        assert ckpt.latest_step() == 4
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["update"] for r in rows] == [1, 2, 3, 4]


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
    state, _, _ = final_state(out)
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
        variables = {"params": state["params"][name], **state["constants"][name]}
        ours = module.apply(variables, x, deterministic=True)
        with torch.no_grad():
            theirs = model(torch.from_numpy(x), deterministic=True)
        for key in ("action_probs", "logits", "value", "log_prob"):
            np.testing.assert_allclose(np.asarray(ours[key]), theirs[key].numpy(), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(ours["action"]), theirs["action"].numpy())
    critic = torch_reference.CentralizedCritic(state_dim=13)
    critic.load_state_dict(exported["model_state_dicts"]["critic"], strict=True)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["agents"]["nwrqk"]["hidden_dims"] == [256, 128, 64]
