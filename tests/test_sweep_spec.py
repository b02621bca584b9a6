"""Sweep files (marl_jax.sweep.spec): validation, --grid overrides, expansion into groups."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pydantic
import pytest

from marl_jax.config import Config, config_from_dict, config_to_dict, load_config
from marl_jax.errors import MarlJaxError
from marl_jax.hparams import HyperParams
from marl_jax.sweep.members import describe, expand, member_hparams, random_samples, seeds
from marl_jax.sweep.spec import (
    CONFIG_KEYS,
    TRACED_KEYS,
    SweepError,
    SweepSpec,
    load_sweep,
    parse_grid_override,
)

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quickstart.yaml"
SWEEPS = ROOT / "configs" / "sweeps"


@pytest.fixture(scope="module")
def base() -> Config:
    """The quickstart config with seed 5, so seed offsets show."""
    return load_config(QUICK, ["seed=5"])


@pytest.fixture
def write(tmp_path: Path):
    """Write a sweep file's text; returns its path."""

    def _write(text: str, name: str = "sweep.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


def members_of(groups):
    return [m for g in groups for m in g.members]


def leaf(cfg: Config, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------- keys


def test_traced_keys_are_seed_and_the_hyperparams_fields():
    names = [f.name for f in dataclasses.fields(HyperParams)]
    assert TRACED_KEYS == ("seed", *(f"training.{n}" for n in names))
    assert {"training.actor_lr", "training.gamma", "training.value_loss_coef"} <= set(TRACED_KEYS)
    assert all(k in CONFIG_KEYS for k in TRACED_KEYS)
    # leaves only: sections are not keys
    assert "training" not in CONFIG_KEYS and "agents.mlmi" not in CONFIG_KEYS
    assert "agents.mlmi.hidden_dims" in CONFIG_KEYS and "training.num_envs" in CONFIG_KEYS


# --------------------------------------------------------------------------- grid


def test_grid_order_count_and_seeds(base, write):
    path = write(
        "seeds: 2\ngrid:\n  training.actor_lr: [1.0e-3, 3.0e-3]\n"
        "  training.ent_coef: [0.01, 0.02, 0.03]\n"
    )
    spec = load_sweep(path)
    assert spec.population_size == 12
    groups = expand(base, spec)
    assert len(groups) == 1 and groups[0].static == {} and groups[0].config == base
    members = members_of(groups)
    assert [m.index for m in members] == list(range(12))
    expected = [
        ({"training.actor_lr": lr, "training.ent_coef": ent}, seed)
        for lr, ent in itertools.product([1e-3, 3e-3], [0.01, 0.02, 0.03])
        for seed in (5, 6)
    ]
    assert [(m.values, m.seed) for m in members] == expected
    assert seeds(members).tolist() == [5, 6] * 6
    assert describe(groups) == "1 compiled group: 12 members"


def test_member_configs_carry_the_values_and_nothing_else(base, write):
    groups = expand(
        base,
        load_sweep(write("seeds: 2\ngrid:\n  training.gamma: [0.5, 0.9]\n  env.cost_bps: [2.0]\n")),
    )
    for m in members_of(groups):
        assert m.config.seed == m.seed
        assert m.config.training.gamma == m.values["training.gamma"]
        assert m.config.env.cost_bps == 2.0 == m.values["env.cost_bps"]
        d = config_to_dict(m.config)
        d["seed"], d["training"]["gamma"], d["env"]["cost_bps"] = 5, 0.99, 1.0
        want = config_to_dict(base)
        want["training"]["gamma"] = 0.99
        assert d == want
    assert [m.values["training.gamma"] for m in members_of(groups)] == [0.5, 0.5, 0.9, 0.9]


def test_member_hparams_matches_the_member_configs(base, write):
    members = members_of(
        expand(base, load_sweep(write("grid:\n  training.critic_lr: [1.0e-4, 2.0e-4, 4.0e-4]\n")))
    )
    table = member_hparams(members)
    assert list(table) == [f.name for f in dataclasses.fields(HyperParams)]
    for name, column in table.items():
        assert column.dtype == np.float32 and column.shape == (3,)
        want = [getattr(m.config.training, name) for m in members]
        np.testing.assert_array_equal(column, np.asarray(want, np.float32))
    np.testing.assert_array_equal(table["critic_lr"], np.float32([1e-4, 2e-4, 4e-4]))
    assert table["gamma"].tolist() == [np.float32(base.training.gamma)] * 3


def test_static_keys_make_compiled_groups(base, write):
    # actor_lr comes first, so the product alternates num_envs: groups still collect by value
    path = write("grid:\n  training.actor_lr: [1.0e-3, 3.0e-3]\n  training.num_envs: [32, 64]\n")
    spec = load_sweep(path)
    assert spec.static_keys == ("training.num_envs",)
    assert spec.traced_keys == ("training.actor_lr",)
    groups = expand(base, spec)
    assert [g.static for g in groups] == [{"training.num_envs": 32}, {"training.num_envs": 64}]
    assert [len(g.members) for g in groups] == [2, 2]
    assert [m.index for m in members_of(groups)] == [0, 1, 2, 3]
    for g in groups:
        assert g.config.training.num_envs == g.static["training.num_envs"]
        assert g.config.training.actor_lr == base.training.actor_lr  # traced keys stay base
        assert g.config.seed == base.seed
        assert [m.values["training.actor_lr"] for m in g.members] == [1e-3, 3e-3]
        assert all(m.config.training.num_envs == g.config.training.num_envs for m in g.members)
    assert describe(groups) == (
        "2 compiled groups: training.num_envs=32 (2 members), training.num_envs=64 (2 members)"
    )


def test_list_valued_static_key(base):
    spec = load_sweep(None, ["agents.mlmi.hidden_dims=[16,8,8],[32,16,16]"])
    groups = expand(base, spec)
    assert [g.static["agents.mlmi.hidden_dims"] for g in groups] == [(16, 8, 8), (32, 16, 16)]
    assert groups[1].config.agents.mlmi.hidden_dims == (32, 16, 16)
    assert "agents.mlmi.hidden_dims=[32, 16, 16] (1 member)" in describe(groups)


def test_explicit_seeds(base, write):
    groups = expand(base, load_sweep(write("grid:\n  seed: [3, 7]\n  training.gamma: [0.5]\n")))
    members = members_of(groups)
    assert [m.seed for m in members] == [3, 7] == [m.config.seed for m in members]
    assert all(m.values == {"training.gamma": 0.5} for m in members)
    with pytest.raises(SweepError, match=r"sweep\.yaml: seeds: must be 1 when grid\.seed"):
        load_sweep(write("seeds: 2\ngrid:\n  seed: [3, 7]\n"))


def test_no_sweep_file_is_one_member_per_seed(base):
    spec = load_sweep(None)
    assert spec.model_dump() == SweepSpec().model_dump() and spec.population_size == 1
    (group,) = expand(base, spec)
    (member,) = group.members
    assert (member.index, member.seed, member.values, member.config) == (0, 5, {}, base)


# --------------------------------------------------------------------------- --grid


@pytest.mark.parametrize(
    ("item", "key", "values"),
    [
        ("training.actor_lr=1e-3,3e-3", "training.actor_lr", [1e-3, 3e-3]),
        (" training.ent_coef = 0.01, 0.1 ", "training.ent_coef", [0.01, 0.1]),
        ("training.anneal_lr=true,false", "training.anneal_lr", [True, False]),
        ("env.data_path=null,bars.csv", "env.data_path", [None, "bars.csv"]),
        (
            "agents.mmd.hidden_dims=[16,8,8],[32,16,16]",
            "agents.mmd.hidden_dims",
            [[16, 8, 8], [32, 16, 16]],
        ),
        ("training.num_envs=", "training.num_envs", []),
    ],
)
def test_parse_grid_override(item, key, values):
    assert parse_grid_override(item) == (key, values)


@pytest.mark.parametrize("item", ["training.actor_lr", "=1,2", "training.actor_lr=[1,2"])
def test_parse_grid_override_errors(item):
    with pytest.raises(SweepError) as err:
        parse_grid_override(item)
    assert str(err.value).startswith(f"--grid {item!r}: ") and "\n" not in str(err.value)


def test_grid_override_replaces_and_adds_keys(base, write):
    path = write("grid:\n  training.actor_lr: [1.0e-3, 3.0e-3]\n  training.ent_coef: [0.01]\n")
    spec = load_sweep(path, ["training.actor_lr=5e-4", "training.gamma=0.5,0.9"])
    assert spec.grid == {
        "training.actor_lr": [5e-4],
        "training.ent_coef": [0.01],
        "training.gamma": [0.5, 0.9],
    }
    assert len(members_of(expand(base, spec))) == 2
    # an override's problem names the flag as well as the file
    with pytest.raises(SweepError) as err:
        expand(base, load_sweep(path, ["training.gamma=0.5,1.5"]))
    msg = str(err.value)
    assert msg.startswith(f"{path} (--grid 'training.gamma=0.5,1.5'): grid.training.gamma: 1.5 ")
    with pytest.raises(SweepError, match=r"^--grid 'training\.gama=1': grid\.training\.gama: "):
        load_sweep(None, ["training.gama=1"])


# --------------------------------------------------------------------------- random


RANDOM = """
strategy: random
seeds: 1
grid:
  training.gamma: [0.5, 0.9]
random:
  training.actor_lr: {log_uniform: [1.0e-4, 1.0e-2]}
  training.ent_coef: {uniform: [0.0, 0.05]}
  training.clip_eps: {choice: [0.1, 0.2, 0.3]}
samples: 50
sample_seed: 3
"""


def test_random_sampling_is_reproducible_and_in_bounds(base, write):
    spec = load_sweep(write(RANDOM))
    draws = random_samples(spec)
    assert draws == random_samples(load_sweep(write(RANDOM, "again.yaml")))
    other = random_samples(load_sweep(write(RANDOM.replace("sample_seed: 3", "sample_seed: 4"))))
    assert draws != other
    assert len(draws) == 50
    lr = np.array([d["training.actor_lr"] for d in draws])
    ent = np.array([d["training.ent_coef"] for d in draws])
    assert lr.min() >= 1e-4 and lr.max() <= 1e-2 and len(set(lr.tolist())) == 50
    assert ent.min() >= 0 and ent.max() <= 0.05 and len(set(ent.tolist())) == 50
    clip = [d["training.clip_eps"] for d in draws]
    assert set(clip) == {0.1, 0.2, 0.3}
    assert all(type(v) is float for v in [*lr.tolist(), *ent.tolist(), *clip])

    # grid x samples x seeds: every grid point takes the same draws, in draw order
    members = members_of(expand(base, spec))
    assert len(members) == 2 * 50 == spec.population_size
    for i, m in enumerate(members):
        point, draw = divmod(i, 50)
        assert m.values == {"training.gamma": [0.5, 0.9][point], **draws[draw]}
        assert m.config.training.actor_lr == draws[draw]["training.actor_lr"]
        assert m.config.training.clip_eps == draws[draw]["training.clip_eps"]


def test_appending_a_random_key_keeps_the_earlier_draws(write):
    first = random_samples(load_sweep(write(RANDOM)))
    more = RANDOM.replace("samples:", "  training.gae_lambda: {uniform: [0.8, 1.0]}\nsamples:")
    second = random_samples(load_sweep(write(more, "more.yaml")))
    assert [{k: d[k] for k in first[0]} for d in second] == first
    assert all(0.8 <= d["training.gae_lambda"] <= 1.0 for d in second)


def test_log_uniform_samples_in_log_space(write):
    path = write(
        "strategy: random\nrandom:\n  training.actor_lr: {log_uniform: [1.0e-4, 1.0]}\n"
        "samples: 4000\n"
    )
    lr = np.array([d["training.actor_lr"] for d in random_samples(load_sweep(path))])
    # in log space each decade holds a quarter of the draws; a linear draw puts 99% in the last
    decades = np.histogram(np.log10(lr), bins=[-4, -3, -2, -1, 0])[0] / len(lr)
    np.testing.assert_allclose(decades, 0.25, atol=0.04)
    assert lr.min() >= 1e-4 and lr.max() <= 1.0


def test_choice_over_a_static_key_groups_by_the_drawn_value(base, write):
    path = write(
        "strategy: random\nrandom:\n  training.num_envs: {choice: [32, 64]}\n"
        "  training.actor_lr: {uniform: [1.0e-4, 1.0e-3]}\nsamples: 10\n"
    )
    spec = load_sweep(path)
    draws = random_samples(spec)
    groups = expand(base, spec)
    assert {g.static["training.num_envs"] for g in groups} == {32, 64}
    assert groups[0].static["training.num_envs"] == draws[0]["training.num_envs"]
    for g in groups:
        assert all(m.config.training.num_envs == g.static["training.num_envs"] for m in g.members)
        want = [
            d["training.actor_lr"]
            for d in draws
            if d["training.num_envs"] == g.config.training.num_envs
        ]
        assert [m.values["training.actor_lr"] for m in g.members] == want
    assert sorted(m.index for m in members_of(groups)) == list(range(10))
    assert [m.index for m in members_of(groups)] == list(range(10))


# --------------------------------------------------------------------------- pbt


def test_pbt_defaults_and_perturbed_keys(base, write):
    spec = load_sweep(
        write(
            "strategy: pbt\ngrid:\n  training.num_envs: [32, 64]\n  training.gamma: [0.5]\n"
            "random:\n  training.actor_lr: {log_uniform: [1.0e-4, 1.0e-3]}\nsamples: 3\n"
        )
    )
    assert spec.pbt is not None
    assert (spec.pbt.interval, spec.pbt.quantile, spec.pbt.resample_prob) == (10, 0.25, 0.25)
    assert (spec.pbt.perturb, spec.pbt.metric, spec.pbt.mode) == (
        (0.8, 1.25),
        "average_reward",
        "max",
    )
    assert spec.perturbed_keys == ("training.gamma", "training.actor_lr")
    groups = expand(base, spec)  # a static grid key is allowed: it makes groups
    assert [len(g.members) for g in groups] == [3, 3]


BAD_PBT = [  # each behind "strategy: pbt"
    (
        "random:\n  training.num_envs: {choice: [32, 64]}\n"
        "  training.actor_lr: {uniform: [1.0e-4, 1.0e-3]}\nsamples: 2\n",
        "random.training.num_envs",
        "sweep it under grid",
    ),
    ("grid:\n  training.num_envs: [32, 64]\n", "strategy", "to perturb"),
    (
        "grid:\n  training.gamma: [0.5]\npbt:\n  metric: reward\n",
        "pbt.metric",
        "use one of: average_reward, episode_log_return, loss",
    ),
    ("grid:\n  training.gamma: [0.5]\npbt:\n  quantile: 0.75\n", "pbt.quantile", "(0, 0.5]"),
    ("grid:\n  training.gamma: [0.5]\npbt:\n  perturb: [0.8]\n", "pbt.perturb", "[low, high]"),
    ("grid:\n  training.gamma: [0.5]\npbt:\n  perturb: [0, 1.2]\n", "pbt.perturb", "> 0"),
    ("grid:\n  training.gamma: [0.5]\npbt:\n  mode: up\n", "pbt.mode", "'max' or 'min'"),
]


def test_shipped_sweeps(write):
    quick = load_config(QUICK)
    spec = load_sweep(SWEEPS / "quickstart.yaml")
    groups = expand(quick, spec)
    assert (spec.strategy, spec.seeds, len(groups)) == ("grid", 2, 1)
    assert spec.grid == {"training.actor_lr": [1e-3, 3e-3], "training.ent_coef": [0.01, 0.03]}
    assert len(groups[0].members) == 8 and spec.static_keys == ()

    spec = load_sweep(SWEEPS / "pbt.yaml")
    assert spec.strategy == "pbt" and spec.pbt is not None and spec.pbt.interval == 10
    (group,) = expand(quick, spec)
    assert len(group.members) == 8 and {m.seed for m in group.members} == {quick.seed}
    lr = member_hparams(group.members)["actor_lr"]
    assert lr.min() >= np.float32(3e-4) and lr.max() <= np.float32(3e-3)


# --------------------------------------------------------------------------- bad files

BAD = [
    # (file text, key the message names, a fragment of the message)
    (
        "grid:\n  training.actor_l: [1.0e-3]\n",
        "grid.training.actor_l",
        "unknown config key; did you mean training.actor_lr?",
    ),
    ("grid:\n  actor_lr: [1.0e-3]\n", "grid.actor_lr", "did you mean training.actor_lr?"),
    ("grid:\n  training: [1]\n", "grid.training", "is a config section"),
    ("grid:\n  training.actor_lr: []\n", "grid.training.actor_lr", "needs at least one value"),
    ("grid:\n  training.actor_lr: 1.0e-3\n", "grid.training.actor_lr", "write [0.001]"),
    (
        "strategy: random\nrandom:\n  training.actor_lr: {normal: [0, 1]}\nsamples: 2\n",
        "random.training.actor_lr.normal",
        "unknown key; use one of: uniform, log_uniform, choice",
    ),
    (
        "strategy: random\nrandom:\n  training.actor_lr: {log_uniform: [0, 1.0e-3]}\nsamples: 2\n",
        "random.training.actor_lr.log_uniform",
        "low must be > 0",
    ),
    (
        "strategy: random\nrandom:\n  training.ent_coef: {uniform: [0.03, 0.01]}\nsamples: 2\n",
        "random.training.ent_coef.uniform",
        "low must be below high",
    ),
    (
        "strategy: random\nrandom:\n  training.ent_coef: {uniform: [0.01]}\nsamples: 2\n",
        "random.training.ent_coef.uniform",
        "expected [low, high]",
    ),
    (
        "strategy: random\nrandom:\n  training.ent_coef: {uniform: [0, 1], choice: [1]}\n"
        "samples: 2\n",
        "random.training.ent_coef",
        "exactly one distribution",
    ),
    (
        "strategy: random\nrandom:\n  training.ent_coef: [0.01, 0.03]\nsamples: 2\n",
        "random.training.ent_coef",
        "expected a distribution",
    ),
    (
        "strategy: random\nrandom:\n  training.num_envs: {uniform: [32, 64]}\nsamples: 2\n",
        "random.training.num_envs",
        "use {choice: [...]}",
    ),
    (
        "strategy: random\nrandom:\n  training.ent_coef: {uniform: [0.01, 0.03]}\n",
        "samples",
        "missing",
    ),
    ("samples: 3\n", "samples", "only used with random keys"),
    (
        "strategy: random\nrandom:\n  training.ent_coef: {uniform: [0.01, 0.03]}\nsamples: 0\n",
        "samples",
        "must be at least 1, got 0",
    ),
    ("strategy: random\n", "random", "strategy random needs keys to sample"),
    (
        "random:\n  training.ent_coef: {uniform: [0.01, 0.03]}\nsamples: 2\n",
        "random",
        "strategy grid does not sample",
    ),
    (
        "strategy: random\ngrid:\n  training.ent_coef: [0.01]\n"
        "random:\n  training.ent_coef: {uniform: [0.01, 0.03]}\nsamples: 2\n",
        "grid.training.ent_coef",
        "is also a random key",
    ),
    ("grid:\n  training.gamma: [0.9, 1.5]\n", "grid.training.gamma", "must be in [0, 1], got 1.5"),
    (
        "strategy: random\nrandom:\n  training.gamma: {uniform: [0.9, 1.5]}\nsamples: 2\n",
        "random.training.gamma",
        "must be in [0, 1], got 1.5",
    ),
    ("grid:\n  training.num_envs: [32, 1.5]\n", "grid.training.num_envs", "expected an integer"),
    ("seeds: 0\n", "seeds", "must be at least 1, got 0"),
    ("seeds: two\n", "seeds", "expected an integer, got two"),
    ("strategy: bayes\n", "strategy", "'grid', 'random' or 'pbt'"),
    ("sample: 3\n", "sample", "unknown key; use one of: seeds, strategy, grid"),
    ("pbt:\n  interval: 5\n", "pbt", "only used with strategy pbt"),
]


BAD += [("strategy: pbt\n" + text, key, fragment) for text, key, fragment in BAD_PBT]


@pytest.mark.parametrize(
    ("text", "key", "fragment"), BAD, ids=[c[1] + ":" + c[2][:24] for c in BAD]
)
def test_bad_sweep_files(base, write, text, key, fragment):
    path = write(text)
    with pytest.raises(SweepError) as err:
        expand(base, load_sweep(path))
    msg = str(err.value)
    assert isinstance(err.value, MarlJaxError) and "\n" not in msg
    assert msg.startswith(f"{path}: {key}: "), msg
    assert fragment in msg, msg


def test_an_invalid_combination_names_its_values(base, write):
    # each value is fine alone; 31 envs x 16 steps = 496 transitions do not split in 3
    path = write("grid:\n  training.num_envs: [32, 31]\n  training.num_minibatches: [2]\n")
    assert len(members_of(expand(base, load_sweep(path)))) == 2
    path = write("grid:\n  training.num_envs: [32, 31]\n  training.num_minibatches: [4, 3]\n")
    with pytest.raises(SweepError) as err:
        expand(base, load_sweep(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: training.num_envs=32, training.num_minibatches=3, seed=5: "), (
        msg
    )
    assert "not divisible by 3" in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("grid: [1, 2\n", "not valid YAML at line"),
        ("- 1\n- 2\n", "the top level must be a mapping"),
    ],
)
def test_unreadable_sweep_files(write, text, fragment):
    path = write(text)
    with pytest.raises(SweepError, match=rf"^{path}: .*{fragment}"):
        load_sweep(path)


def test_missing_sweep_file(tmp_path):
    with pytest.raises(SweepError, match="sweep file not found; check the --sweep path"):
        load_sweep(tmp_path / "nope.yaml")


def test_specs_and_members_are_frozen(base):
    spec = load_sweep(None, ["training.gamma=0.5"])
    with pytest.raises(pydantic.ValidationError):
        spec.seeds = 3  # type: ignore[misc]
    (group,) = expand(base, spec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        group.members[0].seed = 1  # type: ignore[misc]
    assert math.isclose(group.members[0].config.training.gamma, 0.5)


def test_expansion_leaves_the_base_alone(base):
    """The base config is not modified by expansion."""
    before = config_to_dict(base)
    expand(base, load_sweep(None, ["training.num_envs=32", "training.gamma=0.5"]))
    assert config_to_dict(base) == before
    assert config_from_dict(before) == base
