"""Behaviour of the Flax models in ``marl_jax.models`` on their own (no PyTorch involved).

Small configurations keep compilation fast; the default configurations are used only where the
test is about them (initialisation statistics, parameter counts).
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marl_jax.models import BatchNorm1d, CentralizedCritic, StrategicActor
from marl_jax.models.recurrences import cudnn_available
from marl_jax.models.registry import (
    MODEL_NAMES,
    abstract_variables,
    build_module,
    init_variables,
    module_config,
)

AGENTS = ("mlmi", "nwrqk", "mmd")
SMALL = {
    "mlmi": {"hidden_dims": (32, 16, 8), "conv_channels": (8, 16, 16)},
    "nwrqk": {"hidden_dims": (32, 16, 8), "conv_channels": (8, 16, 16)},
    "mmd": {"hidden_dims": (32, 16, 8), "conv_channels": (8, 16, 16)},
    "critic": {"hidden_dims": (32, 16, 8)},
}
# The usual input is (B, C, L) = (3, C, 7); sharing shapes lets the tests share compilations.
B, L = 3, 7


# ----------------------------------------------------------------------------- helpers


@functools.partial(jax.jit, static_argnames=("module", "deterministic", "train", "mutable"))
def actor_apply(
    module,
    variables,
    state,
    deterministic=True,
    train=False,
    rngs=None,
    actions=None,
    mutable=False,
):
    return module.apply(
        variables,
        state,
        deterministic=deterministic,
        train=train,
        actions=actions,
        rngs=rngs,
        mutable=mutable,
    )


@functools.partial(jax.jit, static_argnames=("module", "train"))
def critic_apply(module, variables, states, agent_states=None, train=False, rngs=None):
    return module.apply(variables, states, agent_states=agent_states, train=train, rngs=rngs)


def small_module(name: str, **overrides) -> nn.Module:
    return build_module(name, {**SMALL[name], **overrides})


def numpy_variables(module: nn.Module, seed: int = 0) -> dict:
    """Random variables of the right structure, drawn with NumPy.

    Compiling ``init`` costs seconds per model on CPU, so the behaviour tests use these;
    ``init`` itself is tested at the default configurations below. The BatchNorm statistics
    are non-trivial on purpose.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        shape, dtype = leaf.shape, leaf.dtype
        if name == "pe":
            return jnp.asarray(_expected_pe(shape[-1], shape[1]))
        if name == "num_batches_tracked":
            return jnp.asarray(np.full(shape, 2), dtype)
        if name in ("temperature", "volatility_adjust"):
            value = np.ones(shape)
        elif name == "var":
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("mean", "bias") or name.startswith("bias_"):
            value = rng.uniform(-0.1, 0.1, shape)
        elif name == "scale":
            value = 1 + rng.uniform(-0.1, 0.1, shape)
        else:  # linear and conv kernels (..., in, out), recurrent (G*H, in), buffers
            fan_in = math.prod(shape[:-1]) if name == "kernel" else shape[-1]
            bound = 1 / math.sqrt(fan_in)
            value = rng.uniform(-bound, bound, shape)
        return jnp.asarray(value, dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract_variables(module))


@functools.cache
def _small(name: str) -> tuple[nn.Module, dict]:
    module = small_module(name)
    return module, numpy_variables(module, seed=AGENTS.index(name) if name in AGENTS else 3)


@pytest.fixture(scope="module")
def small():
    """``small(name)``: the small module and its random variables (computed once)."""
    return _small


def random_state(module: StrategicActor, batch: int, length: int | None, seed: int = 0):
    """A random ``(B, C, L)`` (or ``(B, C)`` when ``length`` is None) float32 state."""
    rng = np.random.default_rng(seed)
    shape = (batch, module.input_dim) if length is None else (batch, module.input_dim, length)
    return rng.normal(size=shape).astype(np.float32)


def critic_state(batch: int = B, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 13)).astype(np.float32)


def assert_outputs_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(
            np.asarray(a[key]), np.asarray(b[key]), atol=atol, rtol=0, err_msg=key
        )


def leaves_with_paths(tree) -> list[tuple[str, np.ndarray]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [("/".join(str(getattr(k, "key", k)) for k in path), np.asarray(v)) for path, v in flat]


def subtree(tree: dict, path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def replace_leaf(variables: dict, path: str, value) -> dict:
    """A copy of ``variables`` with the leaf at ``path`` (slash separated) replaced."""
    new = jax.tree.map(lambda x: x, variables)
    parts = path.split("/")
    node = new
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = jnp.asarray(value, jnp.asarray(node[parts[-1]]).dtype)
    return new


def row(tree, i: int):
    return jax.tree.map(lambda a: a[i], tree)


def row_slice(tree, start: int):
    return jax.tree.map(lambda a: np.asarray(a)[start:], tree)


# ----------------------------------------------------------------------------- jit, vmap, grad


def test_critic_jit_matches_eager(small):
    module, variables = small("critic")
    x = critic_state()
    agents = {name: x for name in AGENTS}
    eager = module.apply(variables, x, agent_states=agents)
    jitted = critic_apply(module, variables, x, agents)
    np.testing.assert_allclose(eager["value"], jitted["value"], atol=1e-6)
    assert list(eager["agent_values"]) == list(AGENTS)
    assert set(jitted["agent_values"]) == set(AGENTS)  # jit gives dict keys back sorted
    for name in AGENTS:
        np.testing.assert_allclose(
            eager["agent_values"][name], jitted["agent_values"][name], atol=1e-6
        )


def stacked_parameter_sets(variables: dict, count: int = 3) -> dict:
    """``count`` different parameter sets stacked on a leading axis (perturbed copies)."""
    rng = np.random.default_rng(0)

    def stack(leaf):
        leaf = np.asarray(leaf)
        if leaf.dtype.kind != "f":
            return jnp.asarray(np.stack([leaf] * count))
        noise = [0.05 * i * rng.normal(size=leaf.shape) for i in range(count)]
        return jnp.asarray(np.stack([leaf + n for n in noise]).astype(leaf.dtype))

    return jax.tree.map(stack, variables)


@pytest.mark.slow
def test_vmap_over_parameter_sets_and_inputs(small):
    module, variables = small("mlmi")  # integer batch statistics ride along
    stacked = stacked_parameter_sets(variables)
    x = random_state(module, B, L)

    per_params = jax.jit(jax.vmap(lambda v: module.apply(v, x, deterministic=True)))(stacked)
    for i in range(3):
        single = actor_apply(module, row(stacked, i), x)
        assert_outputs_close(row(per_params, i), single, atol=1e-5)
    assert not np.allclose(per_params["value"][0], per_params["value"][1])

    xs = np.stack([random_state(module, B, L, seed=s) for s in range(3)])
    per_input = jax.jit(jax.vmap(lambda s: module.apply(variables, s, deterministic=True)))(xs)
    for i in range(3):
        assert_outputs_close(row(per_input, i), actor_apply(module, variables, xs[i]), atol=1e-5)


def test_vmap_critic_over_parameter_sets(small):
    module, variables = small("critic")
    stacked = stacked_parameter_sets(variables)
    x = critic_state()
    values = jax.jit(jax.vmap(lambda v: module.apply(v, x)["value"]))(stacked)
    for i in range(3):
        single = critic_apply(module, row(stacked, i), x)["value"]
        np.testing.assert_allclose(values[i], single, atol=1e-6)
    assert not np.allclose(values[0], values[1])


@pytest.mark.slow
def test_grad_reaches_every_parameter(small):
    """grad of sum(log_prob of given actions) + sum(value), in train mode with batch stats.

    Every actor's gradients are compared with torch autograd in test_bridge; this checks the
    train-mode path (dropout rng, mutable BatchNorm statistics as aux output).
    """
    module, variables = small("mlmi")
    x = random_state(module, B, L)
    actions = jnp.array([2, 0, 1], jnp.int32)

    def loss(params):
        out = module.apply(
            {**variables, "params": params},
            x,
            deterministic=False,  # ignored: the given actions are used, so no 'action' rng
            train=True,
            actions=actions,
            rngs={"dropout": jax.random.key(0)},
            mutable=["batch_stats"],
        )
        out, state = out
        return out["log_prob"].sum() + out["value"].sum(), (out, state)

    grads, (out, state) = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    for path, g in leaves_with_paths(grads):
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), f"zero gradient for {path}"
    np.testing.assert_array_equal(out["action"], actions)
    probs = np.asarray(out["action_probs"], np.float64)
    np.testing.assert_allclose(out["log_prob"], np.log(probs[np.arange(B), actions]), atol=1e-5)
    counts = [v for p, v in leaves_with_paths(state) if p.endswith("num_batches_tracked")]
    assert len(counts) == 2 and all(int(c) == 2 + 1 for c in counts)


def test_critic_grad_reaches_every_parameter(small):
    module, variables = small("critic")
    x = critic_state()

    def loss(params):
        out = module.apply({**variables, "params": params}, x, agent_states={n: x for n in AGENTS})
        return out["value"].sum() + sum(v.sum() for v in out["agent_values"].values())

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for path, g in leaves_with_paths(grads):
        assert np.all(np.isfinite(g)) and np.any(g != 0), path


# ----------------------------------------------------------------------------- shapes, lengths


def expected_shapes(batch: int, length: int) -> dict:
    return {
        "action": (batch,),
        "action_probs": (batch, 3),
        "log_prob": (batch,),
        "entropy": (batch,),
        "logits": (batch, 3),
        "attention_weights": (batch, length, length),
        "value": (batch,),
    }


@pytest.mark.parametrize("name", AGENTS)
def test_any_batch_size_and_rows_are_independent(small, name):
    module, variables = small(name)
    x = random_state(module, B, L)
    out = actor_apply(module, variables, x)
    assert {k: tuple(np.shape(v)) for k, v in out.items()} == expected_shapes(B, L)
    assert out["action"].dtype == jnp.int32
    # Rows are independent: changing one row changes only that row's outputs.
    changed = x.copy()
    changed[0] = random_state(module, 1, L, seed=9)[0]
    other = actor_apply(module, variables, changed)
    assert_outputs_close(row_slice(out, 1), row_slice(other, 1), atol=1e-6)
    assert not np.allclose(out["value"][0], other["value"][0])
    # Batch size 1 is covered by the sequence-length tests (long sequences run at batch 1).


@pytest.mark.parametrize("name", AGENTS)
@pytest.mark.slow
def test_last_query_attention_gives_the_same_outputs_and_gradients(small, name):
    """``attention_weights=False`` (the trainer's rollout and loss) attends from the last
    time step only: every output but the weights, and the gradient of the loss, are those
    of the full attention; the weights are left out."""
    module, variables = small(name)
    x = random_state(module, B, L)
    actions = jnp.arange(B) % 3

    def run(params, full):
        return module.apply(
            {**variables, "params": params}, x, actions=actions, attention_weights=full
        )

    full, last = run(variables["params"], True), run(variables["params"], False)
    assert set(full) - set(last) == {"attention_weights"}
    assert_outputs_close({k: full[k] for k in last}, last, atol=1e-6)

    def loss(params, full):
        out = run(params, full)
        return out["log_prob"].sum() + out["value"].sum()

    grads = [jax.grad(loss)(variables["params"], flag) for flag in (True, False)]
    for a, b in zip(*map(jax.tree.leaves, grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length", [1, 48, 600])
@pytest.mark.parametrize("name", AGENTS)
def test_sequence_lengths(small, name, length):
    module, variables = small(name)
    batch = 1 if length == 600 else B
    x = random_state(module, batch, length)
    out = actor_apply(module, variables, x)
    effective = module.sequence_length if length == 1 else length
    assert {k: tuple(np.shape(v)) for k, v in out.items()} == expected_shapes(batch, effective)
    for key, value in out.items():
        assert np.all(np.isfinite(np.asarray(value))), key
    np.testing.assert_allclose(out["action_probs"].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["attention_weights"].sum(-1), 1.0, atol=1e-5)
    if length == 1:  # broadcast to sequence_length
        explicit = np.broadcast_to(x, (B, module.input_dim, module.sequence_length))
        assert_outputs_close(out, actor_apply(module, variables, explicit), atol=1e-6)


def test_longest_sequence_5000(small):
    """The upper end of the supported range: batch 1, the smallest configuration."""
    module, variables = small("mmd")
    out = actor_apply(module, variables, random_state(module, 1, 5000))
    assert {k: tuple(np.shape(v)) for k, v in out.items()} == expected_shapes(1, 5000)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in out.values())
    np.testing.assert_allclose(out["attention_weights"].sum(-1), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="5001"):
        jax.eval_shape(
            lambda v, s: module.apply(v, s, deterministic=True),
            variables,
            jax.ShapeDtypeStruct((1, module.input_dim, 5001), jnp.float32),
        )


def test_sequence_length_setting_controls_the_broadcast(small):
    _, variables = small("mmd")  # sequence_length has no variables
    module = small_module("mmd", sequence_length=24)
    x = random_state(module, B, 1)
    out = actor_apply(module, variables, x)
    assert out["attention_weights"].shape == (B, 24, 24)
    explicit = np.broadcast_to(x, (B, module.input_dim, 24))
    assert_outputs_close(out, actor_apply(module, variables, explicit), atol=1e-6)


@pytest.mark.parametrize("name", AGENTS)
def test_two_dimensional_input_rule(small, name):
    module, variables = small(name)
    x2 = random_state(module, B, None)
    out = actor_apply(module, variables, x2)
    explicit = np.broadcast_to(x2[:, :, None], (B, module.input_dim, module.sequence_length))
    assert_outputs_close(out, actor_apply(module, variables, explicit), atol=1e-6)
    assert out["attention_weights"].shape == (B, module.sequence_length, module.sequence_length)


@pytest.mark.parametrize("name", AGENTS)
def test_wrong_input_shapes_are_refused(small, name):
    module, variables = small(name)
    for shape in [(2, module.input_dim + 1, 7), (module.input_dim, 7), (2, module.input_dim)[:1]]:
        with pytest.raises(ValueError, match=r"expected a state of shape"):
            jax.eval_shape(
                lambda v, s: module.apply(v, s, deterministic=True),
                variables,
                jax.ShapeDtypeStruct(shape, jnp.float32),
            )


# ----------------------------------------------------------------------------- actions, rngs


@pytest.mark.parametrize("name", AGENTS)
def test_deterministic_needs_no_rng_and_takes_argmax(small, name):
    module, variables = small(name)
    x = random_state(module, B, L)
    out = actor_apply(module, variables, x, deterministic=True)  # no rngs at all
    probs = np.asarray(out["action_probs"], np.float64)
    np.testing.assert_array_equal(out["action"], probs.argmax(-1))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    picked = probs[np.arange(B), np.asarray(out["action"])]
    np.testing.assert_allclose(out["log_prob"], np.log(picked), atol=1e-5)
    np.testing.assert_allclose(out["entropy"], -(probs * np.log(probs)).sum(-1), atol=1e-5)
    with pytest.raises(flax.errors.InvalidRngError, match="action"):
        jax.eval_shape(lambda v: module.apply(v, x, deterministic=False), variables)


@pytest.mark.parametrize("name", AGENTS)
def test_temperature_scales_and_is_floored(small, name):
    module, variables = small(name)
    x = random_state(module, B, L)
    for temperature, effective in [(2.0, 2.0), (0.5, 0.5), (0.05, 0.1), (-1.0, 0.1)]:
        out = actor_apply(module, replace_leaf(variables, "params/temperature", temperature), x)
        logits = np.asarray(out["logits"], np.float64) / effective
        expected = np.exp(logits - logits.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        np.testing.assert_allclose(out["action_probs"], expected, atol=1e-6, err_msg=temperature)


def test_sampling_uses_action_rng_and_respects_probabilities(small):
    module, variables = small("mmd")
    # Skew the policy so that the check can tell the three probabilities apart.
    bias = np.asarray(subtree(variables, "params/output_head_3/bias")) + np.array([1.0, 0.0, -1.0])
    variables = replace_leaf(variables, "params/output_head_3/bias", bias)
    n = 4000
    one = random_state(module, 1, L)
    probs = np.asarray(actor_apply(module, variables, one)["action_probs"][0], np.float64)
    assert probs.min() > 0.03 and probs.max() < 0.95, probs  # the check needs spread
    x = np.repeat(one, n, axis=0)

    def sample(seed):
        return actor_apply(
            module, variables, x, deterministic=False, rngs={"action": jax.random.key(seed)}
        )

    out_a, out_a2, out_b = sample(0), sample(0), sample(1)
    np.testing.assert_array_equal(out_a["action"], out_a2["action"])
    assert np.any(np.asarray(out_a["action"]) != np.asarray(out_b["action"]))
    for out in (out_a, out_b):
        actions = np.asarray(out["action"])
        freq = np.bincount(actions, minlength=3) / n
        tolerance = 5 * np.sqrt(probs * (1 - probs) / n) + 1e-3
        assert np.all(np.abs(freq - probs) <= tolerance), (freq, probs)
        np.testing.assert_allclose(out["log_prob"], np.log(probs[actions]), atol=1e-5)
        np.testing.assert_allclose(out["action_probs"][:5], np.tile(probs, (5, 1)), atol=1e-6)


def test_train_mode_dropout_uses_dropout_rng(small):
    _, variables = small("mmd")
    module = small_module("mmd", dropout_rate=0.5)
    x = random_state(module, B, L)
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        jax.eval_shape(lambda v: module.apply(v, x, deterministic=True, train=True), variables)

    def train(seed):
        return actor_apply(module, variables, x, train=True, rngs={"dropout": jax.random.key(seed)})

    a, a2, b = train(0), train(0), train(1)
    evaluation = actor_apply(module, variables, x)
    assert_outputs_close(a, a2, atol=0)
    assert not np.allclose(a["value"], b["value"])
    assert not np.allclose(a["value"], evaluation["value"])
    # Eval mode ignores dropout_rate; dropout_rate=0 makes train mode (no BatchNorm in MMD)
    # the same as eval mode, with no rng.
    assert_outputs_close(evaluation, actor_apply(small_module("mmd"), variables, x), atol=0)
    no_dropout = small_module("mmd", dropout_rate=0.0)
    assert_outputs_close(actor_apply(no_dropout, variables, x, train=True), evaluation, 1e-6)


def test_critic_dropout_and_agent_values(small):
    _, variables = small("critic")
    module = small_module("critic", dropout_rate=0.5)
    x = critic_state(4, seed=3)
    eval_out = critic_apply(module, variables, x)
    assert eval_out["agent_values"] == {}
    assert eval_out["value"].shape == (4,)
    t1 = critic_apply(module, variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    t2 = critic_apply(module, variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(t1["value"], t2["value"])
    assert not np.allclose(t1["value"], eval_out["value"])
    two = critic_apply(module, variables, x, {"mlmi": x, "nwrqk": x})
    assert set(two["agent_values"]) == {"mlmi", "nwrqk"}
    np.testing.assert_allclose(two["value"], eval_out["value"], atol=1e-6)
    three = critic_apply(module, variables, x, {n: x for n in AGENTS})
    # One head per agent, applied to the shared features (the agent states are not used).
    assert len({float(three["agent_values"][n][0]) for n in AGENTS}) == 3
    np.testing.assert_allclose(two["agent_values"]["nwrqk"], three["agent_values"]["nwrqk"])
    other = critic_apply(module, variables, x, {n: x * 0 + 7 for n in AGENTS})
    for n in AGENTS:
        np.testing.assert_allclose(other["agent_values"][n], three["agent_values"][n])


# ----------------------------------------------------------------------------- BatchNorm


def _bn_variables(channels: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "scale": jnp.asarray(rng.uniform(0.5, 1.5, channels), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=channels), jnp.float32),
        },
        "batch_stats": {
            "mean": jnp.asarray(rng.normal(size=channels), jnp.float32),
            "var": jnp.asarray(rng.uniform(0.5, 2.0, channels), jnp.float32),
            "num_batches_tracked": jnp.asarray(3, jnp.int32),
        },
    }


def test_batchnorm_running_statistics_match_numpy():
    bn = BatchNorm1d()
    variables = _bn_variables(5)
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(4, 6, 5)).astype(np.float32)
    y, state = bn.apply(variables, x, train=True, mutable=["batch_stats"])

    xd = x.astype(np.float64)
    bs = {k: np.asarray(v, np.float64) for k, v in variables["batch_stats"].items()}
    mean, var_biased = xd.mean((0, 1)), xd.var((0, 1))
    var_unbiased = xd.var((0, 1), ddof=1)
    new = state["batch_stats"]
    np.testing.assert_allclose(new["mean"], 0.9 * bs["mean"] + 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 * bs["var"] + 0.1 * var_unbiased, rtol=1e-5)
    assert new["num_batches_tracked"].dtype == jnp.int32
    assert int(new["num_batches_tracked"]) == 4
    p = {k: np.asarray(v, np.float64) for k, v in variables["params"].items()}
    expected = (xd - mean) / np.sqrt(var_biased + 1e-5) * p["scale"] + p["bias"]
    np.testing.assert_allclose(y, expected, atol=1e-5)

    # Not mutable: same output, and nothing to update (no error either).
    y_frozen = bn.apply(variables, x, train=True)
    np.testing.assert_allclose(y_frozen, y, atol=0)
    y_frozen2, state2 = bn.apply(variables, x, train=True, mutable=["intermediates"])
    assert "batch_stats" not in state2
    np.testing.assert_allclose(y_frozen2, y, atol=0)

    # Eval mode normalises with the running statistics and never updates them.
    y_eval, state3 = bn.apply(variables, x, train=False, mutable=["batch_stats"])
    expected_eval = (xd - bs["mean"]) / np.sqrt(bs["var"] + 1e-5) * p["scale"] + p["bias"]
    np.testing.assert_allclose(y_eval, expected_eval, atol=1e-5)
    for key in ("mean", "var", "num_batches_tracked"):
        np.testing.assert_array_equal(state3["batch_stats"][key], variables["batch_stats"][key])


def test_mlmi_train_step_updates_every_batchnorm_once(small):
    _, variables = small("mlmi")
    module = small_module("mlmi", dropout_rate=0.0)
    x = random_state(module, B, L)
    out, state = actor_apply(module, variables, x, train=True, mutable=("batch_stats",))
    before = dict(leaves_with_paths(variables["batch_stats"]))
    after = dict(leaves_with_paths(state["batch_stats"]))
    assert set(before) == set(after) and len(after) == 6
    for path in after:
        if path.endswith("num_batches_tracked"):
            assert int(after[path]) == int(before[path]) + 1
        else:
            assert not np.allclose(after[path], before[path]), path
    # The batch statistics are used in the forward pass: train output differs from eval.
    assert not np.allclose(out["value"], actor_apply(module, variables, x)["value"])
    # Without mutable batch_stats the same train-mode call still works and gives the same output.
    frozen = actor_apply(module, variables, x, train=True)
    assert_outputs_close(frozen, out, atol=1e-6)


# ----------------------------------------------------------------------------- MMD volatility


def _volatility_state(module: StrategicActor, volatilities, length: int | None = 7):
    rng = np.random.default_rng(5)
    batch = len(volatilities)
    shape = (batch, module.input_dim) if length is None else (batch, module.input_dim, length)
    x = rng.normal(size=shape).astype(np.float32)
    if length is None:
        x[:, 1] = volatilities
    else:
        noise = rng.normal(scale=0.1, size=(batch, length))
        noise -= noise.mean(-1, keepdims=True)  # keep the mean of feature 1 exact
        x[:, 1, :] = np.asarray(volatilities)[:, None] + noise
    return x


@pytest.mark.parametrize("length", [7, None])
def test_mmd_volatility_factor_hits_both_clamp_edges(small, length):
    module, variables = small("mmd")
    variables = replace_leaf(variables, "params/volatility_adjust", [0.7])
    volatilities = np.array([0.2, 3.0, 1.0, 0.8, 0.01, 50.0], np.float32)
    x = _volatility_state(module, volatilities, length)

    @jax.jit
    def run(v, s):
        return module.apply(
            v, s, deterministic=True, capture_intermediates=True, mutable=["intermediates"]
        )

    out, state = run(variables, x)
    raw = np.asarray(state["intermediates"]["output_head_3"]["__call__"][0], np.float64)
    factor = np.asarray(out["logits"], np.float64) / (raw * 0.7)
    mean_vol = x[:, 1].mean(-1) if length else x[:, 1]
    expected = np.clip(1.0 / (mean_vol.astype(np.float64) + 1e-6), 0.5, 2.0)
    np.testing.assert_allclose(factor, np.repeat(expected[:, None], 3, 1), rtol=1e-4)
    # Both edges are hit: 0.2 and 0.01 -> 2.0, 3.0 and 50.0 -> 0.5, the rest inside.
    np.testing.assert_allclose(factor[[0, 4]], 2.0, rtol=1e-5)
    np.testing.assert_allclose(factor[[1, 5]], 0.5, rtol=1e-5)
    np.testing.assert_allclose(factor[3], 1.25, rtol=1e-4)
    # Probabilities and the chosen action come from the adjusted logits.
    temperature = max(float(variables["params"]["temperature"]), 0.1)
    scaled = np.asarray(out["logits"], np.float64) / temperature
    probs = np.exp(scaled - scaled.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(out["action_probs"], probs, atol=1e-6)
    np.testing.assert_array_equal(out["action"], probs.argmax(-1))
    np.testing.assert_allclose(out["log_prob"], np.log(probs.max(-1)), atol=1e-5)


# ----------------------------------------------------------------------------- initialisation


# The same configurations and seed as test_bridge's fresh weights (the compilation is shared).
FRESH_CONFIGS = {name: {"temperature_init": 0.7} if name in AGENTS else {} for name in MODEL_NAMES}
FRESH_SEED = 7


def _expected_pe(dim: int, max_len: int = 5000) -> np.ndarray:
    pe = np.zeros((max_len, dim), np.float32)
    for i in range(0, dim, 2):
        w = np.exp(np.float32(i) * np.float32(-(math.log(10000.0) / dim)), dtype=np.float32)
        angle = np.arange(max_len, dtype=np.float32) * w
        pe[:, i] = np.sin(angle)
        if i + 1 < dim:
            pe[:, i + 1] = np.cos(angle)
    return pe[None]


def _check_uniform(path: str, w: np.ndarray, bound: float) -> None:
    assert w.dtype == np.float32, path
    assert np.all(np.abs(w) <= bound * (1 + 1e-6)), f"{path}: values outside +-{bound}"
    if w.size >= 2000:
        std = bound / math.sqrt(3)
        assert abs(w.std() - std) <= 0.05 * std, f"{path}: std {w.std()} vs {std}"
        assert abs(w.mean()) <= 5 * std / math.sqrt(w.size), f"{path}: mean {w.mean()}"
        assert np.abs(w).max() >= 0.95 * bound, f"{path}: range not filled"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fresh_init_follows_pytorch_defaults(fresh_variables, name):
    module = build_module(name, FRESH_CONFIGS[name])
    variables = jax.tree.map(np.asarray, fresh_variables(module, FRESH_SEED))
    params = variables["params"]
    checked = set()
    for path, leaf in leaves_with_paths(params):
        parent, leaf_name = path.rsplit("/", 1) if "/" in path else ("", path)
        siblings = subtree(params, parent) if parent else params
        if leaf_name == "kernel" or (leaf_name == "bias" and "kernel" in siblings):
            kernel = np.asarray(siblings["kernel"])
            fan_in = kernel.shape[0] if kernel.ndim == 2 else kernel.shape[0] * kernel.shape[1]
            _check_uniform(path, leaf, 1 / math.sqrt(fan_in))
        elif re.match(r"(weight|bias)_(ih|hh)_l\d+(_reverse)?$", leaf_name):
            hidden = siblings[re.sub(r"^(weight|bias)_(ih|hh)", "weight_hh", leaf_name)].shape[1]
            _check_uniform(path, leaf, 1 / math.sqrt(hidden))
        elif leaf_name == "scale":
            np.testing.assert_array_equal(leaf, 1.0, err_msg=path)
        elif leaf_name == "bias":
            assert "scale" in siblings, path
            np.testing.assert_array_equal(leaf, 0.0, err_msg=path)
        elif leaf_name == "temperature":
            assert leaf.shape == () and leaf == np.float32(0.7)
        elif leaf_name == "volatility_adjust":
            assert name == "mmd"
            np.testing.assert_array_equal(leaf, np.ones(1, np.float32))
        else:
            pytest.fail(f"unexpected parameter {path}")
        checked.add(path)
    assert ("temperature" in checked) == (name in AGENTS)
    assert ("volatility_adjust" in checked) == (name == "mmd")

    if name == "mlmi":
        stats = leaves_with_paths(variables["batch_stats"])
        assert len(stats) == 6
        for path, leaf in stats:
            if path.endswith("mean"):
                np.testing.assert_array_equal(leaf, 0.0)
            elif path.endswith("var"):
                np.testing.assert_array_equal(leaf, 1.0)
            else:
                assert leaf.dtype == np.int32 and int(leaf) == 0, path
    else:
        assert "batch_stats" not in variables
    if name in AGENTS:
        pe = variables["buffers"]["pos_encoding"]["pe"]
        dim = build_module(name).hidden_dims[0]
        assert pe.shape == (1, 5000, dim) and pe.dtype == np.float32
        np.testing.assert_allclose(pe, _expected_pe(dim), atol=2e-6)
    else:
        attention = variables["buffers"]["agent_attention"]
        h = build_module(name).hidden_dims[-1]
        _check_uniform("in_proj_weight", attention["in_proj_weight"], math.sqrt(6 / (4 * h)))
        assert attention["in_proj_weight"].shape == (3 * h, h)
        np.testing.assert_array_equal(attention["in_proj_bias"], np.zeros(3 * h))
        np.testing.assert_array_equal(attention["out_proj_bias"], np.zeros(h))
        _check_uniform("out_proj_weight", attention["out_proj_weight"], 1 / math.sqrt(h))


def test_init_depends_on_the_key(fresh_variables):
    module = build_module("mmd", FRESH_CONFIGS["mmd"])  # compiled for the test above
    a, c = fresh_variables(module, FRESH_SEED), fresh_variables(module, FRESH_SEED + 1)
    for (path, la), (_, lc) in zip(
        leaves_with_paths(a["params"]), leaves_with_paths(c["params"]), strict=True
    ):
        if path.endswith(("kernel", "temperature")) or re.search(r"_(ih|hh)_l\d", path):
            assert np.array_equal(la, lc) == path.endswith("temperature"), path


_HEADER = re.compile(r"^##\s+(\S+)\s+\((\d+) entries, (\d+) parameters\)")


def test_parameter_counts_match_layout_headers(state_dict_layout_path: Path):
    headers = {}
    for line in state_dict_layout_path.read_text().splitlines():
        match = _HEADER.match(line)
        if match:
            headers[match.group(1)] = (int(match.group(2)), int(match.group(3)))
    assert set(headers) == set(MODEL_NAMES)
    for name in MODEL_NAMES:
        variables = abstract_variables(build_module(name))
        leaves = jax.tree.leaves(variables)
        n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
        if name == "critic":  # the unused attention is a torch Parameter, a Flax buffer
            attention = variables["buffers"]["agent_attention"]
            n_params += sum(math.prod(x.shape) for x in jax.tree.leaves(attention))
        assert (len(leaves), n_params) == headers[name], name


def test_modules_are_the_registry_classes():
    for name in MODEL_NAMES:
        module = build_module(name)
        assert isinstance(module, CentralizedCritic if name == "critic" else StrategicActor)
    with pytest.raises(ValueError, match="unknown model"):
        build_module("nope")


def test_lstm_gates_match_plain_activations_and_their_derivatives():
    from marl_jax.models.recurrences import lstm_gates

    def plain(gates):
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)

    gates = jax.random.normal(jax.random.key(0), (5, 4 * 6)) * 3.0
    weights = jax.random.normal(jax.random.key(1), (4, 5, 6))

    def score(fn, x):
        return sum((w * a).sum() for w, a in zip(weights, fn(x), strict=True))

    for ours, theirs in zip(lstm_gates(gates), plain(gates), strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    np.testing.assert_allclose(
        np.asarray(jax.grad(lambda x: score(lstm_gates, x))(gates)),
        np.asarray(jax.grad(lambda x: score(plain, x))(gates)),
        rtol=1e-6,
        atol=1e-7,
    )


@pytest.mark.parametrize(("layers", "bidirectional"), [(3, True), (2, False)])
@pytest.mark.slow
def test_cudnn_weight_packing_matches_jax_rnn_layout(layers, bidirectional):
    """The flat vector handed to cuDNN, unpacked by ``jax.experimental.rnn``'s own layout and
    run through its reference LSTM (the cuDNN semantics, on any device), gives the scan's
    output: NWRQK's 3-layer BiLSTM and MLMI's 2-layer LSTM."""
    from jax.experimental import rnn

    from marl_jax.models.components import TorchRNN
    from marl_jax.models.recurrences import pack_cudnn_lstm_weights

    hidden, in_dim, batch, length = 6, 5, 3, 7
    module = TorchRNN(hidden, layers, "lstm", bidirectional)
    x = jax.random.normal(jax.random.key(0), (batch, length, in_dim))
    params = module.init(jax.random.key(1), x)["params"]
    suffixes = ("", "_reverse") if bidirectional else ("",)
    per_layer = [
        tuple(
            params[f"{kind}_l{layer}{s}"]
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        for layer in range(layers)
        for s in suffixes
    ]
    flat = pack_cudnn_lstm_weights(per_layer)
    assert flat.shape == (rnn.get_num_params_in_lstm(in_dim, hidden, layers, bidirectional),)
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, in_dim, hidden, layers, bidirectional)
    for p, (a, b, c, d) in enumerate(per_layer):
        for ours, theirs in ((a, w_ih[p]), (b, w_hh[p]), (c, b_ih[p]), (d, b_hh[p])):
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    zeros = jnp.zeros((len(per_layer), batch, hidden))
    y_ref, _, _ = rnn.lstm_ref(
        x,
        zeros,
        zeros,
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        jnp.full((batch,), length, jnp.int32),
        in_dim,
        hidden,
        layers,
        0.0,
        bidirectional,
    )
    y_scan = module.apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(y_scan), np.asarray(y_ref), rtol=1e-5, atol=1e-6)


def test_rnn_backend_resolution_and_saved_configs_leave_it_out():
    from marl_jax.models.recurrences import resolve_rnn_backend

    expected = "cudnn" if cudnn_available() else "scan"
    assert resolve_rnn_backend("auto") == expected
    assert resolve_rnn_backend("scan") == "scan"
    with pytest.raises(ValueError, match="unknown rnn_backend 'fast'"):
        resolve_rnn_backend("fast")
    if not cudnn_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            resolve_rnn_backend("cudnn")
    module = build_module("nwrqk", {"rnn_backend": "cudnn"})
    assert module.rnn_backend == "cudnn"
    assert "rnn_backend" not in module_config(module)


@pytest.mark.skipif(
    not cudnn_available(),
    reason="cuDNN's LSTM needs a CUDA GPU (run on a GPU machine: pytest -k cudnn)",
)
@pytest.mark.parametrize("name", ["nwrqk", "mlmi"])
def test_cudnn_backend_matches_scan_on_gpu(name):
    """On a GPU at ``highest`` precision the cuDNN LSTM gives the scan's outputs and
    gradients within 1e-5 (full-size models)."""
    scan_model = build_module(name, {"rnn_backend": "scan"})
    cudnn_model = build_module(name, {"rnn_backend": "cudnn"})
    variables = init_variables(scan_model, jax.random.key(0))
    state = jax.random.normal(jax.random.key(1), (32, scan_model.input_dim, 48))
    actions = jnp.arange(32) % 3

    def loss(model, params):
        out = model.apply({**variables, "params": params}, state, actions=actions)
        return out["log_prob"].sum() + out["value"].sum(), out

    with jax.default_matmul_precision("highest"):
        (l_scan, out_scan), g_scan = jax.jit(
            jax.value_and_grad(functools.partial(loss, scan_model), has_aux=True)
        )(variables["params"])
        (l_cudnn, out_cudnn), g_cudnn = jax.jit(
            jax.value_and_grad(functools.partial(loss, cudnn_model), has_aux=True)
        )(variables["params"])
    for key in ("logits", "value", "log_prob", "attention_weights"):
        np.testing.assert_allclose(out_cudnn[key], out_scan[key], atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_cudnn), jax.tree.leaves(g_scan), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.slow
def test_recurrence_gradients_match_autodiff_of_the_same_scan(cell, reverse):
    """The hand-written backward pass of the recurrences (one scan, compact residuals,
    ``dW_hh`` as one reduction) gives plain autodiff's gradients, alone and under ``vmap``
    over parameter sets (as populations run it); the forward output is unchanged."""
    from marl_jax.models import recurrences

    custom = recurrences.RNN_RECURRENCES[cell]
    forward = {"lstm": recurrences._lstm_forward, "gru": recurrences._gru_forward}[cell]

    def plain(xp, w, b, rev):
        return forward(xp, w, b, rev, keep=False)

    hidden, length, batch, members = 5, 7, 3, 2
    gates = recurrences.RNN_GATES[cell] * hidden
    keys = jax.random.split(jax.random.key(3), 4)
    xproj = jax.random.normal(keys[0], (members, length, batch, gates))
    w_hh = jax.random.normal(keys[1], (members, gates, hidden)) * 0.5
    b_hh = jax.random.normal(keys[2], (members, gates)) * 0.5
    probe = jax.random.normal(keys[3], (length, batch, hidden))

    def loss(fn):
        return lambda xp, w, b: (fn(xp, w, b, reverse) * probe).sum()

    np.testing.assert_array_equal(
        np.asarray(custom(xproj[0], w_hh[0], b_hh[0], reverse)),
        np.asarray(plain(xproj[0], w_hh[0], b_hh[0], reverse)),
    )
    for batched in (False, True):
        grads = {}
        for name, fn in (("custom", custom), ("plain", plain)):
            grad = jax.grad(loss(fn), argnums=(0, 1, 2))
            args = (xproj, w_hh, b_hh) if batched else (xproj[0], w_hh[0], b_hh[0])
            grads[name] = jax.jit(jax.vmap(grad) if batched else grad)(*args)
        for ours, theirs in zip(grads["custom"], grads["plain"], strict=True):
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fused_bidirectional_lstm_matches_the_two_directions():
    """Both directions in one scan (a bidirectional layer at a few rows) give the outputs
    and gradients of the two separate recurrences, and the layer takes it only up to
    ``FUSED_DIRECTIONS_MAX_BATCH`` rows with the same results either side of it."""
    from marl_jax.models import components, recurrences

    hidden, length, batch = 5, 6, 2
    keys = jax.random.split(jax.random.key(4), 5)
    xf, xb = (jax.random.normal(k, (length, batch, 4 * hidden)) for k in keys[:2])
    w_hh = jax.random.normal(keys[2], (2, 4 * hidden, hidden)) * 0.5
    b_hh = jax.random.normal(keys[3], (2, 4 * hidden)) * 0.5
    probe = jax.random.normal(keys[4], (2, length, batch, hidden))

    def separate(xf, xb, w, b):
        return (
            recurrences.lstm_recurrence(xf, w[0], b[0], False),
            recurrences.lstm_recurrence(xb, w[1], b[1], True),
        )

    def loss(fn):
        return lambda *args: sum((h * p).sum() for h, p in zip(fn(*args), probe, strict=True))

    for ours, theirs in zip(
        recurrences.bidirectional_lstm_recurrence(xf, xb, w_hh, b_hh),
        separate(xf, xb, w_hh, b_hh),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6, atol=1e-7)
    grads = [
        jax.grad(loss(fn), argnums=(0, 1, 2, 3))(xf, xb, w_hh, b_hh)
        for fn in (recurrences.bidirectional_lstm_recurrence, separate)
    ]
    for ours, theirs in zip(*grads, strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-6)

    limit = recurrences.FUSED_DIRECTIONS_MAX_BATCH
    module = components.TorchRNN(hidden, 2, "lstm", bidirectional=True)
    x = jax.random.normal(keys[0], (limit + 3, length, 3))
    params = module.init(jax.random.key(5), x)
    whole = module.apply(params, x)  # the separate recurrences
    few = module.apply(params, x[:limit])  # both directions in one scan
    np.testing.assert_allclose(np.asarray(few), np.asarray(whole[:limit]), rtol=1e-5, atol=1e-6)


def test_each_weight_draws_its_own_values(fresh_variables):
    """One draw serves all of a model's random weights (``init_variables``); no two weights may
    share a slice of it: their first 32 signs (those of the shared U[0, 1) draws minus 1/2,
    whatever each weight's bound) all differ."""
    module = build_module("nwrqk", FRESH_CONFIGS["nwrqk"])  # compiled for the tests above
    params = fresh_variables(module, FRESH_SEED)["params"]
    signs = {
        path: tuple(np.asarray(leaf).ravel()[:32] > 0)
        for path, leaf in leaves_with_paths(params)
        if (path.endswith("kernel") or re.search(r"_(ih|hh)_l\d", path)) and leaf.size >= 32
    }
    assert len(signs) > 10
    assert len(set(signs.values())) == len(signs)
