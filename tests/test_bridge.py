"""The bridge between PyTorch checkpoints and the Flax models: the issue's acceptance list.

1. the shared fixture is reproduced; 2. round trips are bit-identical; 3. fresh JAX weights run
the same in ``bridge.torch_reference``; 4. gradients agree with torch autograd; 5. non-default
configurations and inputs; 6. bad input is refused with one-line errors.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch_asserts import assert_identical

from bridge import convert, torch_reference
from bridge.convert import (
    BridgeError,
    flax_to_torch,
    load_pt_checkpoint,
    new_checkpoint,
    read_pt,
    save_pt_checkpoint,
    torch_to_flax,
)
from marl_jax.models import CentralizedCritic
from marl_jax.models.registry import MODEL_NAMES, build_module, module_config

AGENTS = ("mlmi", "nwrqk", "mmd")
OUTPUT_KEYS = ("action_probs", "logits", "value", "log_prob", "entropy", "attention_weights")
FIXTURE_ATOL = 1e-5  # the tolerance for the reference outputs
GRAD_RTOL = 1e-4  # the relative tolerance for gradients
# Fresh default-size weights: the same configurations and seed as test_models (shared compile).
FRESH_CONFIGS = {name: {"temperature_init": 0.7} if name in AGENTS else {} for name in MODEL_NAMES}
FRESH_SEED = 7
# Non-default sizes for item 5 (weights from the PyTorch twins: no init to compile).
SMALL = {
    "mlmi": {"hidden_dims": (32, 16, 8), "conv_channels": (8, 16, 16)},
    "nwrqk": {"hidden_dims": (32, 16, 8), "conv_channels": (8, 16, 16)},
    "mmd": {"hidden_dims": (32, 16, 8), "conv_channels": (8, 16, 16)},
    "critic": {"hidden_dims": (32, 16, 8)},
}


# ----------------------------------------------------------------------------- helpers


@functools.partial(jax.jit, static_argnames=("module", "deterministic", "train", "mutable"))
def actor_apply(
    module, variables, state, deterministic=True, train=False, actions=None, mutable=False
):
    return module.apply(
        variables, state, deterministic=deterministic, train=train, actions=actions, mutable=mutable
    )


@functools.partial(jax.jit, static_argnames=("module", "train"))
def critic_apply(module, variables, states, agent_states=None, train=False):
    return module.apply(variables, states, agent_states=agent_states, train=train)


def torch_twin(module: nn.Module, state_dict=None) -> torch.nn.Module:
    """The ``bridge.torch_reference`` model with the Flax module's configuration."""
    if isinstance(module, CentralizedCritic):
        model = torch_reference.CentralizedCritic(**module_config(module))
    else:
        model = getattr(torch_reference, type(module).__name__)(**module_config(module))
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


def random_inputs(module: nn.Module, batch: int, length: int | None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if length is None:
        shape = (batch, module.input_dim)
    else:
        shape = (batch, module.input_dim, length)
    return rng.normal(size=shape).astype(np.float32)


def critic_inputs(module: nn.Module, batch: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, module.state_dim)).astype(np.float32)


def jax_outputs(module: nn.Module, variables: Mapping, x: np.ndarray) -> dict[str, np.ndarray]:
    """Eval-mode, deterministic outputs of an actor, or value/agent values of the critic."""
    if isinstance(module, CentralizedCritic):
        agents = {name: x for name in AGENTS[: module.n_agents]}
        out = critic_apply(module, variables, x, agents)
        return {
            "value": out["value"],
            **{f"agent_values/{k}": v for k, v in out["agent_values"].items()},
        }
    return jax.tree.map(np.asarray, dict(actor_apply(module, variables, x)))


def torch_outputs(model: torch.nn.Module, x: np.ndarray, n_agents: int = 0) -> dict:
    with torch.no_grad():
        tx = torch.from_numpy(np.array(x))
        if isinstance(model, torch_reference.CentralizedCritic):
            out = model(tx, {name: tx for name in AGENTS[:n_agents]})
            values = {f"agent_values/{k}": v for k, v in out["agent_values"].items()}
            return {"value": out["value"].numpy(), **{k: v.numpy() for k, v in values.items()}}
        return {k: v.numpy() for k, v in model(tx, deterministic=True).items()}


def assert_same_outputs(jax_out: Mapping, torch_out: Mapping, atol: float) -> None:
    assert set(jax_out) == set(torch_out)
    for key in jax_out:
        a, b = np.asarray(jax_out[key]), np.asarray(torch_out[key])
        assert a.shape == b.shape, key
        if key == "action":
            np.testing.assert_array_equal(a, b, err_msg=key)
        else:
            np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=key)


def assert_same_variables(a: Mapping, b: Mapping) -> None:
    fa = jax.tree_util.tree_flatten_with_path(a)
    fb = jax.tree_util.tree_flatten_with_path(b)
    assert fa[1] == fb[1]
    for (path, x), (_, y) in zip(fa[0], fb[0], strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert x.tobytes() == y.tobytes(), path


def assert_one_line_naming(err: BridgeError, path: Path) -> str:
    message = str(err)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ckpt(reference_ckpt_path):
    return load_pt_checkpoint(reference_ckpt_path)


@pytest.fixture(scope="module")
def raw_ckpt(reference_ckpt_path):
    return torch.load(reference_ckpt_path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def fresh(fresh_variables):
    """``fresh(name)``: a default-size module and fresh ``init_variables`` weights."""

    def get(name: str):
        module = build_module(name, FRESH_CONFIGS[name])
        return module, fresh_variables(module, FRESH_SEED)

    return get


@functools.cache
def small_torch_state_dict(name: str) -> OrderedDict:
    """A PyTorch-initialised state dict of the small configuration (MLMI after a train step)."""
    module = build_module(name, SMALL[name])
    torch.manual_seed(MODEL_NAMES.index(name))
    model = torch_twin(module)
    if name == "mlmi":  # non-trivial running statistics
        model.train()
        with torch.no_grad():
            model(torch.randn(4, module.input_dim, 48))
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def small():
    """``small(name)``: Flax variables of the small configuration (from PyTorch weights)."""

    @functools.cache
    def get(name: str) -> dict:
        return torch_to_flax(small_torch_state_dict(name), build_module(name, SMALL[name]))

    return get


# ----------------------------------------------------------------------------- 1. the fixture


@pytest.mark.parametrize("name", AGENTS)
def test_fixture_outputs_are_reproduced(ckpt, reference_io, name):
    module = ckpt.modules[name]
    assert module_config(module) == torch_reference.DEFAULT_CONFIGS[name]
    x = reference_io[f"{name}/input"]
    assert x.shape == (4, module.input_dim, 48)
    out = jax_outputs(module, ckpt.agents[name], x)
    for key in OUTPUT_KEYS:
        expected = reference_io[f"{name}/{key}"]
        assert out[key].shape == expected.shape, key
        diff = np.max(np.abs(out[key].astype(np.float64) - expected))
        assert diff <= FIXTURE_ATOL, f"{name}/{key}: max abs diff {diff:.3g}"
    np.testing.assert_array_equal(out["action"], reference_io[f"{name}/action"])


def test_fixture_critic_is_reproduced(ckpt, reference_io):
    module = ckpt.modules["critic"]
    assert module_config(module) == torch_reference.DEFAULT_CONFIGS["critic"]
    x = reference_io["critic/input"]
    # The critic's input is each agent's state averaged over the sequence, in agent order.
    means = [reference_io[f"{name}/input"].mean(-1) for name in AGENTS]
    np.testing.assert_allclose(x, np.concatenate(means, -1), atol=1e-6)
    agent_states = {name: reference_io[f"{name}/input"] for name in AGENTS}
    out = critic_apply(module, ckpt.critic, x, agent_states)
    diff = np.max(np.abs(np.asarray(out["value"], np.float64) - reference_io["critic/value"]))
    assert diff <= FIXTURE_ATOL, f"critic/value: max abs diff {diff:.3g}"
    assert set(out["agent_values"]) == set(AGENTS)
    for name in AGENTS:
        expected = reference_io[f"critic/agent_values/{name}"]
        diff = np.max(np.abs(np.asarray(out["agent_values"][name], np.float64) - expected))
        assert diff <= FIXTURE_ATOL, f"critic/agent_values/{name}: max abs diff {diff:.3g}"


def test_fixture_special_entries_are_carried(ckpt, raw_ckpt):
    assert ckpt.metadata == raw_ckpt["metadata"]
    agents = raw_ckpt["model_state_dicts"]["agents"]
    mlmi_stats = ckpt.agents["mlmi"]["batch_stats"]["conv_layers_0"]["norm"]
    assert (
        mlmi_stats["num_batches_tracked"]
        == agents["mlmi"]["conv_layers.0.norm.num_batches_tracked"]
    )
    np.testing.assert_array_equal(
        mlmi_stats["var"], agents["mlmi"]["conv_layers.0.norm.running_var"].numpy()
    )
    for name in AGENTS:
        np.testing.assert_array_equal(
            ckpt.agents[name]["params"]["temperature"], agents[name]["temperature"].numpy()
        )
        np.testing.assert_array_equal(
            ckpt.agents[name]["buffers"]["pos_encoding"]["pe"], agents[name]["pos_encoding.pe"]
        )
    np.testing.assert_array_equal(
        ckpt.agents["mmd"]["params"]["volatility_adjust"], agents["mmd"]["volatility_adjust"]
    )
    critic = raw_ckpt["model_state_dicts"]["critic"]
    np.testing.assert_array_equal(
        ckpt.critic["buffers"]["agent_attention"]["in_proj_weight"],
        critic["agent_attention.in_proj_weight"],
    )


# ----------------------------------------------------------------------------- 2. round trips


def test_pt_flax_pt_is_bit_identical(raw_ckpt, tmp_path):
    original = {
        "epoch": 12,  # an extra entry before the state dicts: the order must be kept too
        **raw_ckpt,
        "optimizer_states": {
            "mlmi": {
                "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(32, 4, 3)}},
                "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
            }
        },
        "metrics": {"average_reward": 1.5, "episodes": 40, "counts": torch.arange(5)},
    }
    source, target = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save(original, source)
    loaded = load_pt_checkpoint(source)
    assert set(loaded.extra) == {"epoch", "optimizer_states", "metrics"}
    save_pt_checkpoint(loaded, target)
    before = torch.load(source, map_location="cpu", weights_only=True)
    after = torch.load(target, map_location="cpu", weights_only=True)
    assert_identical(before, after)
    assert list(after) == list(original)
    assert list(after["model_state_dicts"]["agents"]) == list(AGENTS)
    assert sorted(os.listdir(tmp_path)) == ["in.pt", "out.pt"]  # no temporary files left


@pytest.mark.slow
def test_flax_pt_flax_is_identical(fresh, tmp_path):
    modules, variables = {}, {}
    for name in MODEL_NAMES:
        modules[name], variables[name] = fresh(name)
    # Non-trivial BatchNorm statistics, as after training.
    rng = np.random.default_rng(0)
    stats = jax.tree.map(np.asarray, variables["mlmi"]["batch_stats"])
    for norm in stats.values():
        norm["norm"]["mean"] = rng.normal(size=norm["norm"]["mean"].shape).astype(np.float32)
        norm["norm"]["var"] = rng.uniform(0.5, 2, norm["norm"]["var"].shape).astype(np.float32)
        norm["norm"]["num_batches_tracked"] = np.int32(17)
    variables["mlmi"] = {**variables["mlmi"], "batch_stats": stats}

    ckpt = new_checkpoint(
        {name: variables[name] for name in AGENTS},
        variables["critic"],
        modules,
        metadata={"run": "test"},
        extra={"metrics": {"average_reward": -0.25}},
    )
    path = tmp_path / "fresh.pt"
    save_pt_checkpoint(ckpt, path)
    back = load_pt_checkpoint(path)
    for name in AGENTS:
        assert_same_variables(variables[name], back.agents[name])
    assert_same_variables(variables["critic"], back.critic)
    assert back.metadata["run"] == "test" and back.metadata["config_version"] == "1.0"
    assert back.extra == {"metrics": {"average_reward": -0.25}}
    for name in MODEL_NAMES:
        inferred = module_config(back.modules[name])
        expected = module_config(modules[name])
        for config in (inferred, expected):  # temperature_init leaves no trace in the tensors
            config.pop("temperature_init", None)
        assert inferred == expected, name
    raw = torch.load(path, map_location="cpu", weights_only=True)
    counts = raw["model_state_dicts"]["agents"]["mlmi"]["conv_layers.1.norm.num_batches_tracked"]
    assert counts.dtype == torch.int64 and int(counts) == 17


# ----------------------------------------------------------------------------- 3. fresh weights


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fresh_jax_weights_run_the_same_in_torch(fresh, name):
    module, variables = fresh(name)
    state_dict = flax_to_torch(variables, module)
    # temperature_init only matters to init: run the default module (compiled for the fixture).
    module = build_module(name)
    model = torch_twin(module, state_dict)  # strict load
    reference = model.state_dict()
    assert list(state_dict) == list(reference)
    for key, tensor in reference.items():
        assert state_dict[key].dtype == tensor.dtype, key
    if name == "critic":
        x = critic_inputs(module)
        assert_same_outputs(jax_outputs(module, variables, x), torch_outputs(model, x, 3), 1e-5)
    else:
        x = random_inputs(module, 4, 48)
        assert_same_outputs(jax_outputs(module, variables, x), torch_outputs(model, x), 1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.slow
def test_train_mode_step_matches_torch(fresh, name):
    """dropout_rate=0, one train step: outputs and the updated running statistics."""
    _, variables = fresh(name)
    module = build_module(name, {**FRESH_CONFIGS[name], "dropout_rate": 0.0})
    model = torch_twin(module, flax_to_torch(variables, module))
    model.train()
    if name == "critic":
        x = critic_inputs(module)
        with torch.no_grad():
            torch_value = model(torch.from_numpy(x))["value"].numpy()
        out = critic_apply(module, variables, x, train=True)
        np.testing.assert_allclose(out["value"], torch_value, atol=1e-5)
        return
    x = random_inputs(module, 3, 48, seed=1)
    with torch.no_grad():
        torch_out = {
            k: v.numpy() for k, v in model(torch.from_numpy(x), deterministic=True).items()
        }
    out, state = actor_apply(module, variables, x, train=True, mutable=("batch_stats",))
    assert_same_outputs(jax.tree.map(np.asarray, dict(out)), torch_out, 1e-5)
    updated = flax_to_torch({**variables, **state}, module)
    torch_state = model.state_dict()
    assert list(updated) == list(torch_state)
    for key, expected in torch_state.items():
        found = updated[key]
        assert found.dtype == expected.dtype, key
        if expected.is_floating_point():
            torch.testing.assert_close(found, expected, atol=1e-6, rtol=1e-5, msg=key)
        else:
            assert torch.equal(found, expected), (key, found, expected)
    if name == "mlmi":
        assert int(torch_state["conv_layers.0.norm.num_batches_tracked"]) == 1
        assert not torch.allclose(torch_state["conv_layers.1.norm.running_var"], torch.ones(64))


# ----------------------------------------------------------------------------- 4. gradients


def assert_grads_match(jax_grads: Mapping, model: torch.nn.Module) -> None:
    checked = 0
    for key, param in model.named_parameters():
        if param.grad is None:
            # Only the critic's never-used attention has no gradient (a Flax buffer).
            assert key.startswith("agent_attention."), key
            continue
        gt = param.grad.detach().numpy().astype(np.float64)
        gj = jax_grads[key].numpy().astype(np.float64)
        assert gj.shape == gt.shape, key
        error = np.max(np.abs(gj - gt))
        bound = GRAD_RTOL * np.max(np.abs(gt)) + 1e-7
        assert error <= bound, f"{key}: max |g_jax - g_torch| {error:.3g} > {bound:.3g}"
        checked += 1
    assert checked > 10


@pytest.mark.parametrize("name", AGENTS)
def test_actor_gradients_match_torch(fresh, name):
    module, variables = fresh(name)
    x = random_inputs(module, 3, 48, seed=2)
    actions = np.array([0, 2, 1], np.int32)

    def loss(params):
        out = module.apply(
            {**variables, "params": params}, x, deterministic=True, actions=jnp.asarray(actions)
        )
        return out["log_prob"].sum() + out["value"].sum()

    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    jax_grads = flax_to_torch({**variables, "params": grads}, module)

    model = torch_twin(module, flax_to_torch(variables, module))
    out = model.evaluate_actions(torch.from_numpy(x), torch.from_numpy(actions).long())
    torch_loss = out["log_prob"].sum() + out["value"].sum()
    torch_loss.backward()
    np.testing.assert_allclose(float(value), float(torch_loss.detach()), rtol=1e-5, atol=1e-5)
    assert_grads_match(jax_grads, model)


def test_critic_gradients_match_torch(fresh):
    module, variables = fresh("critic")
    x = critic_inputs(module, seed=2)

    def loss(params):
        out = module.apply({**variables, "params": params}, x, agent_states={n: x for n in AGENTS})
        return out["value"].sum() + sum(v.sum() for v in out["agent_values"].values())

    grads = jax.jit(jax.grad(loss))(variables["params"])
    jax_grads = flax_to_torch({**variables, "params": grads}, module)
    model = torch_twin(module, flax_to_torch(variables, module))
    tx = torch.from_numpy(x)
    out = model(tx, {n: tx for n in AGENTS})
    (out["value"].sum() + sum(v.sum() for v in out["agent_values"].values())).backward()
    assert_grads_match(jax_grads, model)


# ----------------------------------------------------------------------------- 5. non-default


@pytest.mark.parametrize("name", AGENTS)
def test_small_configuration_round_trips_and_matches(small, name):
    variables = small(name)
    module = build_module(name, {**SMALL[name], "sequence_length": 24})
    state_dict = flax_to_torch(variables, module)
    assert_identical(state_dict, small_torch_state_dict(name))  # torch -> Flax -> torch
    assert_same_variables(torch_to_flax(state_dict, module), variables)  # Flax -> torch -> Flax
    model = torch_twin(module, state_dict)
    assert model.sequence_length == 24
    for batch, length in [(3, 24), (3, None), (1, 600)]:
        x = random_inputs(module, batch, length, seed=3)
        jax_out = jax_outputs(module, variables, x)
        expected_length = 24 if length in (None, 1) else length
        assert jax_out["attention_weights"].shape == (batch, expected_length, expected_length)
        assert_same_outputs(jax_out, torch_outputs(model, x), 1e-5)


@pytest.mark.parametrize("use_layer_norm", [True, False])
def test_small_critic_round_trips_and_matches(small, use_layer_norm):
    if use_layer_norm:
        module = build_module("critic", SMALL["critic"])
        state_dict = small_torch_state_dict("critic")
    else:
        config = {"state_dim": 9, "n_agents": 2, "hidden_dims": (24, 16), "use_layer_norm": False}
        module = build_module("critic", config)
        torch.manual_seed(5)
        state_dict = torch_twin(module).state_dict()
    variables = torch_to_flax(state_dict, module)
    assert_identical(flax_to_torch(variables, module), state_dict)
    assert_same_variables(torch_to_flax(flax_to_torch(variables, module), module), variables)
    model = torch_twin(module, state_dict)
    x = critic_inputs(module, batch=5, seed=4)
    out = jax_outputs(module, variables, x)
    assert len(out) == 1 + module.n_agents
    assert_same_outputs(out, torch_outputs(model, x, module.n_agents), 1e-5)


def test_configuration_is_inferred_from_a_torch_checkpoint(tmp_path):
    configs = {
        "mlmi": {
            "hidden_dims": [48, 24, 16, 8],
            "conv_channels": [8, 12, 128],
            "kernel_sizes": [3, 7],
        },
        "nwrqk": {"hidden_dims": [32, 16], "conv_channels": [8, 16, 24], "kernel_sizes": [3, 5]},
        "mmd": {"hidden_dims": [16, 8], "conv_channels": [4, 8, 64], "kernel_sizes": [3, 3]},
        "critic": {"hidden_dims": [64, 32], "n_agents": 3, "use_layer_norm": False},
    }
    torch.manual_seed(0)
    models = torch_reference.build_reference_models(configs)
    data = {
        "model_state_dicts": {
            "agents": {name: models[name].state_dict() for name in AGENTS},
            "critic": models["critic"].state_dict(),
        },
        "metadata": {"config_version": "1.0"},
    }
    path = tmp_path / "custom.pt"
    torch.save(data, path)
    loaded = load_pt_checkpoint(path)
    for name in MODEL_NAMES:
        inferred = loaded.configs[name]
        for key, value in configs[name].items():
            assert inferred[key] == value, (name, key, inferred[key], value)
    assert loaded.configs["critic"]["state_dim"] == 13
    assert loaded.configs["mmd"]["input_dim"] == 3
    # The loaded model predicts what the torch model predicts.
    module = loaded.modules["mmd"]
    x = random_inputs(module, 2, 24, seed=5)
    assert_same_outputs(
        jax_outputs(module, loaded.agents["mmd"], x), torch_outputs(models["mmd"].eval(), x), 1e-5
    )


# ----------------------------------------------------------------------------- 6. bad input


class _CodePayload:
    """Unpickling this runs ``open(marker, 'w')``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickled_code_is_refused_and_not_executed(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model_state_dicts": {}, "metadata": _CodePayload(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(BridgeError) as excinfo:
        load_pt_checkpoint(path)
    message = assert_one_line_naming(excinfo.value, path)
    assert "pickle" in message.lower() or "refused" in message.lower(), message
    assert not marker.exists()
    with pytest.raises(BridgeError):
        read_pt(path)
    assert not marker.exists()
    # The payload is real: unsafe loading would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_truncated_file_gives_one_line_error(reference_ckpt_path, tmp_path):
    data = reference_ckpt_path.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BridgeError) as excinfo:
        load_pt_checkpoint(path)
    assert_one_line_naming(excinfo.value, path)


@pytest.mark.parametrize(
    "content", [b"model_state_dicts: not a checkpoint\n" * 5, b"", b"\x80\x02}q\x00."]
)
def test_non_checkpoint_file_gives_one_line_error(tmp_path, content):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(BridgeError) as excinfo:
        load_pt_checkpoint(path)
    assert_one_line_naming(excinfo.value, path)


@pytest.mark.parametrize(
    "payload", [torch.zeros(3), {"metadata": {}}, {"model_state_dicts": {"agents": {}}}]
)
def test_wrong_structure_gives_one_line_error(tmp_path, payload):
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(BridgeError) as excinfo:
        load_pt_checkpoint(path)
    assert_one_line_naming(excinfo.value, path)


def test_missing_file_gives_one_line_error(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(BridgeError) as excinfo:
        load_pt_checkpoint(path)
    assert_one_line_naming(excinfo.value, path)


def _small_torch_state_dict(name: str) -> tuple[nn.Module, OrderedDict]:
    """The small module and a private copy of its PyTorch state dict (to break)."""
    state_dict = small_torch_state_dict(name)
    return build_module(name, SMALL[name]), OrderedDict(
        (k, v.clone()) for k, v in state_dict.items()
    )


def test_all_state_dict_problems_are_reported_at_once():
    module, state_dict = _small_torch_state_dict("mlmi")
    del state_dict["attention.q_proj.bias"]
    state_dict["attention.gate.weight"] = torch.zeros(2, 2)
    state_dict["value_head.0.weight"] = torch.zeros(5, 8)  # expected (4, 8)
    with pytest.raises(BridgeError) as excinfo:
        torch_to_flax(state_dict, module)
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in [
        "attention.q_proj.bias",
        "(32,)",
        "attention.gate.weight",
        "value_head.0.weight",
        "(4, 8)",
        "(5, 8)",
    ]:
        assert fragment in message, (fragment, message)


def test_checkpoint_problems_in_several_models_are_reported_at_once(tmp_path):
    _, mlmi = _small_torch_state_dict("mlmi")
    _, nwrqk = _small_torch_state_dict("nwrqk")
    _, mmd = _small_torch_state_dict("mmd")
    _, critic = _small_torch_state_dict("critic")
    del mlmi["output_head.3.bias"]
    critic["value_head.4.weight"] = torch.zeros(1, 3)  # expected (1, 4)
    mmd["extra_param"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    data = {
        "model_state_dicts": {
            "agents": {"mlmi": mlmi, "nwrqk": nwrqk, "mmd": mmd},
            "critic": critic,
        }
    }
    torch.save(data, path)
    with pytest.raises(BridgeError) as excinfo:
        load_pt_checkpoint(path)
    message = assert_one_line_naming(excinfo.value, path)
    for fragment in [
        "output_head.3.bias",
        "value_head.4.weight",
        "(1, 4)",
        "(1, 3)",
        "extra_param",
    ]:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_reported(small, bad, tmp_path):
    module, state_dict = _small_torch_state_dict("mmd")
    state_dict["feature_proj.weight"][3, 2] = bad
    with pytest.raises(BridgeError, match=r"feature_proj\.weight.*(NaN|Inf)"):
        torch_to_flax(state_dict, module)

    variables = small("mmd")
    kernel = np.array(variables["params"]["feature_proj"]["kernel"])
    kernel[2, 3] = bad
    params = {
        **variables["params"],
        "feature_proj": {"kernel": kernel, "bias": variables["params"]["feature_proj"]["bias"]},
    }
    broken = {**variables, "params": params}
    with pytest.raises(BridgeError, match=r"feature_proj\.weight.*(NaN|Inf)"):
        flax_to_torch(broken, module)
    # Nothing is written when the checkpoint cannot be converted.
    modules = {name: build_module(name, SMALL[name]) for name in MODEL_NAMES}
    agents = {"mlmi": small("mlmi"), "nwrqk": small("nwrqk"), "mmd": broken}
    path = tmp_path / "out.pt"
    with pytest.raises(BridgeError):
        save_pt_checkpoint(new_checkpoint(agents, small("critic"), modules), path)
    assert os.listdir(tmp_path) == []


def _small_checkpoint(small):
    modules = {name: build_module(name, SMALL[name]) for name in MODEL_NAMES}
    return new_checkpoint({n: small(n) for n in AGENTS}, small("critic"), modules)


def test_save_is_atomic(small, tmp_path, monkeypatch):
    ckpt = _small_checkpoint(small)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial checkpoint")  # the writer hands torch.save an open file
        raise OSError("No space left on device")

    target = tmp_path / "ckpt.pt"
    monkeypatch.setattr(convert.torch, "save", failing_save)
    with pytest.raises((OSError, BridgeError)):
        save_pt_checkpoint(ckpt, target)
    assert not target.exists()
    assert os.listdir(tmp_path) == []

    # An existing file is left untouched by a failed save, and replaced by a good one.
    target.write_bytes(b"previous")
    with pytest.raises((OSError, BridgeError)):
        save_pt_checkpoint(ckpt, target)
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    monkeypatch.setattr(convert.torch, "save", real_save)
    save_pt_checkpoint(ckpt, target)
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert_same_variables(load_pt_checkpoint(target).agents["mmd"], small("mmd"))
