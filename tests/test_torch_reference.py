"""Tests of the PyTorch reference modules in ``bridge.torch_reference``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge.torch_reference import (
    AGENT_CLASSES,
    AGENT_NAMES,
    CentralizedCritic,
    MMDActor,
    PositionalEncoding,
    build_reference_models,
)

MODEL_NAMES = (*AGENT_NAMES, "critic")
OUTPUT_KEYS = ("action_probs", "logits", "value", "log_prob", "entropy", "attention_weights")
ATOL = 1e-5

_SECTION_RE = re.compile(r"^##\s+(\S+)")
_DTYPES = {"float32": torch.float32, "int64": torch.int64, "float64": torch.float64}


def parse_layout(path: Path) -> dict[str, list[tuple[str, tuple[int, ...], torch.dtype]]]:
    """Parse ``state_dict_layout.txt`` into ``{model: [(key, shape, dtype), ...]}`` in order."""
    layout: dict[str, list[tuple[str, tuple[int, ...], torch.dtype]]] = {}
    current: list[tuple[str, tuple[int, ...], torch.dtype]] | None = None
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        match = _SECTION_RE.match(line)
        if match:
            current = layout.setdefault(match.group(1), [])
            continue
        if line.startswith("#"):
            continue
        key, shape_text, dtype_text = line.split("\t")
        shape = tuple(int(s) for s in re.findall(r"\d+", shape_text))
        assert current is not None, f"entry before any section: {line!r}"
        current.append((key, shape, _DTYPES[dtype_text.strip()]))
    return layout


@pytest.fixture(scope="module")
def layout(state_dict_layout_path: Path):
    return parse_layout(state_dict_layout_path)


@pytest.fixture(scope="module")
def loaded_models(reference_ckpt_path: Path) -> dict[str, torch.nn.Module]:
    ckpt = torch.load(reference_ckpt_path, weights_only=True, map_location="cpu")
    sds = ckpt["model_state_dicts"]
    models = build_reference_models()
    for name in AGENT_NAMES:
        models[name].load_state_dict(sds["agents"][name], strict=True)
    models["critic"].load_state_dict(sds["critic"], strict=True)
    for model in models.values():
        model.eval()
    return models


# ---------------------------------------------------------------------------------------------
# 1. State-dict layout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_layout_matches_spec(layout, name: str) -> None:
    expected = layout[name]
    model = build_reference_models()[name]
    actual = [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]
    assert [e[0] for e in actual] == [e[0] for e in expected], "keys or their order differ"
    assert actual == expected


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bridge_template_is_the_spec_layout(layout, name: str) -> None:
    """The template the bridge checks every state dict against (``pt_file.template_state_dict``,
    built by ``pt_file.reference_model``) is the spec's layout at the default configuration."""
    from bridge import pt_file

    template = pt_file.template_state_dict(name, pt_file.default_config(name))
    assert [(k, tuple(v.shape), v.dtype) for k, v in template.items()] == layout[name]


def test_layout_sections_are_the_four_models(layout) -> None:
    assert list(layout) == list(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_counts_match_layout_header(state_dict_layout_path: Path, name: str) -> None:
    header = re.search(
        rf"^##\s+{name}\s+\((\d+) entries, (\d+) parameters\)",
        state_dict_layout_path.read_text(),
        re.MULTILINE,
    )
    assert header is not None
    model = build_reference_models()[name]
    assert len(model.state_dict()) == int(header.group(1))
    assert sum(p.numel() for p in model.parameters()) == int(header.group(2))


def test_fresh_initialisation_values() -> None:
    models = build_reference_models({"mlmi": {"temperature_init": 0.8}})
    assert models["mlmi"].temperature.item() == pytest.approx(0.8)
    assert models["nwrqk"].temperature.item() == 1.0
    assert torch.equal(models["mmd"].volatility_adjust.data, torch.ones(1))
    bn = models["mlmi"].conv_layers[0].norm
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert bn.num_batches_tracked.item() == 0 and bn.momentum == 0.1 and bn.eps == 1e-5
    attn = models["critic"].agent_attention
    assert torch.equal(attn.in_proj_bias, torch.zeros_like(attn.in_proj_bias))


# ---------------------------------------------------------------------------------------------
# 2. Upstream checkpoint and outputs
# ---------------------------------------------------------------------------------------------


def test_checkpoint_loads_weights_only(reference_ckpt_path: Path) -> None:
    ckpt = torch.load(reference_ckpt_path, weights_only=True, map_location="cpu")
    assert set(ckpt["model_state_dicts"]["agents"]) == set(AGENT_NAMES)
    assert "critic" in ckpt["model_state_dicts"]
    assert "metadata" in ckpt


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_positional_encoding_buffer_matches_checkpoint(reference_ckpt_path: Path, name) -> None:
    ckpt = torch.load(reference_ckpt_path, weights_only=True, map_location="cpu")
    stored = ckpt["model_state_dicts"]["agents"][name]["pos_encoding.pe"]
    computed = PositionalEncoding(stored.shape[-1]).pe
    assert computed.dtype == torch.float32
    assert computed.shape == stored.shape
    # Both tables take sin and cos of a float32 angle, position x exp(...), and exp's last bit
    # differs between CPUs' vector kernels: on an Intel Xeon (AVX-512) 2% of the entries were
    # up to 2.4e-4 from the stored table, at positions in the thousands. Each side's angle is
    # then off by at most 1.5 float32 ulps of itself (half for the product, one for exp), so
    # an entry may differ by 3 eps x angle, plus 1e-6 for sin and cos themselves.
    dim = stored.shape[-1]
    freqs = np.exp(np.arange(0, dim, 2) * -(np.log(10000.0) / dim)).repeat(2)[:dim]
    angle = np.arange(stored.shape[1])[:, None] * freqs
    bound = 1e-6 + 3 * np.finfo(np.float32).eps * angle
    excess = np.abs(computed[0].numpy() - stored[0].numpy()) - bound
    row, col = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess.max() <= 0, f"pe[{row}, {col}] is {excess.max():.1e} beyond its bound"


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_agent_reproduces_reference_outputs(loaded_models, reference_io, name: str) -> None:
    model = loaded_models[name]
    state = torch.from_numpy(np.array(reference_io[f"{name}/input"]))
    with torch.no_grad():
        out = model(state, deterministic=True)
    np.testing.assert_array_equal(out["action"].numpy(), reference_io[f"{name}/action"])
    assert out["action"].dtype == torch.int64
    for key in OUTPUT_KEYS:
        expected = reference_io[f"{name}/{key}"]
        actual = out[key].numpy()
        assert actual.shape == expected.shape, key
        np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL, err_msg=f"{name}/{key}")


def test_critic_reproduces_reference_outputs(loaded_models, reference_io) -> None:
    critic = loaded_models["critic"]
    states = torch.from_numpy(np.array(reference_io["critic/input"]))
    agent_states = {n: torch.from_numpy(np.array(reference_io[f"{n}/input"])) for n in AGENT_NAMES}
    # The critic input is each agent's state averaged over the sequence, in agent order.
    np.testing.assert_allclose(
        torch.cat([agent_states[n].mean(-1) for n in AGENT_NAMES], dim=-1).numpy(),
        reference_io["critic/input"],
        rtol=0,
        atol=ATOL,
    )
    with torch.no_grad():
        out = critic(states, agent_states)
    np.testing.assert_allclose(
        out["value"].numpy(), reference_io["critic/value"], rtol=0, atol=ATOL
    )
    assert list(out["agent_values"]) == list(AGENT_NAMES)
    for n in AGENT_NAMES:
        np.testing.assert_allclose(
            out["agent_values"][n].numpy(),
            reference_io[f"critic/agent_values/{n}"],
            rtol=0,
            atol=ATOL,
        )
    with torch.no_grad():
        bare = critic(states)
    assert bare["agent_values"] == {}
    torch.testing.assert_close(bare["value"], out["value"])


def test_state_dict_round_trip(loaded_models, reference_ckpt_path: Path) -> None:
    ckpt = torch.load(reference_ckpt_path, weights_only=True, map_location="cpu")
    sds = ckpt["model_state_dicts"]
    for name in MODEL_NAMES:
        original = sds["critic"] if name == "critic" else sds["agents"][name]
        round_tripped = loaded_models[name].state_dict()
        assert list(round_tripped) == list(original)
        for key, value in original.items():
            assert torch.equal(round_tripped[key], value), f"{name}:{key}"


# ---------------------------------------------------------------------------------------------
# 3. Input rules, MMD adjustment and sampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_two_dimensional_input_is_broadcast(name: str) -> None:
    torch.manual_seed(0)
    model = AGENT_CLASSES[name]().eval()
    c, seq_len = model.input_dim, model.sequence_length
    x2 = torch.randn(5, c)
    with torch.no_grad():
        out2 = model(x2, deterministic=True)
        out1 = model(x2.unsqueeze(-1), deterministic=True)
        outb = model(x2.unsqueeze(-1).expand(-1, -1, seq_len).contiguous(), deterministic=True)
    assert out2["action"].shape == (5,)
    assert out2["action_probs"].shape == (5, 3)
    assert out2["logits"].shape == (5, 3)
    assert out2["value"].shape == (5,)
    assert out2["log_prob"].shape == (5,)
    assert out2["entropy"].shape == (5,)
    assert out2["attention_weights"].shape == (5, seq_len, seq_len)
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(out2[key], out1[key])
        torch.testing.assert_close(out2[key], outb[key])


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_other_sequence_lengths_keep_their_length(name: str) -> None:
    model = AGENT_CLASSES[name]().eval()
    with torch.no_grad():
        out = model(torch.randn(2, model.input_dim, 7))
    assert out["attention_weights"].shape == (2, 7, 7)
    assert out["action"].shape == (2,)
    assert torch.all((out["action"] >= 0) & (out["action"] < 3))


def test_temperature_is_clamped_at_0_1() -> None:
    torch.manual_seed(1)
    model = AGENT_CLASSES["mlmi"](temperature_init=0.01).eval()
    x = torch.randn(3, 4, 48)
    with torch.no_grad():
        out = model(x, deterministic=True)
    expected = torch.softmax(out["logits"] / 0.1, dim=-1)
    torch.testing.assert_close(out["action_probs"], expected)


def test_mmd_distribution_uses_adjusted_probs() -> None:
    torch.manual_seed(2)
    model = MMDActor().eval()
    with torch.no_grad():
        model.volatility_adjust.fill_(0.7)
        model.temperature.fill_(0.6)
        x = torch.randn(4, 3, 48)
        x[:, 1] = torch.tensor([0.2, 1.0, 3.0, 0.8])[:, None]
        out = model(x, deterministic=True)
    probs = out["action_probs"]
    torch.testing.assert_close(probs, torch.softmax(out["logits"] / 0.6, dim=-1))
    torch.testing.assert_close(out["action"], probs.argmax(-1))
    torch.testing.assert_close(
        out["log_prob"], torch.log(probs.gather(-1, out["action"][:, None])).squeeze(-1)
    )
    torch.testing.assert_close(out["entropy"], -(probs * probs.log()).sum(-1))


def test_stochastic_forward_samples_valid_actions() -> None:
    torch.manual_seed(3)
    model = AGENT_CLASSES["nwrqk"]().train()
    out = model(torch.randn(8, 6, 48))
    assert out["action"].shape == (8,)
    assert torch.all((out["action"] >= 0) & (out["action"] < 3))
    logp = torch.log(out["action_probs"].gather(-1, out["action"][:, None])).squeeze(-1)
    torch.testing.assert_close(out["log_prob"], logp)


def test_critic_without_layer_norm_layout() -> None:
    critic = CentralizedCritic(13, use_layer_norm=False)
    keys = list(critic.state_dict())
    assert "feature_extractor.0.weight" in keys and "feature_extractor.3.fc1.weight" in keys
    assert "value_head.4.weight" in keys and not any(k.startswith("value_head.1") for k in keys)
    out = critic(torch.randn(2, 13), {"a": None, "b": None, "c": None, "d": None})
    assert list(out["agent_values"]) == ["a", "b", "c"]
