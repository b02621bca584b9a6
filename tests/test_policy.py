"""Using a trained policy: decide at a bar, backtest, export; the CLIs and their bad inputs.

One tiny model directory (random variables, so that the greedy actions vary from bar to
bar) and one bar file serve every test.
"""

from __future__ import annotations

import copy
import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import tiny_config
from report_contract import check_report
from tiny_config import TINY

from marl_jax import policy as policy_module
from marl_jax.agents import AGENT_NAMES
from marl_jax.config import config_from_dict
from marl_jax.env import data, evaluate, market
from marl_jax.env.features import WARMUP_BARS, compute_features
from marl_jax.mappo import MAPPO, TrainState
from marl_jax.models.components import sinusoidal_table
from marl_jax.models.registry import abstract_variables
from marl_jax.models.team import build_modules, split_variables
from marl_jax.policy import Policy, PolicyError
from marl_jax.run.backtesting import LINEAR_MIN_FIT
from marl_jax.run.deploy import load_policy
from marl_jax.run.modeldir import save_models
from marl_jax.run.report import greedy_policy

ROOT = Path(__file__).resolve().parents[1]
N_BARS = 1500


def random_variables(module, seed: int) -> dict:
    """Random variables of the module's shapes, drawn with NumPy: compiling the Flax
    initialisers costs minutes on a busy 2-core machine. Kernels ~ N(0, 1/fan_in), norms'
    scales near 1, the positional table the real one; the action logits come out large enough
    that the greedy actions vary from bar to bar."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [getattr(k, "key", str(k)) for k in path]
        shape, last = leaf.shape, names[-1]
        if names[0] == "buffers" and last == "pe":
            return sinusoidal_table(shape[-1], shape[1])
        if names[0] == "batch_stats":
            return np.full(shape, 1.0 if last == "var" else 0.0, leaf.dtype)
        if last in ("temperature", "volatility_adjust"):
            return np.full(shape, 1.0, np.float32)
        if last == "scale":
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 10
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract_variables(module))


def centre_mmd_logits(module, variables: dict, bars: data.Bars, norm) -> dict:
    """The MMD actor with its action head's bias shifted so that its logits average 0 over
    the test split: its greedy action then takes all three values there, with wide margins."""
    params = market.make_env_params(bars, "test", window=module.sequence_length, norm=norm)
    obs = market.observations(params, np.arange(int(params.start_lo), int(params.last_bar)))
    logits = np.asarray(module.apply(variables, obs["mmd"], deterministic=True)["logits"])
    volatility = np.asarray(obs["mmd"])[:, 1, :].mean(-1)
    factor = np.clip(1.0 / (volatility + 1e-6), 0.5, 2.0)  # the actor's volatility scaling
    head = dict(variables["params"]["output_head_3"])
    head["bias"] = head["bias"] - (logits / factor[:, None]).mean(0)
    return {**variables, "params": {**variables["params"], "output_head_3": head}}


def random_model_dir(root: Path, cfg, centre_mmd: bool = True, **meta) -> tuple:
    """``(model_dir, bar_file, bars, modules, variables, cfg)``: random models of ``cfg`` saved
    under ``root`` with the feature normalisation of a synthetic bar file there (and ``meta``),
    MMD's logits centred unless ``centre_mmd`` is false."""
    modules = build_modules(cfg)
    variables = {name: random_variables(m, i) for i, (name, m) in enumerate(modules.items())}
    bar_file = root / "bars.csv"
    data.synthetic_bars(N_BARS, seed=0).to_frame().to_csv(bar_file, index=False)
    bars = data.load_bars(bar_file)
    norm = market.fit_normalisation(bars)
    if centre_mmd:
        variables["mmd"] = centre_mmd_logits(modules["mmd"], variables["mmd"], bars, norm)
    meta = {"feature_normalisation": json.dumps(norm.to_dict()), **meta}
    agents = {name: variables[name] for name in AGENT_NAMES}
    model_dir = save_models(root / "model", agents, variables["critic"], modules, meta)
    return model_dir, bar_file, bars, modules, variables, cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(model_dir, bar_file, bars, modules, variables, cfg)``."""
    return random_model_dir(tmp_path_factory.mktemp("policy"), config_from_dict(TINY))


@pytest.fixture(scope="module")
def policy(tiny) -> Policy:
    return load_policy(str(tiny[0]))


def with_modes(policy: Policy, **env) -> Policy:
    """``policy`` acting under other env modes, as if its run config said so (the models do
    not depend on the mode; the copy shares the compiled decision)."""
    other = copy.copy(policy)
    other.config = config_from_dict(tiny_config.tiny(env=env))
    return other


@pytest.fixture(scope="module")
def greedy(tiny):
    """The training report's greedy policy (MAPPO.act) of the tiny models, compiled once."""
    _, _, _, modules, variables, cfg = tiny
    params_, constants = {}, {}
    for name, v in variables.items():
        params_[name], constants[name] = split_variables(v)
    state = TrainState(params_, constants, None, None, None, None, None, None)
    return greedy_policy(MAPPO(cfg, market.MARKET, modules), state)


MODES = {
    "target-fixed": {},
    "delta": {"action_mode": "delta", "delta_step": 0.5},
    # A short span, so that the test bars' scale is read from a strict tail of the file.
    "vol_target": {"position_sizing": "vol_target", "vol_span": 10},
    "delta-vol_target": {"action_mode": "delta", "position_sizing": "vol_target", "vol_span": 10},
}


@pytest.mark.parametrize("modes", MODES.values(), ids=MODES.keys())
@pytest.mark.slow
def test_deciding_at_every_test_bar_gives_exactly_the_evaluators_positions(
    tiny, policy, greedy, modes
):
    _, _, bars, modules, variables, _ = tiny
    policy = with_modes(policy, **modes) if modes else policy
    kw = market.env_modes(policy.config) if modes else {}
    params = market.make_env_params(bars, "test", window=policy.window, norm=policy.norm, **kw)
    # The evaluator: the environment's own positions for the greedy actions, from the file's
    # first bar's EWMA under vol_target, from a flat start under delta.
    run = evaluate.run_policy(greedy, params)
    assert len(np.unique(run.positions)) >= 3  # the MMD actor's action varies
    lo, last = int(params.start_lo), int(params.last_bar)
    if "vol_span" in modes:
        scale = np.asarray(params.vol_scale)[lo:last]
        assert policy.vol_history < lo and np.ptp(scale) > 0.1 and scale.max() < 2.0

    many = policy.decide_many(bars, lo, last)
    assert np.array_equal(many.position, run.positions)
    assert np.array_equal(many.bar_index, run.bar_index)
    holding = 0.0  # the episode's flat start; then each decision's signal
    for i, t in enumerate(run.bar_index):
        one = policy.decide(bars, bars.timestamp[t], position=holding)
        assert one.bar_index[0] == t
        assert np.array_equal(one.actions[0], many.actions[i])
        assert one.position[0] == run.positions[i], (i, t)
        np.testing.assert_allclose(one.probs[0], many.probs[i], atol=1e-6)
        holding = float(one.signal[0])
    # The critic reads the environment's critic observation (the window's mean).
    obs = market.observations(params, run.bar_index)
    value = modules["critic"].apply(variables["critic"], obs["critic"])["value"]
    np.testing.assert_allclose(many.value, value, atol=1e-5)
    np.testing.assert_allclose(many.probs.sum(-1), 1.0, atol=1e-6)
    if "action_mode" in modes:  # the path starts from a given holding instead of flat
        assert many.position[0] != policy.decide_many(bars, lo, last, position=1.0).position[0]


def test_the_volatility_scale_reads_only_its_tail(policy, tiny, monkeypatch):
    """Under vol_target a decision reads ``max(history, vol_history)`` bars: older prices do
    not change it, and a shorter tail than ``VOL_SPANS_READ`` spans would miss the
    environment's scale."""
    bars = tiny[2]
    vol = with_modes(policy, position_sizing="vol_target", vol_span=10)
    params = market.make_env_params(
        bars, "test", window=vol.window, norm=vol.norm, **market.env_modes(vol.config)
    )
    t = len(bars) - 2
    read = max(vol.history, vol.vol_history)
    assert vol.vol_history == 201 and vol.vol_scale(bars, t, t + 1)[0] == params.vol_scale[t]
    cut = len(bars) - read
    wobble = 1.0 + 0.3 * np.sin(np.arange(cut))  # other returns before the tail
    damaged = data.Bars(
        timestamp=bars.timestamp,
        **{
            k: np.r_[getattr(bars, k)[:cut] * wobble, getattr(bars, k)[cut:]]
            for k in ("open", "high", "low", "close", "volume")
        },
    )
    assert vol.decide(damaged).row(0) == vol.decide(bars).row(0)
    monkeypatch.setattr(policy_module, "VOL_SPANS_READ", 1)
    assert vol.vol_scale(bars, t, t + 1)[0] != params.vol_scale[t]


def test_a_decision_reads_only_the_tail_of_the_history(policy, tiny):
    bars = tiny[2]
    cut = len(bars) - policy.history
    damaged = data.Bars(
        timestamp=bars.timestamp,
        **{
            k: np.r_[getattr(bars, k)[:cut] * 3.0, getattr(bars, k)[cut:]]
            for k in ("open", "high", "low", "close", "volume")
        },
    )
    a, b = policy.decide(bars), policy.decide(damaged)
    assert a.row(0) == b.row(0)
    # ... and the tail it reads is the right one: the last bar's own features.
    window = policy.norm.apply(compute_features(bars))[-policy.window :]
    np.testing.assert_array_equal(policy.decide_windows(window[None]).actions, a.actions)
    assert policy.history == WARMUP_BARS + policy.window
    shifted = data.Bars(
        timestamp=bars.timestamp,
        **{
            k: np.r_[getattr(bars, k)[:-1], getattr(bars, k)[-2]]
            for k in ("open", "high", "low", "close", "volume")
        },
    )
    assert not np.array_equal(policy.decide(shifted).probs, a.probs)


@pytest.mark.slow
def test_the_exported_artifact_runs_without_flax_and_matches_the_live_models(
    policy, tiny, tmp_path
):
    from marl_jax.exported import load_exported
    from marl_jax.run.artifact import export_policy

    artifact, sidecar = export_policy(policy, tmp_path / "policy.jaxexport")
    info = json.loads(sidecar.read_text())
    assert info["window"] == policy.window and len(info["feature_names"]) == 13
    raw = compute_features(tiny[2])
    rows = np.arange(len(raw) - 7, len(raw))
    windows = raw[rows[:, None] + np.arange(-policy.window + 1, 1)]
    np.save(tmp_path / "windows.npy", windows)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        from marl_jax.exported import load_exported
        policy = load_exported({str(artifact)!r})
        w = np.load({str(tmp_path / "windows.npy")!r})
        out = policy(w)
        one = policy(w[-1])
        assert "flax" not in sys.modules and "marl_jax.models" not in sys.modules
        np.savez({str(tmp_path / "out.npz")!r}, one_actions=one["actions"], **out)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    live = policy.decide_windows(policy.norm.apply(windows))
    np.testing.assert_array_equal(out["actions"], live.actions)
    np.testing.assert_array_equal(out["one_actions"], live.actions[-1])
    np.testing.assert_allclose(out["probs"], live.probs, atol=1e-6)
    np.testing.assert_allclose(out["value"], live.value, atol=1e-6)
    np.testing.assert_array_equal(out["position"], live.position)
    # The same windows through decide() at the last bar.
    np.testing.assert_array_equal(policy.decide(tiny[2]).actions[0], out["actions"][-1])
    with pytest.raises(ValueError, match=f"takes \\(B, {policy.window}, 13\\)"):
        load_exported(artifact)(windows[:, 1:])


# ----------------------------------------------------------------------------- CLIs


def test_decide_cli_prints_a_table_and_json(tiny, policy, capsys):
    from marl_jax.decide import main

    model_dir, bar_file, bars = tiny[:3]
    t = len(bars) - 10
    stamp = str(np.datetime_as_string(bars.timestamp[t], unit="s"))
    assert main(["--model", str(model_dir), "--data", str(bar_file), "--at", stamp, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    expected = policy.decide(bars, bars.timestamp[t]).row(0)
    assert row["bar_index"] == t and row["timestamp"] == stamp
    assert row["agents"] == expected["agents"] and row["position"] == expected["position"]
    defaults = {"action_mode": "target", "position_sizing": "fixed"}
    assert row["env"] == {**defaults, "from": "defaults (no run config)"}
    assert main(["--model", str(model_dir), "--data", str(bar_file)]) == 0
    table = capsys.readouterr().out
    last = policy.decide(bars).row(0)
    assert f"(bar {len(bars) - 1})" in table
    for name in AGENT_NAMES:
        assert f"{name} " in table and last["agents"][name]["action_name"] in table
    assert f"{last['position']:+.4f}" in table
    assert "env.action_mode target" in table and "the model has no run config" in table


def test_decide_under_delta_moves_the_given_position_and_needs_it(
    tiny, policy, monkeypatch, capsys
):
    from marl_jax.decide import main
    from marl_jax.run import deploy

    model_dir, bar_file, bars = tiny[:3]
    delta = with_modes(policy, action_mode="delta", delta_step=0.5)
    monkeypatch.setattr(deploy, "load_policy", lambda source, **kw: delta)
    args = ["--model", str(model_dir), "--data", str(bar_file)]
    for extra, message in (
        ([], "env.action_mode delta: a decision moves the current holding, so pass --position P"),
        (["--position", "1.5"], "--position 1.5: the current holding must be in [-1, 1]"),
        (["--position", "nan"], "--position nan: the current holding must be in [-1, 1]"),
    ):
        assert main([*args, *extra]) == 2, extra
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    with pytest.raises(PolicyError, match="pass --position P"):
        delta.decide(bars)
    assert main([*args, "--position", "-0.5", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["env"] == {"action_mode": "delta", "position_sizing": "fixed", "from": "run config"}
    vote = np.mean([a["action"] - 1 for a in row["agents"].values()])
    assert row["position"] == row["signal"] == pytest.approx(np.clip(-0.5 + 0.5 * vote, -1, 1))
    assert row["position"] == delta.decide(bars, position=-0.5).row(0)["position"]
    assert main([*args, "--position", "0.25"]) == 0
    assert "env.action_mode delta (step 0.5)" in capsys.readouterr().out


@pytest.mark.slow
def test_backtest_cli_writes_the_training_reports_numbers(tiny, policy, tmp_path, capsys):
    from marl_jax.backtest import main

    model_dir, bar_file, bars = tiny[:3]
    out = tmp_path / "bt"
    assert main(["--model", str(model_dir), "--data", str(bar_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = check_report(out, "backtest")
    assert (out / "equity_curve.png").stat().st_size > 0
    params = market.make_env_params(bars, "test", window=policy.window, norm=policy.norm)
    # The training report's linear baseline: fitted on the train split.
    train = market.make_env_params(bars, "train", window=policy.window, norm=policy.norm)
    linear = evaluate.LinearBaseline.fit(train)
    metrics, baselines, _ = evaluate.evaluate_split(policy.policy_fn(), params, linear=linear)
    # Every metric of the summary, Sortino, Calmar, alpha and the DSR among them.
    assert report["metrics"]["policy"].keys() == metrics.keys() >= {"sortino", "calmar", "dsr"}
    for k, v in report["metrics"]["policy"].items():
        assert v == pytest.approx(metrics[k], abs=1e-12), k
    assert list(report["metrics"]) == ["policy", *baselines] == ["policy", *evaluate.BASELINES]
    for k, v in report["metrics"]["linear"].items():
        assert v == pytest.approx(baselines["linear"][k], abs=1e-12), k
    assert report["linear"]["on"] == "the train split"
    assert report["linear"]["count"] == int(train.last_bar) - int(train.start_lo)
    assert "policy (greedy)" in printed and all(name in printed for name in baselines)
    assert "left out" not in printed
    assert report["provenance"]["bars"] == int(params.last_bar) - int(params.start_lo)
    assert report["provenance"]["data"] == str(bar_file) and report["split"] == "test"

    # --cost-bps acts; --split all and --from/--to choose the bars.
    t0, t1 = (str(np.datetime_as_string(bars.timestamp[i], unit="s")) for i in (400, 700))
    args = ["--model", str(model_dir), "--data", str(bar_file), "--split", "all"]
    assert main([*args, "--out", str(tmp_path / "a"), "--cost-bps", "50"]) == 0
    printed = capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b"), "--from", t0, "--to", t1]) == 0
    capsys.readouterr()
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    a_prov, b_prov = a["provenance"], b["provenance"]
    assert a_prov["cost_bps"] == 50 and a_prov["bars"] == len(bars) - policy.history
    policy_return = report["metrics"]["policy"]["total_log_return"]
    assert a["metrics"]["policy"]["total_log_return"] < policy_return - 1e-3
    assert (b_prov["first_timestamp"], b_prov["bars"]) == (t0, 300)
    # --split all: the linear baseline is fitted on the bars before the range, if enough.
    need = policy.history + LINEAR_MIN_FIT
    assert a["linear"] is None and "linear" not in a["metrics"]
    why = f"the bars before the evaluated range holds {policy.history - 1} bars; fitting it needs"
    assert a["linear_left_out"].startswith(f"{why} {need}")
    note = [line for line in printed.splitlines() if "linear" in line]
    assert note == [f"linear baseline left out: {a['linear_left_out']}"]
    assert "linear" in b["metrics"] and b["linear"]["count"] == 400 - policy.history
    assert b["linear"]["last"] == str(np.datetime_as_string(bars.timestamp[398], unit="s"))


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors_with_exit_2(tiny, tmp_path, capsys):
    model_dir, bar_file, bars, modules, variables = tiny[:5]
    short = tmp_path / "short.csv"
    bars[: WARMUP_BARS + 5].to_frame().to_csv(short, index=False)
    other = dict(modules, mlmi=modules["mlmi"].clone(sequence_length=16))
    agents = {name: variables[name] for name in AGENT_NAMES}
    odd = save_models(tmp_path / "odd", agents, variables["critic"], other)
    meta = {"feature_normalisation": json.dumps(load_policy(str(model_dir)).norm.to_dict())}
    longer = {n: m.clone(sequence_length=16) if n in AGENT_NAMES else m for n, m in modules.items()}
    wide = save_models(tmp_path / "wide", agents, variables["critic"], longer, meta)
    cases = {
        "decide": [
            (["--model", str(model_dir), "--data", str(short)], "needs 128 (feature warm-up"),
            (
                ["--model", str(model_dir), "--data", str(bar_file), "--at", "1999-01-01"],
                "no bar is stamped 1999-01-01",
            ),
            (["--model", str(odd), "--data", str(bar_file)], "windows differ (mlmi 16, nwrqk 8"),
            (
                ["--model", str(model_dir), "--data", str(bar_file), "--norm-from", str(wide)],
                "trained on 16-bar windows but the model",
            ),
        ],
        "backtest": [
            (
                ["--model", str(model_dir), "--data", str(short), "--out", str(tmp_path / "x")],
                "short.csv",
            ),
        ],
        "export": [
            (["--model", str(odd), "--out", str(tmp_path / "p.jaxexport")], "windows differ")
        ],
    }
    for command, runs in cases.items():
        main = importlib.import_module(f"marl_jax.{command}").main
        for args, message in runs:
            assert main(args) == 2, (command, args)
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), lines
            assert message in lines[0], lines[0]
    # The same from a real process: exit status 2, one line on stderr.
    args, message = cases["decide"][0]
    proc = subprocess.run(
        [sys.executable, "-m", "marl_jax.decide", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert message in proc.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "p.jaxexport").exists()


def test_an_original_pt_needs_norm_from(tiny, policy, tmp_path, capsys):
    pytest.importorskip("torch")
    from bridge.convert import new_checkpoint, save_pt_checkpoint
    from marl_jax.decide import main

    model_dir, bar_file, bars, modules, variables = tiny[:5]
    pt = tmp_path / "original.pt"
    agents = {name: jax.tree.map(np.asarray, variables[name]) for name in AGENT_NAMES}
    critic = jax.tree.map(np.asarray, variables["critic"])
    save_pt_checkpoint(new_checkpoint(agents, critic, modules), pt)
    with pytest.raises(PolicyError, match="no feature normalisation .* pass --norm-from RUN"):
        load_policy(str(pt))
    args = ["--model", str(pt), "--data", str(bar_file), "--json"]
    assert main(args) == 2
    assert "--norm-from" in capsys.readouterr().err
    assert main([*args, "--norm-from", str(model_dir)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["agents"] == policy.decide(bars).row(0)["agents"]


def test_a_planted_files_reports_hold_the_oracle_row_and_capture(tiny, policy, tmp_path, capsys):
    """backtest and the train report on a planted file: the oracle is the evaluator's baseline
    of sign(s) over the same bars, and capture is the policy's active IR over the oracle's."""
    from marl_jax.backtest import main
    from marl_jax.plant import main as plant_main
    from marl_jax.run.planted import read_oracle
    from marl_jax.run.report import format_report, metrics_of, test_split_runs

    model_dir, bar_file, _, modules, variables, cfg = tiny
    planted = tmp_path / "planted.csv"
    assert plant_main([str(bar_file), str(planted), "--signal", "trend", "--strength", "0.3"]) == 0
    bars = data.load_bars(planted)
    s = read_oracle(planted, bars)
    out = tmp_path / "bt"
    capsys.readouterr()
    assert main(["--model", str(model_dir), "--data", str(planted), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = check_report(out, "backtest")
    params = market.make_env_params(bars, "test", window=policy.window, norm=policy.norm)
    oracle = evaluate.run_baseline(evaluate.ORACLE, params, oracle=s).metrics
    assert report["metrics"]["oracle"] == pytest.approx(oracle)
    assert oracle["active_ir"] > 1
    capture = report["checks"]["capture"]
    assert capture == pytest.approx(report["metrics"]["policy"]["active_ir"] / oracle["active_ir"])
    assert f"capture (policy active IR / oracle active IR): {capture:.4f}" in printed
    assert "oracle" in printed and "one-sign test folds: " in printed

    # The train report: the same row through test_split_runs.
    params_, constants = {}, {}
    for name, v in variables.items():
        params_[name], constants[name] = split_variables(v)
    state = TrainState(params_, constants, None, None, None, None, None, None)
    algo = MAPPO(cfg, market.MARKET, modules)
    test = market.make_env_params(bars, "test", window=cfg.env.window, norm=policy.norm)
    runs = test_split_runs(cfg, algo, state, test, oracle=s)
    row = evaluate.run_baseline(evaluate.ORACLE, test, oracle=s).metrics
    assert runs["oracle"].metrics == row and list(runs)[0] == "policy"
    table = format_report({"metrics": metrics_of(runs), "checks": report["checks"]})
    assert "capture" in table and "oracle" in table
    assert "oracle" not in test_split_runs(cfg, algo, state, test)
