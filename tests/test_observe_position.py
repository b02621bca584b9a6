"""``env.observe_position``: the position held at each bar is one more input of every actor and
of the critic, in the environment, the evaluator, ``decide``, the ``jax.export`` artifact and
the ``.pt`` (which loads strictly into the original classes built with one more input).

One tiny model directory of random variables (the models one input wider) and one bar file
serve the tests; the run that trains with the key is the one slow test.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from test_policy import random_model_dir, random_variables
from tiny_config import tiny

from marl_jax.agents import AGENT_BY_NAME, AGENT_NAMES, CRITIC_STATE_DIM
from marl_jax.config import config_from_dict
from marl_jax.env import data, evaluate, market
from marl_jax.env.features import compute_features
from marl_jax.models.registry import module_config
from marl_jax.models.team import build_modules
from marl_jax.policy import Policy, PolicyError
from marl_jax.run.deploy import load_policy

N_BARS = 1500
WINDOW = tiny()["env"]["window"]


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """``(model_dir, bar_file, bars, modules, variables, cfg)`` of models that observe their
    position."""
    cfg = config_from_dict(tiny(env={"observe_position": True}))
    root = tmp_path_factory.mktemp("held")
    return random_model_dir(root, cfg, centre_mmd=False, observe_position=True)


@pytest.fixture(scope="module")
def policy(held) -> Policy:
    return load_policy(str(held[0]))


def with_env(policy: Policy, **env) -> Policy:
    """``policy`` under a run config with these env keys (and observe_position)."""
    cfg = config_from_dict(tiny(env={"observe_position": True, **env}))
    return Policy(policy.modules, policy.variables, policy.norm, policy.window, "held", cfg)


# ----------------------------------------------------------------------------- the environment


@pytest.mark.parametrize("mode", ["target", "delta"])
def test_each_observation_holds_the_environments_position(mode):
    bars = data.synthetic_bars(600, seed=1)
    kw = {"window": WINDOW, "episode_len": 16, "action_mode": mode}
    params = market.make_env_params(bars, "train", observe_position=True, **kw)
    plain = market.make_env_params(bars, "train", **kw)
    step = jax.jit(market.step)
    obs, state = market.reset(jax.random.key(0), params)
    rng = np.random.default_rng(0)
    seen = set()
    for i in range(40):
        for name in AGENT_NAMES:
            want = (AGENT_BY_NAME[name].input_dim + 1, WINDOW)
            assert obs[name].shape == want
            np.testing.assert_array_equal(obs[name][-1], np.full(WINDOW, state.signal))
        assert obs["critic"].shape == (CRITIC_STATE_DIM + 1,)
        assert obs["critic"][-1] == state.signal
        # Under fixed sizing the signal is the position (to XLA's rounding of signal x 1).
        assert float(state.signal) == pytest.approx(float(state.position), abs=1e-6)
        # The features are the plain observation's; the market rebuilds the same from its key.
        bare = market.observation_at(plain, state.t)
        for name, value in bare.items():
            np.testing.assert_array_equal(np.asarray(obs[name])[: len(value)], value)
        keys = jax.tree.map(lambda x: x[None], market.MARKET.obs_key(state, params))
        again = market.MARKET.observe(params, keys)
        for name in obs:
            np.testing.assert_array_equal(again[name][0], obs[name])
        actions = jnp.asarray(rng.integers(0, 3, 3), jnp.int32)
        obs, state, _, done, info = step(jax.random.key(i + 1), state, actions, params)
        held_next = 0.0 if bool(done) else float(info["position"])  # a reset starts flat
        assert float(obs["critic"][-1]) == pytest.approx(held_next, abs=1e-6)
        seen.add(round(float(state.signal), 4))
    assert len(seen) > 2  # the position moved, and the observation followed it
    # The rollout buffer's key carries the held signal; the auxiliary targets read its bar.
    key = market.MARKET.obs_key(state, params)
    assert isinstance(key, market.HeldBar) and market.MARKET.obs_key(state, plain) is state.t


@pytest.mark.parametrize(
    ("mode", "cycle"), [("target", (1.0, -1.0)), ("delta", (0.5, 0.0))], ids=["target", "delta"]
)
def test_the_evaluator_feeds_the_policys_own_running_position(mode, cycle):
    """A policy that goes long when flat or short and short when long cycles through ``cycle``
    only if each bar observes the position the bar before set: batched over the held signals
    (target), in one scan (delta) and bar after bar (a plain function) alike."""
    bars = data.synthetic_bars(600, seed=2)
    params = market.make_env_params(
        bars, "test", window=WINDOW, observe_position=True, action_mode=mode
    )

    def act(args, obs):
        held = obs["critic"][:, -1]
        return jnp.broadcast_to(jnp.where(held <= 0, 2, 0)[:, None], (held.shape[0], 3))

    n = int(params.last_bar) - int(params.start_lo)
    want = np.asarray(cycle * n, np.float32)[:n]
    traced = evaluate.run_policy(evaluate.TracedPolicy(act, None), params, batch_size=64)
    looped = evaluate.run_policy(lambda obs: np.asarray(act(None, obs)), params)
    np.testing.assert_array_equal(traced.positions, want)
    np.testing.assert_array_equal(looped.positions, want)
    np.testing.assert_array_equal(traced.rewards, looped.rewards)


def test_under_target_the_evaluation_holds_one_of_seven_signals():
    params = market.make_env_params(
        data.synthetic_bars(600, seed=2), "test", window=WINDOW, observe_position=True
    )
    signals, moves = evaluate.held_signals(params)
    np.testing.assert_allclose(np.sort(signals), np.arange(-3, 4) / 3, atol=1e-7)
    for total in range(7):  # a vote's signal is the vote, wherever it starts
        np.testing.assert_allclose(signals[moves[:, total]], (total - 3) / 3, atol=1e-7)


# ----------------------------------------------------------------------------- the policy


def test_a_loaded_model_observes_its_position_and_decide_reads_it(held, policy):
    model_dir, _, bars, modules = held[:4]
    assert policy.observe_position and policy.run_config.env.observe_position
    long, short = (policy.decide(bars, position=p) for p in (0.5, -0.5))
    assert not np.allclose(long.probs, short.probs)  # the held position is an input
    assert long.value[0] != short.value[0]
    with pytest.raises(PolicyError, match="observes its position .* pass --position P"):
        policy.decide(bars)
    with pytest.raises(PolicyError, match="must be in \\[-1, 1\\]"):
        policy.decide(bars, position=2.0)
    # A model without the input ignores --position under target.
    cfg = config_from_dict(tiny())
    plain_modules = build_modules(cfg)
    plain_vars = {n: random_variables(m, i) for i, (n, m) in enumerate(plain_modules.items())}
    plain = Policy(plain_modules, plain_vars, policy.norm, WINDOW, "plain")
    assert not plain.observe_position
    a, b = (plain.decide(bars, position=p) for p in (0.5, -0.5))
    np.testing.assert_array_equal(a.probs, b.probs)
    assert plain.decide(bars).actions.tolist() == a.actions.tolist()


@pytest.mark.parametrize("mode", ["target", "delta"])
def test_decide_many_and_the_evaluator_run_the_same_held_positions(held, policy, mode):
    bars = held[2]
    acting = with_env(policy, action_mode=mode)
    params = market.make_env_params(
        bars, "test", window=WINDOW, norm=policy.norm, **market.env_modes(acting.run_config)
    )
    assert params.observe_position
    start, stop = int(params.start_lo), int(params.last_bar)
    many = acting.decide_many(bars, start, stop)
    run = evaluate.run_policy(acting.policy_fn(), params)
    np.testing.assert_array_equal(run.positions, many.position)
    assert len(np.unique(many.position)) > 1
    # Each decision is decide() at its bar with the signal the one before set.
    for k in (1, 7, stop - start - 1):
        one = acting.decide(bars, bars.timestamp[start + k], position=float(many.signal[k - 1]))
        np.testing.assert_array_equal(one.actions[0], many.actions[k])
        np.testing.assert_allclose(one.probs[0], many.probs[k], atol=1e-6)
        assert one.signal[0] == pytest.approx(many.signal[k], abs=1e-7)


def test_decide_cli_takes_and_repeats_the_position(held, capsys):
    from marl_jax.decide import main

    model_dir, bar_file = held[:2]
    args = ["--model", str(model_dir), "--data", str(bar_file)]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "observes its position" in lines[0] and "--position P" in lines[0]
    assert main([*args, "--position", "0.5", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["observed_position"] == 0.5
    assert main([*args, "--position", "-1"]) == 0
    assert "observed position" in capsys.readouterr().out


def test_the_export_artifact_takes_the_position_and_matches_the_policy(held, policy, tmp_path):
    from marl_jax.exported import load_exported
    from marl_jax.run.artifact import export_policy

    artifact, sidecar = export_policy(policy, tmp_path / "policy.jaxexport")
    assert json.loads(sidecar.read_text())["observe_position"] is True
    exported = load_exported(artifact)
    raw = compute_features(held[2])
    rows = np.arange(len(raw) - 6, len(raw))
    windows = raw[rows[:, None] + np.arange(-WINDOW + 1, 1)]
    positions = np.array([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0], np.float32)
    out = exported(windows, position=positions)
    live = policy.decide_windows(policy.norm.apply(windows), positions)
    np.testing.assert_array_equal(out["actions"], live.actions)
    np.testing.assert_allclose(out["probs"], live.probs, atol=1e-6)
    np.testing.assert_allclose(out["value"], live.value, atol=1e-6)
    flat = exported(windows, position=0.0)
    assert not np.allclose(flat["probs"], out["probs"])
    with pytest.raises(ValueError, match="observes its position: pass position="):
        exported(windows)


# ----------------------------------------------------------------------------- the .pt


def test_the_pt_loads_strictly_into_the_original_classes_one_input_wider(held, tmp_path):
    torch = pytest.importorskip("torch")
    from bridge import torch_reference
    from bridge.convert import new_checkpoint, save_pt_checkpoint

    model_dir, bar_file, bars, modules, variables = held[:5]
    agents = {name: variables[name] for name in AGENT_NAMES}
    meta = {"observe_position": True}
    path = tmp_path / "held.pt"
    save_pt_checkpoint(new_checkpoint(agents, variables["critic"], modules, meta), path)
    saved = torch.load(path, weights_only=True)
    assert saved["metadata"]["observe_position"] is True
    rng = np.random.default_rng(0)
    for name in (*AGENT_NAMES, "critic"):
        kwargs = module_config(modules[name])
        if name == "critic":
            assert kwargs["state_dim"] == CRITIC_STATE_DIM + 1
            model = torch_reference.CentralizedCritic(**kwargs)
            state_dict = saved["model_state_dicts"]["critic"]
            x = rng.standard_normal((3, kwargs["state_dim"])).astype(np.float32)
        else:
            assert kwargs["input_dim"] == AGENT_BY_NAME[name].input_dim + 1
            model = getattr(torch_reference, type(modules[name]).__name__)(**kwargs)
            state_dict = saved["model_state_dicts"]["agents"][name]
            x = rng.standard_normal((3, kwargs["input_dim"], WINDOW)).astype(np.float32)
        model.load_state_dict(state_dict, strict=True)
        model.eval()
        with torch.no_grad():
            if name == "critic":
                theirs = {"value": model(torch.from_numpy(x))["value"]}
                ours = modules[name].apply(variables[name], x)
            else:
                theirs = model(torch.from_numpy(x), deterministic=True)
                ours = modules[name].apply(variables[name], x, deterministic=True)
        for key, value in theirs.items():
            if key in ("action", "log_prob", "entropy", "attention_weights"):
                continue
            np.testing.assert_allclose(
                np.asarray(ours[key]), value.numpy(), atol=1e-5, err_msg=f"{name}/{key}"
            )
    # Read back through any source: it observes its position again.
    back = load_policy(str(path), norm_from=str(model_dir))
    assert back.observe_position
    np.testing.assert_array_equal(
        back.decide(bars, position=0.5).actions,
        load_policy(str(model_dir)).decide(bars, position=0.5).actions,
    )


def test_init_from_a_position_model_turns_the_key_on(held):
    from marl_jax.run.setup import config_with_models

    modules = held[3]
    configs = {name: module_config(m) for name, m in modules.items()}
    cfg = config_with_models(config_from_dict(tiny()), configs, "held")
    assert cfg.env.observe_position
    assert build_modules(cfg)["mlmi"].input_dim == modules["mlmi"].input_dim
    odd = dict(configs, critic={**configs["critic"], "state_dim": CRITIC_STATE_DIM})
    with pytest.raises(Exception, match="only mlmi, nwrqk, mmd of the models take the position"):
        config_with_models(config_from_dict(tiny()), odd, "odd")


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_a_tiny_run_trains_with_the_key_and_exports_models_one_input_wider(tmp_path):
    from marl_jax.run.session import train_run
    from marl_jax.run.setup import RunSpec

    config = tmp_path / "held.yaml"
    config.write_text(yaml.safe_dump(tiny(env={"observe_position": True})))
    result = train_run(RunSpec(out=str(tmp_path / "run"), config=str(config)), progress=False)
    assert result.run.cfg.env.observe_position
    assert np.isfinite(result.report["metrics"]["policy"]["total_log_return"])
    trained = load_policy(str(tmp_path / "run"))
    assert trained.observe_position
    assert trained.modules["critic"].state_dim == CRITIC_STATE_DIM + 1
    if result.exported is not None:  # torch is installed: the .pt says so and reads back
        back = load_policy(str(result.exported), norm_from=str(tmp_path / "run"))
        assert back.observe_position
        bars = data.synthetic_bars(N_BARS, seed=0)
        np.testing.assert_array_equal(
            back.decide(bars, position=0.5).probs, trained.decide(bars, position=0.5).probs
        )


def test_a_backtest_holds_the_positions_the_policy_decides_bar_after_bar(held, policy, tmp_path):
    import pandas as pd

    from marl_jax.run.backtesting import backtest

    bars = held[2]
    report = backtest(policy, bars, out=tmp_path / "bt", source=str(held[1]))
    assert np.isfinite(report["metrics"]["policy"]["total_log_return"])
    frame = pd.read_csv(tmp_path / "bt" / "returns.csv")
    start = int(np.searchsorted(bars.timestamp, np.datetime64(frame["timestamp"].iloc[0], "ns")))
    many = policy.decide_many(bars, start, start + len(frame))
    np.testing.assert_allclose(frame["position"].to_numpy(), many.position, atol=1e-6)
    assert len(np.unique(many.position)) > 1
