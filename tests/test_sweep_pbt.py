"""PBT mechanics: the host-side plan (exploit/explore), its application to a batched TrainState,
and the lineage of copies."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny_config import TINY

from marl_jax.agents import MODEL_NAMES
from marl_jax.config import config_from_dict
from marl_jax.env import data, market
from marl_jax.hparams import HyperParams
from marl_jax.mappo import MAPPO, TrainState
from marl_jax.optimizer import learning_rates, with_learning_rates
from marl_jax.sweep.pbt import (
    Lineage,
    PBTSettings,
    apply_plan,
    host_hparams,
    plan,
    to_hyperparams,
)

P = 4
BOUNDS = {
    "actor_lr": (1e-5, 1e-3),
    "critic_lr": (1e-5, 1e-3),
    "ent_coef": (0.0, 0.05),
    "clip_eps": (0.05, 0.3),
    "gamma": (0.9, 0.999),
    "gae_lambda": (0.8, 1.0),
    "value_loss_coef": (0.1, 2.0),
}
apply = jax.jit(apply_plan)


def leaves_equal(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def member(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def set_rates(opt_state: dict, hparams: HyperParams) -> dict:
    return jax.vmap(lambda o, h: with_learning_rates(o, learning_rates(h)))(opt_state, hparams)


@pytest.fixture(scope="module")
def population() -> TrainState:
    """P members stacked from one fresh tiny state; every leaf but the bools differs between
    members, and each member's injected learning rates match its hyperparameters."""
    cfg = config_from_dict(TINY, source="tests/test_sweep_pbt.py")
    bars = data.synthetic_bars(cfg.env.synthetic_n_bars, seed=1)
    env_params = market.make_env_params(
        bars, "train", window=cfg.env.window, episode_len=cfg.env.episode_len
    )
    one = jax.jit(MAPPO(cfg, market.MARKET).init)(jax.random.key(0), env_params)

    def shifted(x, i):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return x + jnp.asarray(0.125 * (i + 1), x.dtype)
        if jnp.issubdtype(x.dtype, jnp.integer):
            return x + jnp.asarray(i + 1, x.dtype)
        return x

    state = jax.tree.map(lambda x: jnp.stack([shifted(x, i) for i in range(P)]), one)
    table = {
        "actor_lr": np.array([1e-4, 2e-4, 3e-4, 4e-4], np.float32),
        "critic_lr": np.array([5e-4, 6e-4, 7e-4, 8e-4], np.float32),
        "ent_coef": np.array([0.01, 0.02, 0.03, 0.04], np.float32),
        "gamma": np.array([0.95, 0.96, 0.97, 0.98], np.float32),
    }
    hparams = to_hyperparams(table, state.hparams)
    return state.replace(hparams=hparams, opt_state=set_rates(state.opt_state, hparams))


def table_of(state: TrainState) -> dict[str, np.ndarray]:
    return host_hparams(state.hparams, ["actor_lr", "critic_lr", "ent_coef", "gamma"])


def injected_rate(opt_state) -> np.ndarray:
    return np.asarray(optax.tree_utils.tree_get(opt_state, "learning_rate"))


# ------------------------------------------------------------------ exploit (device)


@pytest.mark.slow
def test_exploit_copies_the_source_exactly_and_keeps_the_rest_own(population):
    before = population
    p = plan(
        np.random.default_rng(0),
        np.array([4.0, 3.0, 2.0, 1.0]),
        np.ones(P, bool),
        table_of(before),
        PBTSettings(),
        BOUNDS,
    )
    assert p.source.tolist() == [0, 1, 2, 0]
    assert p.copiers.tolist() == [3]
    after = apply(before, p.source, to_hyperparams(p.hparams, before.hparams))
    src, cop, got = member(before, 0), member(before, 3), member(after, 3)

    assert not leaves_equal(cop.params, src.params)
    assert leaves_equal(got.params, src.params)
    assert not leaves_equal(cop.value_norm, src.value_norm)
    assert leaves_equal(got.value_norm, src.value_norm)
    for name in MODEL_NAMES:
        adam_src = optax.tree_utils.tree_get(src.opt_state[name], "ScaleByAdamState")
        adam_cop = optax.tree_utils.tree_get(cop.opt_state[name], "ScaleByAdamState")
        adam_got = optax.tree_utils.tree_get(got.opt_state[name], "ScaleByAdamState")
        assert not leaves_equal(adam_cop, adam_src)
        assert leaves_equal(adam_got.mu, adam_src.mu)
        assert leaves_equal(adam_got.nu, adam_src.nu)
        assert int(adam_got.count) == int(adam_src.count) != int(adam_cop.count)
    # Everything in the optimizer state but the learning rates is the source's.
    assert leaves_equal(
        with_learning_rates(got.opt_state, learning_rates(src.hparams)), src.opt_state
    )
    # The member's own: environments, key, step counter, constants.
    for field in ("env_state", "rng", "update_step", "constants"):
        assert not leaves_equal(getattr(cop, field), getattr(src, field)), field
        assert leaves_equal(getattr(got, field), getattr(cop, field)), field
    assert float(got.hparams.actor_lr) == p.hparams["actor_lr"][3]
    assert float(got.hparams.clip_eps) == float(cop.hparams.clip_eps)  # not in the table


@pytest.mark.slow
def test_injected_learning_rates_follow_the_new_hyperparameters(population):
    p = plan(
        np.random.default_rng(3),
        np.array([1.0, 5.0, 2.0, 4.0]),
        np.ones(P, bool),
        table_of(population),
        PBTSettings(resample_prob=0.0),
        BOUNDS,
    )
    assert p.copiers.tolist() == [0]
    after = apply(population, p.source, to_hyperparams(p.hparams, population.hparams))
    for name in MODEL_NAMES:
        field = "critic_lr" if name == "critic" else "actor_lr"
        rates = injected_rate(after.opt_state[name])
        np.testing.assert_array_equal(rates, p.hparams[field])
        np.testing.assert_array_equal(np.asarray(getattr(after.hparams, field)), p.hparams[field])
    # The copier's learning rate is a perturbation of its source's, not its old one.
    old = float(population.hparams.actor_lr[1])
    assert float(after.hparams.actor_lr[0]) in (np.float32(old * 0.8), np.float32(old * 1.25))


@pytest.mark.slow
def test_non_copiers_are_unchanged_bit_for_bit(population):
    scores = np.array([2.0, 9.0, 7.0, 3.0])
    p = plan(
        np.random.default_rng(1), scores, np.ones(P, bool), table_of(population), PBTSettings(), {}
    )
    assert p.copiers.tolist() == [0]
    after = apply(population, p.source, to_hyperparams(p.hparams, population.hparams))
    for i in (1, 2, 3):
        assert leaves_equal(member(after, i), member(population, i)), i
    assert not leaves_equal(member(after, 0).params, member(population, 0).params)


@pytest.mark.slow
def test_a_dead_member_is_left_as_it_was(population):
    alive = np.array([True, True, True, False])
    p = plan(
        np.random.default_rng(0),
        np.array([1.0, 2.0, 3.0, -np.inf]),
        alive,
        table_of(population),
        PBTSettings(),
        BOUNDS,
    )
    assert p.source.tolist() == [2, 1, 2, 3]
    after = apply(population, p.source, to_hyperparams(p.hparams, population.hparams))
    assert leaves_equal(member(after, 3), member(population, 3))
    assert leaves_equal(member(after, 0).params, member(population, 2).params)


# ------------------------------------------------------------------ explore (host)


def test_explore_stays_in_bounds_and_perturbs_or_resamples_the_source():
    rng0 = np.random.default_rng(123)
    size = 8
    table = {
        "actor_lr": rng0.uniform(1e-5, 1e-3, size).astype(np.float32),
        "ent_coef": rng0.uniform(0.0, 0.05, size).astype(np.float32),
        "gamma": rng0.uniform(0.9, 0.999, size).astype(np.float32),
        "value_loss_coef": rng0.uniform(0.5, 1.5, size).astype(np.float32),  # unbounded
    }
    bounds = {k: v for k, v in BOUNDS.items() if k != "value_loss_coef"}
    samplers = {
        "actor_lr": lambda r: float(10 ** r.uniform(-5, -3)),
        "ent_coef": lambda r: float(r.uniform(0.0, 0.1)),  # often above the bound: clipped
    }
    settings = PBTSettings(quantile=0.5, resample_prob=0.5)
    seen, clipped = set(), 0
    for seed in range(40):
        scores = np.random.default_rng(seed + 1000).normal(size=size)
        rng = np.random.default_rng(seed)
        p = plan(rng, scores, np.ones(size, bool), table, settings, bounds, samplers, step=seed)
        assert len(p.events) == 4
        for name, values in p.hparams.items():
            assert values.dtype == np.float32
            lo, hi = bounds.get(name, (-np.inf, np.inf))
            moved = p.copiers
            assert ((values[moved] >= lo) & (values[moved] <= hi)).all(), name
        for event in p.events:
            i, j = event["member"], event["source"]
            assert event["step"] == seed
            assert event["score"] == scores[i] and event["source_score"] == scores[j]
            for name, how in event["how"].items():
                new, src = event["hparams"][name], event["from_hparams"][name]
                assert new == p.hparams[name][i]
                assert src == table[name][j]
                seen.add((name in samplers, how))
                lo, hi = bounds.get(name, (-np.inf, np.inf))
                if how == "resample":
                    assert name in samplers
                    assert lo <= new <= hi
                    continue
                factor = {"perturb x0.8": 0.8, "perturb x1.25": 1.25}[how]
                raw = src * factor
                if lo <= raw <= hi:
                    assert new == np.float32(raw)
                else:
                    clipped += 1
                    assert new == pytest.approx(min(max(raw, lo), hi), rel=1e-6)
        # Non-copiers keep their values exactly.
        keep = p.source == np.arange(size)
        for name in table:
            np.testing.assert_array_equal(p.hparams[name][keep], table[name][keep])
    assert seen == {
        (True, "resample"),
        (True, "perturb x0.8"),
        (True, "perturb x1.25"),
        (False, "perturb x0.8"),
        (False, "perturb x1.25"),
    }
    assert clipped > 0


def test_clipping_to_a_float32_bound_stays_inside():
    table = {"x": np.array([1.0, 1.0, 0.09], np.float32)}
    for seed in range(10):
        p = plan(
            np.random.default_rng(seed),
            np.array([3.0, 2.0, 1.0]),
            np.ones(3, bool),
            table,
            PBTSettings(quantile=0.5, perturb=(1.0, 1.0)),
            {"x": (0.0, 0.1)},
        )
        assert p.hparams["x"][2] <= 0.1
        assert p.hparams["x"][2] == pytest.approx(0.1)


# ------------------------------------------------------------------ who takes part


def test_dead_members_never_source_and_never_copy():
    size = 8
    alive = np.array([True, False, True, True, True, True, False, True])
    scores = np.array([1.0, 100.0, 3.0, 4.0, np.nan, 6.0, -100.0, 8.0])
    table = {"gamma": np.linspace(0.9, 0.99, size).astype(np.float32)}
    sources = set()
    for seed in range(30):
        p = plan(
            np.random.default_rng(seed),
            scores,
            alive,
            table,
            PBTSettings(quantile=0.5),
            BOUNDS,
        )
        for dead in (1, 4, 6):  # 4 is alive but has no score
            assert p.source[dead] == dead
            assert p.hparams["gamma"][dead] == table["gamma"][dead]
        copiers = p.copiers.tolist()
        assert copiers == [0, 2]  # 5 ranked members: n = 2, the two lowest scores
        sources |= {int(p.source[i]) for i in copiers}
        assert not {e["source"] for e in p.events} & {1, 4, 6}
    assert sources == {5, 7}


@pytest.mark.parametrize(
    ("size", "dead", "quantile", "n"),
    [
        (4, [], 0.25, 1),
        (4, [2], 0.25, 1),
        (4, [0, 3], 0.5, 1),
        (8, [], 0.25, 2),
        (8, [1, 6], 0.25, 1),
        (8, [5], 0.5, 3),
        (8, [], 0.5, 4),
        (8, [0, 1, 2, 3, 4, 5], 0.25, 1),
    ],
)
def test_quantile_arithmetic(size, dead, quantile, n):
    alive = np.ones(size, bool)
    alive[dead] = False
    scores = np.random.default_rng(size * 10 + len(dead)).permutation(size).astype(float)
    ranked = [i for i in np.argsort(-scores) if alive[i]]  # best first, no ties
    table = {"gamma": np.full(size, 0.95, np.float32)}
    for seed in range(5):
        p = plan(
            np.random.default_rng(seed), scores, alive, table, PBTSettings(quantile=quantile), {}
        )
        assert p.copiers.tolist() == sorted(ranked[-n:])
        assert {int(p.source[i]) for i in p.copiers} <= set(ranked[:n])
        assert len(p.events) == n


def test_mode_and_ties():
    table = {"gamma": np.full(4, 0.95, np.float32)}
    alive = np.ones(4, bool)
    scores = np.array([4.0, 3.0, 2.0, 1.0])
    rng = np.random.default_rng
    assert plan(rng(0), scores, alive, table, PBTSettings(), {}).source.tolist() == [0, 1, 2, 0]
    by_min = plan(rng(0), scores, alive, table, PBTSettings(mode="min"), {})
    assert by_min.source.tolist() == [3, 1, 2, 3]
    # Equal scores rank by member index: the lowest index is best.
    ties = plan(rng(0), np.zeros(4), alive, table, PBTSettings(), {})
    assert ties.source.tolist() == [0, 1, 2, 0]


def test_fewer_than_two_ranked_members_change_nothing():
    table = {"gamma": np.array([0.9, 0.95, 0.99], np.float32)}
    for alive, scores in (
        ([False, True, False], [1.0, 2.0, 3.0]),
        ([False, False, False], [1.0, 2.0, 3.0]),
        ([True, True, False], [np.nan, 2.0, 3.0]),
    ):
        rng = np.random.default_rng(0)
        before = rng.bit_generator.state
        p = plan(rng, np.array(scores), np.array(alive), table, PBTSettings(quantile=0.5), {})
        assert p.source.tolist() == [0, 1, 2]
        assert p.events == []
        np.testing.assert_array_equal(p.hparams["gamma"], table["gamma"])
        assert rng.bit_generator.state == before
    single = plan(
        np.random.default_rng(0), np.ones(1), np.ones(1, bool), {"g": np.ones(1)}, PBTSettings(), {}
    )
    assert single.source.tolist() == [0] and single.events == []


def test_the_plan_is_deterministic_given_the_generator():
    size = 8
    table = {
        "actor_lr": np.geomspace(1e-5, 1e-3, size).astype(np.float32),
        "gamma": np.linspace(0.9, 0.99, size).astype(np.float32),
    }
    scores = np.random.default_rng(5).normal(size=size)
    args = (scores, np.ones(size, bool), table, PBTSettings(quantile=0.5), BOUNDS)
    samplers = {"actor_lr": lambda r: float(10 ** r.uniform(-5, -3))}

    def run(seed):
        return plan(np.random.default_rng(seed), *args, samplers, step=7)

    a, b = run(11), run(11)
    np.testing.assert_array_equal(a.source, b.source)
    for name in table:
        np.testing.assert_array_equal(a.hparams[name], b.hparams[name])
    assert json.dumps(a.events) == json.dumps(b.events)
    assert a.source.dtype == np.int32
    others = [run(seed) for seed in range(12, 20)]
    assert any(json.dumps(o.events) != json.dumps(a.events) for o in others)


def test_settings_are_checked():
    with pytest.raises(ValueError):
        PBTSettings(quantile=0.75)
    with pytest.raises(ValueError):
        PBTSettings(quantile=0.0)
    with pytest.raises(ValueError):
        PBTSettings(resample_prob=1.5)
    with pytest.raises(ValueError):
        PBTSettings(mode="median")


# ------------------------------------------------------------------ lineage


def test_lineage_records_who_copied_whom_when_and_with_what():
    table = {
        "actor_lr": np.array([1e-4, 2e-4, 3e-4, 4e-4], np.float32),
        "gamma": np.array([0.95, 0.96, 0.97, 0.98], np.float32),
    }
    alive = np.ones(4, bool)
    lineage = Lineage()
    rng = np.random.default_rng(0)
    rounds = [(10, [4.0, 3.0, 2.0, 1.0]), (20, [1.0, 4.0, 3.0, 2.0]), (30, [2.0, 1.0, 3.0, 4.0])]
    tables = [table]
    for step, scores in rounds:
        p = plan(rng, np.array(scores), alive, tables[-1], PBTSettings(), BOUNDS, step=step)
        lineage.record(p.events)
        tables.append(p.hparams)
    assert len(lineage) == 3

    (e3,) = lineage.of(3)
    assert (e3["step"], e3["member"], e3["source"]) == (10, 3, 0)
    assert (e3["score"], e3["source_score"]) == (1.0, 4.0)
    assert e3["from_hparams"] == {name: float(v[0]) for name, v in table.items()}
    assert e3["hparams"] == {name: float(v[3]) for name, v in tables[1].items()}
    (e0,) = lineage.of(0)
    assert (e0["step"], e0["source"]) == (20, 1)
    assert e0["hparams"] == {name: float(v[0]) for name, v in tables[2].items()}
    (e1,) = lineage.of(1)
    assert (e1["step"], e1["source"]) == (30, 3)
    assert e1["from_hparams"] == {name: float(v[3]) for name, v in tables[2].items()}
    assert lineage.of(2) == []

    # 1 copied 3 (step 30), which had copied 0 (step 10); 0's copy of 1 came later (step 20).
    assert lineage.ancestry(1) == [1, 3, 0]
    assert lineage.ancestry(0) == [0, 1]
    assert lineage.ancestry(3) == [3, 0]
    assert lineage.ancestry(2) == [2]

    restored = Lineage.from_json(json.loads(json.dumps(lineage.to_json())))
    assert restored.to_json() == lineage.to_json()
    assert [restored.ancestry(i) for i in range(4)] == [lineage.ancestry(i) for i in range(4)]
    restored.of(3)[0]["source"] = 99  # callers get copies
    assert restored.of(3)[0]["source"] == 0


def test_ancestry_follows_repeated_copies_in_order():
    lineage = Lineage()
    lineage.record([{"step": 1, "member": 2, "source": 0}])
    lineage.record([{"step": 2, "member": 0, "source": 1}])
    lineage.record([{"step": 3, "member": 2, "source": 1}, {"step": 3, "member": 3, "source": 0}])
    assert lineage.ancestry(2) == [2, 1]  # the latest copy counts
    assert lineage.ancestry(3) == [3, 0, 1]
    assert [e["source"] for e in lineage.of(2)] == [0, 1]
