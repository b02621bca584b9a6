"""Trackers (``--tracker mlflow``, ``--tensorboard``) on train, walk-forward and sweep: what they
log, read back from the MLflow store and TensorBoard's event files."""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_config import TINY

from marl_jax import train as train_cli
from marl_jax.run import tracking
from marl_jax.run.metrics_log import read_metrics_log
from marl_jax.sweep import __main__ as sweep_cli
from marl_jax.walkforward import __main__ as walkforward_cli

UPDATES = 2  # TINY's (the programs other tests compile, from the compilation cache)


def _config(tmp_path: Path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


def _mlflow():
    """MLflow's client module, or a skip saying the optional extra is absent."""
    return pytest.importorskip(
        "mlflow.tracking", reason="MLflow is not installed (pip install 'marl-jax[mlflow]')"
    )


def _runs(uri: str) -> dict[str, object]:
    """Every run of the store ``uri``'s marl-jax experiment, by name."""
    client = _mlflow().MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(tracking.MLFLOW_EXPERIMENT)
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def _policy_metrics(report: dict) -> dict:
    """The policy's test metrics of a report (the shared contract's ``metrics``, or the
    ``policy`` entry of a run's report before it)."""
    return report["metrics"]["policy"] if "metrics" in report else report["policy"]


def _artifacts(client, run_id: str, under: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, under)}


def _event_steps(folder: Path, tag: str) -> list[int]:
    """The steps of scalar ``tag`` in the TensorBoard event files of ``folder`` (TFRecord
    frames of ``Event`` protos)."""
    from tensorboardX.proto import event_pb2

    steps = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


# ---------------------------------------------------------------------------------- pure parts


def test_flatten_and_final_metrics_read_either_report_shape():
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": 1,
        "a.c": [1, 2],
        "d": None,
    }
    summary = {"sharpe": 1.5, "n_steps": 10, "psr": None, "flag": True}
    contract = {
        "metrics": {"policy": summary, "flat": {"sharpe": 0.0}},
        "checks": {"folds": 2, "one_sign_folds": 1, "capture": None},
    }
    assert tracking.final_metrics(contract) == {
        "test.policy.sharpe": 1.5,
        "test.policy.n_steps": 10.0,
        "test.flat.sharpe": 0.0,
        "checks.folds": 2.0,
        "checks.one_sign_folds": 1.0,
    }
    run = {"policy": {"sharpe": 2.0}, "baselines": {"buy_and_hold": {"sharpe": 1.0}}}
    assert tracking.final_metrics(run) == {
        "test.policy.sharpe": 2.0,
        "test.buy_and_hold.sharpe": 1.0,
    }
    walk = {
        "folds": [],
        "pooled": {"policy": {"sharpe": 3.0}},
        "capture": 0.5,
        "one_sign_folds": {"count": 1, "of": 2},
    }
    assert tracking.final_metrics(walk) == {
        "test.policy.sharpe": 3.0,
        "checks.capture": 0.5,
        "checks.one_sign_folds": 1.0,
        "checks.folds": 2.0,
    }
    fold = {"fold": 0, "test": {"policy": {"sharpe": -1.0}}}
    assert tracking.final_metrics(fold) == {"test.policy.sharpe": -1.0}
    row = {"update": 3, "member": 1, "group": 0, "average_reward": 0.5, "env_steps": 96}
    assert tracking.update_metrics(row) == {"average_reward": 0.5, "env_steps": 96.0}


class _Recorder:
    """A tracker that records its calls."""

    def __init__(self, calls: list, name: str = "root"):
        self.calls, self.name = calls, name

    def start(self, name, folder):
        self.calls.append((self.name, "start", name))

    def log_params(self, params):
        self.calls.append((self.name, "params", dict(params)))

    def log_metrics(self, metrics, step=None):
        self.calls.append((self.name, "metrics", dict(metrics), step))

    def log_artifacts(self, paths, under=None):
        self.calls.append((self.name, "artifacts", sorted(p.name for p in paths), under))

    def end(self, failed=False):
        self.calls.append((self.name, "end", failed))

    def child(self):
        return _Recorder(self.calls, self.name + "/child")


def test_trackers_fan_out_and_tracked_ends_a_failed_run(tmp_path):
    calls: list = []
    both = tracking.Trackers([_Recorder(calls, "a"), _Recorder(calls, "b")])
    with tracking.tracked(both, "run", tmp_path):
        both.log_metrics({"x": 1.0}, step=1)
    assert [c[:2] for c in calls] == [
        ("a", "start"),
        ("b", "start"),
        ("a", "metrics"),
        ("b", "metrics"),
        ("a", "end"),
        ("b", "end"),
    ]
    assert calls[-1] == ("b", "end", False)
    calls.clear()
    child = both.child()
    with pytest.raises(KeyError), tracking.tracked(child, "fold 0", tmp_path):
        raise KeyError("boom")
    assert calls[-2:] == [("a/child", "end", True), ("b/child", "end", True)]
    assert tracking.open_tracker() is tracking.NO_TRACKER
    with pytest.raises(tracking.TrackingError, match="--tracking-uri needs --tracker mlflow"):
        tracking.open_tracker(tracking_uri="sqlite:///x.db")


def test_log_outcome_logs_params_final_metrics_and_the_output_files(tmp_path):
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "equity_curve.png").write_bytes(b"png")
    (tmp_path / "strategic_marl.pt").write_bytes(b"pt")
    (tmp_path / "checkpoints").mkdir()
    calls: list = []
    report = {"policy": {"sharpe": 1.0}, "baselines": {}}
    tracking.log_outcome(_Recorder(calls), tmp_path, report, {"training": {"seed": 1}})
    assert calls == [
        ("root", "params", {"training.seed": 1}),
        ("root", "metrics", {"test.policy.sharpe": 1.0}, None),
        ("root", "artifacts", ["equity_curve.png", "report.json", "strategic_marl.pt"], None),
    ]


def test_a_plain_folder_store_is_refused_in_one_line(monkeypatch):
    _mlflow()
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in ("./mlruns", "file:///tmp/mlruns"):
        with pytest.raises(tracking.TrackingError, match="give a database such as sqlite"):
            tracking.mlflow_tracker(uri)


# ------------------------------------------------------------------------- the missing extra


@pytest.mark.parametrize(
    "main, extra",
    [
        (train_cli.main, []),
        (walkforward_cli.main, ["--folds", "2"]),
        (sweep_cli.main, []),
    ],
    ids=["train", "walkforward", "sweep"],
)
def test_tracker_mlflow_without_the_extra_is_one_line_and_exit_2(
    tmp_path, capsys, monkeypatch, main, extra
):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow... raises ImportError
    out = tmp_path / "out"
    argv = ["--config", _config(tmp_path), "--out", str(out), "--no-progress", *extra]
    assert main([*argv, "--tracker", "mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --tracker mlflow needs MLflow: pip install 'marl-jax[mlflow]'"
    assert not (out / "checkpoints").exists()  # it failed before training


# ------------------------------------------------------------------------------ whole runs


def test_mlflow_tracker_on_a_tiny_train_run(tmp_path, monkeypatch):
    mlflow_tracking = _mlflow()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory's ./mlruns
    out = tmp_path / "run"
    argv = ["--config", _config(tmp_path), "--out", str(out), "--no-progress"]
    assert train_cli.main([*argv, "--tracker", "mlflow", "--tracking-uri", uri]) == 0
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()

    runs = _runs(uri)
    assert list(runs) == ["run"]
    run = runs["run"]
    assert run.info.status == "FINISHED"
    # The resolved config, flattened.
    params = run.data.params
    assert params["training.total_timesteps"] == str(32 * UPDATES)
    assert params["agents.mlmi.hidden_dims"] == "[8, 8, 8]"
    assert params["checkpoint.save_every"] == "2" and params["command"] == "train"
    # Each update's metrics at its update, as metrics.jsonl has them.
    client = mlflow_tracking.MlflowClient(tracking_uri=uri)
    rows = read_metrics_log(out / "metrics.jsonl")
    history = client.get_metric_history(run.info.run_id, "average_reward")
    assert [(m.step, m.value) for m in history] == [
        (r["update"], pytest.approx(r["average_reward"])) for r in rows
    ]
    assert len(history) == UPDATES
    # The final report's metrics.
    report = json.loads((out / "report.json").read_text())
    policy = _policy_metrics(report)
    assert run.data.metrics["test.policy.active_ir"] == pytest.approx(policy["active_ir"])
    assert run.data.metrics["test.policy.sharpe"] == pytest.approx(policy["sharpe"])
    assert "test.buy_and_hold.sharpe" in run.data.metrics
    # The files, in the store's folder.
    logged = _artifacts(client, run.info.run_id)
    assert {"report.json", "config.yaml", "equity_curve.png", "learning_curve.png"} <= logged
    assert {p.name for p in tracking.output_files(out)} == logged
    if (out / "strategic_marl.pt").is_file():
        assert "strategic_marl.pt" in logged
    assert any((tmp_path / "store" / "mlruns").rglob("report.json"))


@pytest.mark.slow
def test_walk_forward_logs_a_parent_run_and_a_nested_run_per_fold(tmp_path, monkeypatch):
    mlflow_tracking = _mlflow()
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "wf"
    argv = ["--config", _config(tmp_path), "--folds", "2", "--out", str(out), "--no-progress"]
    flags = ["--tracker", "mlflow", "--tracking-uri", uri, "--tensorboard"]
    assert walkforward_cli.main([*argv, *flags]) == 0

    client = mlflow_tracking.MlflowClient(tracking_uri=uri)
    runs = _runs(uri)
    assert set(runs) == {"wf", "fold 0", "fold 1"}
    parent = runs["wf"]
    report = json.loads((out / "report.json").read_text())
    pooled = report["metrics"]
    assert parent.data.metrics["test.policy.sharpe"] == pytest.approx(pooled["policy"]["sharpe"])
    assert parent.data.params["walkforward.folds"] == "2"
    assert {"report.json", "returns.csv", "walkforward.json"} <= _artifacts(
        client, parent.info.run_id
    )
    for k in (0, 1):
        fold = runs[f"fold {k}"]
        assert fold.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert fold.info.status == "FINISHED" and fold.data.params["fold"] == str(k)
        history = client.get_metric_history(fold.info.run_id, "average_reward")
        assert [m.step for m in history] == list(range(1, UPDATES + 1))
        summary = json.loads((out / f"fold_{k}" / "fold.json").read_text())
        test = summary["test"]  # fold.json keeps its shape, so old walk-forwards resume
        assert fold.data.metrics["test.policy.sharpe"] == pytest.approx(test["policy"]["sharpe"])
        assert "fold.json" in _artifacts(client, fold.info.run_id)
        # TensorBoard: each fold's updates in its own folder.
        steps = _event_steps(out / f"fold_{k}" / "tensorboard", "average_reward")
        assert steps == list(range(1, UPDATES + 1))


@pytest.mark.slow
def test_sweep_logs_a_nested_run_per_member_and_tensorboard_per_member(tmp_path, monkeypatch):
    mlflow_tracking = _mlflow()
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "seeds.yaml"
    sweep.write_text(yaml.safe_dump({"seeds": 2}))
    out = tmp_path / "sw"
    argv = ["--config", _config(tmp_path), "--sweep", str(sweep), "--out", str(out)]
    flags = ["--tracker", "mlflow", "--tracking-uri", uri, "--tensorboard", "--no-progress"]
    assert sweep_cli.main([*argv, *flags]) == 0

    client = mlflow_tracking.MlflowClient(tracking_uri=uri)
    runs = _runs(uri)
    assert set(runs) == {"sw", "member 0", "member 1"}
    parent = runs["sw"]
    assert parent.data.params["sweep.seeds"] == "2"
    logged = _artifacts(client, parent.info.run_id)
    assert {"leaderboard.json", "sweep_curves.png", "best"} <= logged
    assert "best/report.json" in _artifacts(client, parent.info.run_id, "best")
    board = {r["member"]: r for r in json.loads((out / "leaderboard.json").read_text())}
    for m in (0, 1):
        member = runs[f"member {m}"]
        assert member.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert member.data.params["seed"] == str(board[m]["seed"])
        history = client.get_metric_history(member.info.run_id, "average_reward")
        assert [h.step for h in history] == list(range(1, UPDATES + 1))
        assert member.data.metrics["sweep.rank"] == board[m]["rank"]
        sharpe = board[m]["test"]["sharpe"]
        assert member.data.metrics["test.policy.sharpe"] == pytest.approx(sharpe)
        steps = _event_steps(out / "tensorboard" / f"m{m}", "average_reward")
        assert steps == list(range(1, UPDATES + 1))


def test_an_mlflow_server_that_does_not_answer_fails_fast_in_one_line(monkeypatch):
    """Opening a store over HTTP tries once more, not for minutes; the user's own retry
    settings, and MLflow's for the runs' later requests, are left alone."""
    _mlflow()
    for key in tracking.OPEN_HTTP:
        monkeypatch.delenv(key, raising=False)
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError) as err:
        tracking.mlflow_tracker("http://127.0.0.1:9")  # the discard port: refused
    assert time.monotonic() - started < 60
    assert "MLflow tracking store http://127.0.0.1:9" in str(err.value)
    assert "\n" not in str(err.value)
    assert not any(key in os.environ for key in tracking.OPEN_HTTP)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    with pytest.raises(tracking.TrackingError):
        tracking.mlflow_tracker("http://127.0.0.1:9")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
