"""``python -m marl_jax.sweep``: sharded populations, solo equivalence, SIGKILL and resume on
another device count, two processes, NaN isolation, PBT and the outputs.

Device counts are set with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which must
come before JAX starts, so every sweep runs in a subprocess (sharing one compilation cache).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from report_contract import check_report
from tiny_config import tiny

from marl_jax.config import config_from_dict
from marl_jax.env import market
from marl_jax.mappo import MAPPO
from marl_jax.run.checkpointer import TrainCheckpointer
from marl_jax.run.setup import env_params_for, load_market

ROOT = Path(__file__).resolve().parents[1]
UPDATES = 4
CONFIG = tiny(training={"total_timesteps": 32 * UPDATES}, checkpoint={"save_every": 2})
SEEDS_SWEEP = {"seeds": 3, "grid": {"training.actor_lr": [1.0e-3]}}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sweep")
    paths = {"root": root, "config": root / "tiny.yaml", "cache": root / "cache"}
    paths["config"].write_text(yaml.safe_dump(CONFIG))
    for name, body in {
        "seeds": SEEDS_SWEEP,
        "nan": {"seeds": 2, "grid": {"training.actor_lr": [1.0e-3, 1.0e30]}},
        "pbt": {
            "strategy": "pbt",
            "seeds": 1,
            "grid": {"training.actor_lr": [1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2]},
            "pbt": {"interval": 1, "quantile": 0.25, "resample_prob": 0.0},
        },
    }.items():
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(body))
    return paths


def sweep_cmd(files, sweep: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "marl_jax.sweep",
        "--config",
        str(files["config"]),
        "--sweep",
        str(files[sweep]),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def env_for(files, devices: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")  # conftest's, kept
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}"
    env["XDG_CACHE_HOME"] = str(files["cache"])
    env["PYTHONPATH"] = str(ROOT)
    env["JAX_PLATFORMS"] = "cpu"  # host devices, also on a machine with a GPU
    return env


def run_sweep(files, sweep: str, out: Path, devices: int, *extra: str) -> str:
    proc = subprocess.run(
        sweep_cmd(files, sweep, out, *extra),
        env=env_for(files, devices),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def final_state(out: Path, members: int) -> dict[str, np.ndarray]:
    """The population's last checkpoint, flattened, padding dropped."""
    with TrainCheckpointer(out / "checkpoints" / "g0", read_only=True) as ckpt:
        step = ckpt.latest_step()
        tree = ckpt.restore_item(step, "state", on_host=True)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(k): np.asarray(v)[:members] for k, v in flat}


def assert_same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def four_devices(files) -> Path:
    out = files["root"] / "four"
    run_sweep(files, "seeds", out, 4)
    return out


@pytest.mark.slow
def test_sharded_population_writes_every_output_and_each_member_matches_its_solo_run(
    files, four_devices
):
    out = four_devices
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["rank"] for r in board] == [1, 2, 3]
    assert sorted(r["member"] for r in board) == [0, 1, 2]
    assert sorted(r["seed"] for r in board) == [0, 1, 2]
    for row in board:
        assert row["status"] == "ok" and row["updates"] == UPDATES
        assert set(row["test"]) >= {"sharpe", "max_drawdown"} and row["test"]["sharpe"] is not None
        assert {"random", "flat", "buy_and_hold", "momentum"} <= set(row["baselines"])
        assert row["hparams"]["actor_lr"] == pytest.approx(1e-3)
    scores = [r["score"] for r in board]
    assert scores == sorted(scores, reverse=True)
    header = (out / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["rank", "member", "group", "seed", "status"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["member"], r["update"]) for r in rows) == [
        (m, u) for m in range(3) for u in range(1, UPDATES + 1)
    ]
    for name in ("sweep.yaml", "sweep_curves.png", "best/report.json", "best/equity_curve.png"):
        assert (out / name).is_file(), name
    assert (out / "best" / "strategic_marl.pt").stat().st_size > 0
    best = check_report(out / "best", "sweep")
    assert best["member"]["member"] == board[0]["member"]
    # The best member's report: every metric of the summary; the leaderboard's are a part.
    assert best["metrics"]["policy"]["sharpe"] == pytest.approx(board[0]["test"]["sharpe"])
    assert {"sortino", "calmar", "dsr"} <= set(best["metrics"]["policy"])

    # Each member against its own solo run (one device, no vmap): the same seed and
    # hyperparameters give the same training to float32 rounding.
    state = final_state(out, 3)
    cfg = config_from_dict({**CONFIG, "training": {**CONFIG["training"], "actor_lr": 1e-3}})
    params = env_params_for(cfg, load_market(cfg), "train", None)
    algo = MAPPO(cfg, market.MARKET)
    update = jax.jit(algo.update)
    for member in range(3):
        solo = jax.jit(algo.init)(jax.random.key(member), params)
        for _ in range(UPDATES):
            solo, _ = update(solo, params)
        leaves = jax.tree_util.tree_flatten_with_path(solo.params)[0]
        for path, leaf in leaves:
            key = "['state']['params']" + jax.tree_util.keystr(path)
            np.testing.assert_allclose(
                state[key][member], np.asarray(leaf), rtol=1e-4, atol=1e-5, err_msg=key
            )


@pytest.mark.slow
def test_sigkill_then_resume_on_two_devices_is_bit_identical(files, four_devices):
    out = files["root"] / "killed"
    proc = subprocess.Popen(
        sweep_cmd(files, "seeds", out),
        env=env_for(files, 4),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 600
    step_two = out / "checkpoints" / "g0" / "2"
    while not step_two.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert step_two.is_dir(), "the first sweep ended before its checkpoint at update 2"
    assert not (out / "leaderboard.json").exists()

    run_sweep(files, "seeds", out, 2, "--resume")
    assert_same_bits(final_state(out, 3), final_state(four_devices, 3))
    assert (out / "metrics.jsonl").read_text() == (four_devices / "metrics.jsonl").read_text()
    ranked = [json.loads((d / "leaderboard.json").read_text()) for d in (out, four_devices)]
    assert [r["member"] for r in ranked[0]] == [r["member"] for r in ranked[1]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(files, out: Path, first_prefix: Sequence[str] = ()) -> list[subprocess.Popen]:
    """The seeds sweep as two processes of two host devices, joined over localhost;
    ``first_prefix`` goes before process 0's command."""
    port = free_port()
    return [
        subprocess.Popen(
            [*(first_prefix if i == 0 else ())]
            + sweep_cmd(
                files,
                "seeds",
                out,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ),
            env=env_for(files, 2),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


@pytest.mark.slow
def test_two_processes_with_two_devices_each_match_one_process_with_four(files, four_devices):
    out = files["root"] / "two_hosts"
    procs = two_processes(files, out)
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "test sharpe" in outputs[0][0] and "test sharpe" not in outputs[1][0]  # process 0
    assert_same_bits(final_state(out, 3), final_state(four_devices, 3))
    ours, theirs = (json.loads((d / "leaderboard.json").read_text()) for d in (out, four_devices))
    assert ours == theirs


@pytest.mark.slow
def test_a_write_failing_on_process_0_alone_stops_both_processes_in_one_line(files, four_devices):
    """Process 0 writes the shared files; when its disk is full (here a 4 KiB file-size
    limit: the metrics log stops growing at update 2), process 1 must not wait for it
    forever: both exit with code 2 and one line each."""
    out = files["root"] / "two_hosts_full"
    limit_files = (  # sets the limit, then becomes the sweep (no fork inside this process)
        "import os, resource, sys; "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    procs = two_processes(files, out, first_prefix=(sys.executable, "-c", limit_files))
    try:
        errors = [p.communicate(timeout=600)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [2, 2], errors
    lines = [[line for line in e.splitlines() if line.startswith("error: ")] for e in errors]
    assert len(lines[0]) == 1 and "metrics.jsonl" in lines[0][0], errors[0][-2000:]
    assert os.strerror(27) in lines[0][0]  # EFBIG: "File too large"
    assert len(lines[1]) == 1 and "process 0 could not write" in lines[1][0], errors[1][-2000:]
    assert not (out / "leaderboard.json").exists()


@pytest.mark.slow
def test_a_member_gone_nan_is_frozen_and_marked_failed_the_others_unchanged(files, four_devices):
    out = files["root"] / "nan"
    run_sweep(files, "nan", out, 4)
    board = {r["member"]: r for r in json.loads((out / "leaderboard.json").read_text())}
    # members: (lr 1e-3, seed 0), (1e-3, 1), (1e30, 0), (1e30, 1)
    for m in (2, 3):
        assert board[m]["status"] == "failed"
        assert board[m]["failed_at"] == 1
        assert board[m]["cause"].startswith("non-finite ")  # the first metric or the weights
        assert board[m]["rank"] in (3, 4)
        assert board[m]["test"]["sharpe"] is None
    assert board[0]["status"] == board[1]["status"] == "ok"
    state, clean = final_state(out, 4), final_state(four_devices, 3)
    for key in clean:
        np.testing.assert_array_equal(state[key][:2], clean[key][:2], err_msg=key)
        if key.startswith("['state']['params']"):  # frozen at its initial parameters
            assert np.all(np.isfinite(state[key][2:])), key
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["member"] for r in rows} == {0, 1}


@pytest.mark.slow
def test_pbt_sweep_records_lineage_and_perturbs_the_copiers(files):
    out = files["root"] / "pbt"
    run_sweep(files, "pbt", out, 4)
    board = json.loads((out / "leaderboard.json").read_text())
    events = [e for r in board for e in r["lineage"]]
    assert len(events) == UPDATES - 1  # interval 1, no round after the last update
    for event in events:
        source_lr = event["from_hparams"]["actor_lr"]
        assert event["hparams"]["actor_lr"] == pytest.approx(source_lr * 0.8, rel=1e-6) or event[
            "hparams"
        ]["actor_lr"] == pytest.approx(source_lr * 1.25, rel=1e-6)
        assert event["member"] != event["source"]
    last = {}
    for event in events:
        last[event["member"]] = event
    for member, event in last.items():
        row = next(r for r in board if r["member"] == member)
        assert row["hparams"]["actor_lr"] == pytest.approx(event["hparams"]["actor_lr"], rel=1e-6)
        assert row["ancestry"][:2] == [member, event["source"]]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"grid": {"training.actor_rl": [1e-3]}}, "training.actor_rl"),
        ({"grid": {"training.gamma": [1.5]}}, "training.gamma"),
        ({"grid": {"training.actor_lr": []}}, "training.actor_lr"),
        ({"random": {"training.ent_coef": {"gaussian": [0, 1]}}, "strategy": "random"}, "gaussian"),
    ],
)
def test_bad_sweep_files_stop_with_one_line_and_exit_2(tmp_path, capsys, sweep, message):
    from marl_jax.sweep.__main__ import main

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    code = main(
        [
            "--config",
            str(tmp_path / "c.yaml"),
            "--sweep",
            str(tmp_path / "s.yaml"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "out").exists()


def test_members_per_device_follow_the_memory_that_is_free():
    from marl_jax.sweep.population import fitting_width, member_mesh, width_for_memory

    assert width_for_memory(16, per_member_bytes=1 << 30, free_bytes=64 << 30) == 16  # all fit
    # 70% of 10 GiB holds 7 members: 16 run in 3 equal waves of 6 (not 7 + 7 + 2).
    assert width_for_memory(16, per_member_bytes=1 << 30, free_bytes=10 << 30) == 6
    assert width_for_memory(16, per_member_bytes=1 << 30, free_bytes=1 << 20) == 1  # waves of 1
    assert width_for_memory(5, per_member_bytes=0, free_bytes=0) == 5
    cfg = config_from_dict(CONFIG)
    params = env_params_for(cfg, load_market(cfg), "train", None)
    if jax.default_backend() == "cpu":  # no memory limit reported: every member at once
        assert fitting_width(cfg, params, 3, member_mesh()) is None


def test_an_output_folder_that_cannot_be_made_stops_in_one_line(tmp_path, capsys):
    from marl_jax.sweep.__main__ import main

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["--config", str(tmp_path / "c.yaml"), "--out", str(blocker / "sweep")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(blocker) in err and "writable --out" in err


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_stops_in_one_line_keeps_the_checkpoint_and_resumes(
    files, four_devices, monkeypatch, capsys
):
    """The metrics log cannot grow once checkpoint 2 exists (ENOSPC): the sweep stops with
    one line naming the file and the last good checkpoint, exit code 2, and no leaderboard;
    ``--resume`` then completes it. This runs in the test's own process, on one device: the
    result also equals the 4-device sweep's (to rounding: one device compiles differently)."""
    import errno
    import pathlib

    from marl_jax.sweep.__main__ import main

    out = files["root"] / "disk_full"
    step_two = out / "checkpoints" / "g0" / "2"
    real_open = pathlib.Path.open

    def step_two_begun() -> bool:  # written or being written (Orbax saves in the background)
        g0 = step_two.parent
        return g0.is_dir() and any(p.name.split(".")[0] == "2" for p in g0.iterdir())

    def full_disk_open(self, mode="r", *args, **kwargs):
        if self.name == "metrics.jsonl" and "a" in mode and step_two_begun():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_open(self, mode, *args, **kwargs)

    argv = sweep_cmd(files, "seeds", out)[3:]
    monkeypatch.setattr(pathlib.Path, "open", full_disk_open)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "metrics.jsonl" in err and os.strerror(errno.ENOSPC) in err
    assert f"the last good checkpoint is {step_two}" in err
    assert step_two.is_dir() and not (out / "leaderboard.json").exists()
    with TrainCheckpointer(out / "checkpoints" / "g0", read_only=True) as ckpt:
        assert ckpt.latest_step() == 2

    monkeypatch.setattr(pathlib.Path, "open", real_open)
    assert main([*argv, "--resume"]) == 0
    ours, theirs = final_state(out, 3), final_state(four_devices, 3)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-6, err_msg=key)
    lines = [(out / "metrics.jsonl").read_text(), (four_devices / "metrics.jsonl").read_text()]
    rows = [[json.loads(line) for line in text.splitlines()] for text in lines]
    assert [(r["member"], r["update"]) for r in rows[0]] == [
        (r["member"], r["update"]) for r in rows[1]
    ]
    assert json.loads((out / "leaderboard.json").read_text())[0]["status"] == "ok"
