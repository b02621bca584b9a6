"""Walk-forward with ``--sweep``: the members trained as one population per fold, the member
chosen on validation only, every member's score and the DSR's trials recorded, no test bar
reaching training, normalisation or selection, resuming, and the one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from report_contract import check_report

from marl_jax import metrics
from marl_jax.env.data import Bars, synthetic_bars
from marl_jax.env.features import WARMUP_BARS
from marl_jax.walkforward import make_folds
from marl_jax.walkforward.__main__ import main
from tests.test_walkforward import _args, _config, _write_bars

W = 8  # the tiny config's window
SWEEP = {"strategy": "grid", "grid": {"training.actor_lr": [1.0e-3, 3.0e-2]}}


def _sweep_file(path: Path, tree: dict | str = SWEEP) -> str:
    path.write_text(tree if isinstance(tree, str) else yaml.safe_dump(tree))
    return str(path)


def _with_test_returns_changed(bars: Bars, a: int, b: int) -> Bars:
    """``bars`` with the prices of bars ``[a, b)`` tilted up to 7% (their returns change)."""
    tilt = np.linspace(1.0, 1.07, b - a)
    prices = (bars.open, bars.high, bars.low, bars.close)
    return Bars(bars.timestamp, *[np.r_[x[:a], x[a:b] * tilt, x[b:]] for x in prices], bars.volume)


def _chosen_weights(fold: Path) -> dict[str, np.ndarray]:
    with np.load(fold / "chosen_weights.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """A 2-fold walk-forward of a 2-member sweep, and fold 0 again with its test bars changed
    (through the same code, into another folder)."""
    from marl_jax.config import load_config
    from marl_jax.run.setup import load_market
    from marl_jax.walkforward.sweep import FoldSweep

    tmp = tmp_path_factory.mktemp("wfsweep")
    cfg, sweep = _config(tmp), _sweep_file(tmp / "sweep.yaml")
    bars = synthetic_bars(1500, seed=0)
    folds = make_folds(len(bars), 2, window=W, warmup=WARMUP_BARS)
    out = tmp / "wf"
    assert main(_args(cfg, _write_bars(tmp / "a.csv", bars), out, "--sweep", sweep)) == 0
    changed = _with_test_returns_changed(bars, *folds[0].test)
    config = load_config(cfg, [f"env.data_path={_write_bars(tmp / 'b.csv', changed)}"])
    leak = tmp / "changed_fold_0"
    FoldSweep.load(sweep, config).run_fold(config, load_market(config), folds[0], leak)
    return {"sweep": sweep, "out": out, "changed_fold_0": leak}


def _report(out: Path) -> dict:
    return check_report(out, "walkforward")


@pytest.mark.slow
def test_each_fold_chooses_its_member_on_validation_and_records_them_all(walk):
    out = walk["out"]
    report = _report(out)
    assert report["sweep"]["members"] == 2 and "sweep member" in report["selection"]
    assert report["sweep"]["spec"]["grid"] == SWEEP["grid"]
    for fold in report["folds"]:
        sel = fold["selection"]
        members = sel["members"]
        assert [m["member"] for m in members] == [0, 1]
        assert [m["values"]["training.actor_lr"] for m in members] == [1.0e-3, 3.0e-2]
        assert [m["hparams"]["actor_lr"] for m in members] == pytest.approx([1.0e-3, 3.0e-2])
        scores = [m["validation"][sel["metric"].split()[-1]] for m in members]
        assert sel["member"] == int(np.argmax(scores))  # the lowest index on a tie
        assert sel["values"] == members[sel["member"]]["values"]
        assert sel["hparams"] == members[sel["member"]]["hparams"]
        assert sel["n_trials"] == 2
    # Both members were trained in one compiled group, each with its own learning rate.
    rows = [json.loads(line) for line in (out / "fold_0" / "metrics.jsonl").open()]
    last = {r["member"]: r for r in rows if r["update"] == 2}
    assert {r["group"] for r in rows} == {0} and set(last) == {0, 1}
    assert last[0]["actor_loss"] != last[1]["actor_loss"]


@pytest.mark.slow
def test_the_chosen_members_dsr_deflates_for_the_members_validation_sharpes(walk):
    report = _report(walk["out"])
    frame = pd.read_csv(walk["out"] / "returns.csv")
    ppy = 365.25 * 48  # the bar file's own calendar: 30-minute bars, round the clock
    trials_by_fold = []
    for fold in report["folds"]:
        rows = frame[frame["fold"] == fold["fold"]]
        trials = [m["validation"]["sharpe"] for m in fold["selection"]["members"]]
        trials_by_fold.append(trials)
        want = metrics.summary(
            rows["policy"], rows["position"], rows["buy_and_hold"], ppy, trial_sharpes=trials
        )
        test = fold["metrics"]["policy"]
        assert test["n_trials"] == 2
        assert test["dsr"] == pytest.approx(want["dsr"], rel=1e-4, abs=1e-6)
        assert test["dsr"] < test["psr"] or trials[0] == trials[1]
    pooled = report["metrics"]["policy"]
    assert pooled["n_trials"] == 2 and report["metrics"]["buy_and_hold"]["n_trials"] == 1
    mean_trials = np.mean(trials_by_fold, axis=0)
    want = metrics.summary(
        frame["policy"], frame["position"], frame["buy_and_hold"], ppy, trial_sharpes=mean_trials
    )
    assert pooled["dsr"] == pytest.approx(want["dsr"], rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_no_test_bar_reaches_training_normalisation_or_selection(walk):
    """Fold 0 with its test bars changed: the members' validation scores, the chosen member
    and its weights stay bit-identical; its test metrics (the bars changed) do not."""
    f1 = _report(walk["out"])["folds"][0]
    f2 = json.loads((walk["changed_fold_0"] / "fold.json").read_text())
    assert f1["selection"] == f2["selection"]
    w1, w2 = _chosen_weights(walk["out"] / "fold_0"), _chosen_weights(walk["changed_fold_0"])
    assert w1.keys() == w2.keys() and len(w1) > 0
    for key in w1:
        np.testing.assert_array_equal(w1[key], w2[key])
    assert f1["metrics"]["buy_and_hold"] != f2["test"]["buy_and_hold"]


@pytest.mark.slow
def test_resume_skips_finished_folds_and_continues_the_sweep(walk, capsys):
    """Killed in fold 1 after its first checkpoint: fold 0 is not redone, fold 1 continues
    from that checkpoint to the same result."""
    out = walk["out"]
    report = _report(out)
    frame = pd.read_csv(out / "returns.csv")
    done0 = (out / "fold_0" / "fold.json").stat().st_mtime_ns
    for path in ("fold_1/fold.json", "fold_1/chosen_weights.npz", "returns.csv"):
        (out / path).unlink()
    shutil.rmtree(out / "fold_1" / "checkpoints" / "g0" / "2")
    assert main(["--resume", "--out", str(out), "--no-progress"]) == 0
    assert (out / "fold_0" / "fold.json").stat().st_mtime_ns == done0
    assert pd.read_csv(out / "returns.csv").equals(frame)
    resumed = _report(out)
    assert resumed["provenance"].pop("created") and report["provenance"].pop("created")
    assert resumed == report
    assert main(["--resume", "--out", str(out), "--sweep", walk["sweep"]]) == 2
    assert "drop --sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_a_pbt_sweep_exploits_during_training_then_chooses_on_validation(tmp_path):
    """One fold, 2 PBT members, a round after update 1: the worse member copies the better
    and perturbs its learning rate (recorded in its lineage); the choice is on validation."""
    pbt = {
        "strategy": "pbt",
        "random": {"training.actor_lr": {"log_uniform": [1.0e-3, 3.0e-2]}},
        "samples": 2,
        "pbt": {"interval": 1, "quantile": 0.5, "resample_prob": 0.0},
    }
    data = _write_bars(tmp_path / "a.csv", synthetic_bars(1500, seed=0))
    args = _args(
        _config(tmp_path), data, tmp_path / "wf", "--sweep", _sweep_file(tmp_path / "s.yaml", pbt)
    )
    args[args.index("--folds") + 1] = "1"
    assert main(args) == 0
    sel = _report(tmp_path / "wf")["folds"][0]["selection"]
    copier = [m for m in sel["members"] if m["lineage"]]
    assert len(copier) == 1 and copier[0]["lineage"][0]["step"] == 1
    lr = copier[0]["hparams"]["actor_lr"]
    assert lr != pytest.approx(copier[0]["values"]["training.actor_lr"], rel=1e-6)
    scores = [m["validation"]["active_ir"] for m in sel["members"]]  # the default metric
    assert sel["member"] == int(np.argmax(scores)) and sel["n_trials"] == 2


@pytest.mark.parametrize(
    ("sweep", "match"),
    [
        (None, "not found"),
        ("grid: [unclosed", "sweep.yaml"),
        ({"grid": {"training.no_such_key": [1, 2]}}, "training.no_such_key"),
        ({"grid": {"env.window": [8, 16]}}, "env keys cannot be swept"),
        ({"grid": {"training.actor_lr": [-1.0]}}, "training.actor_lr"),
    ],
)
def test_bad_sweep_input_is_one_line_and_exit_2(tmp_path, capsys, sweep, match):
    cfg = _config(tmp_path)
    path = tmp_path / "sweep.yaml"
    if sweep is not None:
        _sweep_file(path, sweep)
    out = tmp_path / "wf"
    code = main(["--config", cfg, "--folds", "2", "--out", str(out), "--sweep", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1, err
    assert not out.exists()  # nothing is written before the sweep is valid
