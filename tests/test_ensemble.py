"""The ``ensemble`` key: K runs of K seeds whose mean position is the policy, in ``train``,
``decide``, ``backtest`` (and refused by ``export``, ``bridge`` and sweeps), and in the
walk-forward's folds."""

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
from tiny_config import tiny

from marl_jax import backtest as backtest_cli
from marl_jax import decide as decide_cli
from marl_jax import export as export_cli
from marl_jax import train as train_cli
from marl_jax.config import Config, load_config
from marl_jax.diagnose import diagnose
from marl_jax.env import evaluate, market
from marl_jax.env.data import load_bars, synthetic_bars
from marl_jax.policy import Ensemble, PolicyError
from marl_jax.run.deploy import load_policy
from marl_jax.run.ensemble import member_config, member_seed
from marl_jax.run.sources import load_models_from
from marl_jax.sweep.members import expand
from marl_jax.sweep.spec import SweepError, SweepSpec
from marl_jax.walkforward.__main__ import main as walkforward

TINY = tiny(training={"total_timesteps": 4 * 32})


def _write(tmp_path: Path, data: dict, name: str = "tiny.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _bars_file(tmp_path: Path) -> str:
    path = tmp_path / "bars.csv"
    synthetic_bars(1500, seed=0).to_frame().to_csv(path, index=False)
    return str(path)


def _weights(source: str) -> list[np.ndarray]:
    _, bundle = load_models_from(source)
    return [np.asarray(x) for x in jax.tree.leaves({**bundle.agents, "c": bundle.critic})]


def test_member_seeds_never_overlap_between_ensembles():
    seeds = {s: [member_seed(s, 3, i) for i in range(3)] for s in range(4)}
    assert seeds[0] == [0, 1, 2] and seeds[1] == [3, 4, 5]
    flat = [x for v in seeds.values() for x in v]
    assert len(set(flat)) == len(flat)
    cfg = Config.model_validate({"seed": 2, "ensemble": 3})
    member = member_config(cfg, 1)
    assert (member.seed, member.ensemble) == (7, 1)
    assert member.model_copy(update={"seed": 2, "ensemble": 3}) == cfg


@pytest.mark.slow
def test_an_ensemble_trains_its_seeds_and_decides_by_their_mean(tmp_path, capsys):
    """``train`` with ensemble 2 and seed 1: members of seeds 2 and 3; ``decide``,
    ``backtest`` and the run's own report hold the mean of their positions; ``export`` and
    ``bridge`` refuse it with one line; ``--resume`` trains only what is missing."""
    cfg = _write(tmp_path, TINY)
    data = _bars_file(tmp_path)
    out = tmp_path / "ens"
    argv = ["--config", cfg, "--data", data, "--no-progress"]
    assert train_cli.main([*argv, "--set", "ensemble=2", "--seed", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "an ensemble of member_0, member_1" in printed
    assert json.loads((out / "ensemble.json").read_text())["members"] == [
        {"dir": "member_0", "seed": 2},
        {"dir": "member_1", "seed": 3},
    ]
    assert load_config(out / "config.yaml").ensemble == 2
    for i, seed in enumerate((2, 3)):
        member = load_config(out / f"member_{i}" / "config.yaml")
        assert (member.seed, member.ensemble) == (seed, 1)
        assert (out / f"member_{i}" / "strategic_marl.pt").is_file()

    # The members are different models (their seeds differ).
    w0, w1 = _weights(str(out / "member_0")), _weights(str(out / "member_1"))
    assert any(not np.array_equal(x, y) for x, y in zip(w0, w1, strict=True))

    # The ensemble's report: the mean of the members' positions on the test split.
    policy = load_policy(str(out))
    assert isinstance(policy, Ensemble) and len(policy.members) == 2
    bars = load_bars(data)
    params = market.make_env_params(bars, "test", norm=policy.norm, window=policy.window)
    runs = [load_policy(str(out / f"member_{i}")).run(params) for i in range(2)]
    mean = np.mean([r.positions for r in runs], axis=0)
    assert not np.array_equal(runs[0].positions, runs[1].positions)
    frame = pd.read_csv(out / "returns.csv")
    np.testing.assert_allclose(frame["position"], mean, atol=1e-6)
    report = check_report(out, "train")
    assert report["model"].startswith("ensemble")
    ensemble = evaluate.simulate(mean, params)
    assert report["metrics"]["policy"]["active_ir"] == pytest.approx(
        ensemble.metrics["active_ir"], rel=1e-6, abs=1e-9
    )

    # decide: each member's decision and the mean of their positions.
    assert decide_cli.main(["--model", str(out), "--data", data, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    singles = []
    for i in range(2):
        assert decide_cli.main(["--model", str(out / f"member_{i}"), "--data", data, "--json"]) == 0
        singles.append(json.loads(capsys.readouterr().out))
    assert [m["agents"] for m in row["members"]] == [s["agents"] for s in singles]
    assert row["position"] == pytest.approx(np.mean([s["position"] for s in singles]))
    table = decide_cli.format_decision(row, "ens", policy.describe_modes())
    assert "member 1: position" in table and "mean position" in table
    assert "the mean of 2 members" in table and "joint position" not in table

    # backtest: the same figures as the run's report over the same split.
    bt = tmp_path / "bt"
    assert backtest_cli.main(["--model", str(out), "--data", data, "--out", str(bt)]) == 0
    capsys.readouterr()
    np.testing.assert_allclose(pd.read_csv(bt / "returns.csv")["position"], mean, atol=1e-6)

    # One model only: export, bridge and --init-from refuse the ensemble with one line.
    assert export_cli.main(["--model", str(out), "--out", str(tmp_path / "x.jaxexport")]) == 2
    err = capsys.readouterr().err
    assert "export each member on its own" in err and err.count("\n") == 1
    with pytest.raises(Exception, match="an ensemble of 2 runs"):
        load_models_from(str(out))

    # --resume: a finished member is left alone, a missing one trained again, the same.
    finished = (out / "member_0" / "report.json").stat().st_mtime_ns
    before = _weights(str(out / "member_1"))
    shutil.rmtree(out / "member_1")
    (out / "report.json").unlink()
    assert train_cli.main(["--resume", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert (out / "member_0" / "report.json").stat().st_mtime_ns == finished
    for x, y in zip(_weights(str(out / "member_1")), before, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(pd.read_csv(out / "returns.csv")["position"], mean, atol=1e-6)
    assert train_cli.main([*argv, "--set", "ensemble=2", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_members_of_another_window_or_normalisation_are_refused(tmp_path):
    policy = load_policy_of(tmp_path)
    other = type(policy)(policy.modules, policy.variables, policy.norm, 4, "w4")
    with pytest.raises(PolicyError, match="member 1 \\(w4\\) differs from member 0 in its window"):
        Ensemble([policy, other], "e")
    with pytest.raises(PolicyError, match="at least two members"):
        Ensemble([policy], "e")


def load_policy_of(tmp_path: Path):
    """A policy with freshly initialised models (no training)."""
    from marl_jax.mappo import MAPPO

    cfg = load_config(_write(tmp_path, TINY))
    algo = MAPPO(cfg, market.MARKET)
    params = market.make_env_params(synthetic_bars(600, seed=0), "train", window=8)
    state = algo.init(jax.random.PRNGKey(0), params)
    from marl_jax.policy import Policy

    variables = algo.model_variables(state)
    flat = {**variables["agents"], "critic": variables["critic"]}
    return Policy(algo.modules, flat, market.get_normalisation(params), 8, "w8", cfg)


def test_a_sweep_refuses_an_ensemble():
    spec = SweepSpec.model_validate({"grid": {"training.actor_lr": [0.001, 0.002]}})
    with pytest.raises(SweepError, match="a sweep's members are single runs"):
        expand(Config.model_validate({"ensemble": 2}), spec)


@pytest.mark.slow
def test_a_walk_forward_fold_of_an_ensemble_is_the_mean_of_its_members(tmp_path, capsys):
    """Each fold trains its members as ordinary fold runs (seeds 0 and 1), each choosing its
    own checkpoint; the fold's policy is the mean of their test positions, charged its own
    costs; a resume rebuilds a fold from its finished members."""
    cfg = _write(tmp_path, tiny(checkpoint={"save_every": 1}))
    data = _bars_file(tmp_path)
    out = tmp_path / "wf"
    argv = ["--config", cfg, "--data", data, "--folds", "2", "--no-progress"]
    assert walkforward([*argv, "--set", "ensemble=2", "--out", str(out)]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["selection"].startswith("the mean of 2 seeds' positions")
    frame = pd.read_csv(out / "returns.csv")
    for k in range(2):
        fold = out / f"fold_{k}"
        summary = json.loads((fold / "fold.json").read_text())
        members = summary["selection"]["members"]
        assert [m["seed"] for m in members] == [0, 1]
        positions = []
        for i in range(2):
            mine = json.loads((fold / f"member_{i}" / "fold.json").read_text())
            assert members[i]["selection"] == mine["selection"]
            assert load_config(fold / f"member_{i}" / "config.yaml").seed == i
            with np.load(fold / f"member_{i}" / "test_runs.npz") as z:
                positions.append(z["policy/positions"])
        with np.load(fold / "test_runs.npz") as z:
            mean = np.mean(positions, axis=0)
            np.testing.assert_allclose(z["policy/positions"], mean, atol=1e-7)
            r = z["buy_and_hold/pnl"].astype(np.float64)
            cost = np.abs(np.diff(np.r_[0.0, mean])) * 1e-4
            np.testing.assert_allclose(z["policy/rewards"], mean * r - cost, atol=1e-6)
        part = frame.loc[frame["fold"] == k, "position"].to_numpy()
        np.testing.assert_allclose(part, mean, atol=1e-6)

    # diagnose: every member of every fold, as the folds of a single run are.
    diagnosed = diagnose(out)["folds"]
    assert [(f["fold"], f["member"]) for f in diagnosed] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for f in diagnosed:
        member = out / f"fold_{f['fold']}" / f"member_{f['member']}" / "fold.json"
        assert f["chosen_step"] == json.loads(member.read_text())["selection"]["step"]

    (out / "fold_1" / "fold.json").unlink()
    assert walkforward(["--resume", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    again = json.loads((out / "report.json").read_text())
    assert again["metrics"] == report["metrics"]

    several = [data, _bars_file_named(tmp_path, "b.csv")]
    bad = ["--config", cfg, "--data", several[0], "--data", several[1], "--folds", "2"]
    assert walkforward([*bad, "--set", "ensemble=2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "ensemble 2 with several --data files: not supported" in err
    assert err.count("\n") == 1


def _bars_file_named(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    synthetic_bars(1500, seed=1).to_frame().to_csv(path, index=False)
    return str(path)


def test_train_refuses_an_ensemble_over_several_files_before_writing(tmp_path, capsys):
    cfg = _write(tmp_path, TINY)
    data = [_bars_file(tmp_path), _bars_file_named(tmp_path, "b.csv")]
    out = tmp_path / "ens"
    argv = ["--config", cfg, "--data", data[0], "--data", data[1], "--set", "ensemble=2"]
    assert train_cli.main([*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "ensemble 2 with several --data files: not supported" in err
    assert err.count("\n") == 1 and not out.exists()
