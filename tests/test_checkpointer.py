"""Tests for marl_jax.run.checkpointer: exact round trips, retention, atomicity."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marl_jax.run.checkpointer import TrainCheckpointer


def make_state(seed: int = 0):
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    return {
        "params": {
            "dense": {
                "kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
                "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
            },
            "temperature": jnp.float32(0.8),
        },
        "batch_stats": {"mean": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
        "rng": jax.random.key_data(jax.random.split(key)[0]),  # uint32 key data
        "counters": {"update": jnp.int32(17), "env_steps": jnp.int32(1 << 20)},
        "env": {
            "done": jnp.asarray(rng.random(8) < 0.5),
            "bar": jnp.asarray(rng.integers(0, 1000, size=8), jnp.int32),
            "ties": jnp.array([np.nan, np.inf, -0.0, 1e-45], jnp.float32),
        },
    }


def assert_bit_exact(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_roundtrip_bit_exact(tmp_path):
    state = make_state()
    assert state["rng"].dtype == jnp.uint32
    metrics = {"average_reward": np.float32(0.125), "loss": jnp.float32(2.5), "update": 3}
    with TrainCheckpointer(tmp_path / "ckpt") as ck:
        assert ck.save(3, state, metrics=metrics)
        ck.wait_until_finished()
        assert ck.latest_step() == 3
        # concrete target
        got, m = ck.restore(3, target=make_state(seed=1))
        assert_bit_exact(got, state)
        assert m == {"average_reward": 0.125, "loss": 2.5, "update": 3}
        # abstract target, latest step by default
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        got2, *_ = ck.restore(target=abstract)
        assert_bit_exact(got2, state)
        # no target at all
        got3, *_ = ck.restore()
        assert_bit_exact(got3, state)


def test_typed_prng_key_and_empty_metrics(tmp_path):
    state = {"key": jax.random.key(3), "w": jnp.ones(2, jnp.float32)}
    with TrainCheckpointer(tmp_path, async_save=False) as ck:
        ck.save(0, state, metrics={})
        got, metrics = ck.restore(0, target={"key": jax.random.key(0), "w": jnp.zeros(2)})
        assert metrics == {}
        assert_bit_exact(jax.random.key_data(got["key"]), jax.random.key_data(state["key"]))


def test_retention_latest_and_best(tmp_path):
    rewards = [0.1, 0.9, 0.3, 0.2, 0.5, 0.4, 0.6, 0.0]  # best is step 1
    with TrainCheckpointer(tmp_path, max_to_keep=5) as ck:
        for step, r in enumerate(rewards):
            ck.save(step, make_state(step), metrics={"average_reward": r})
        ck.wait_until_finished()
        assert ck.all_steps() == [1, 3, 4, 5, 6, 7]
        assert ck.best_step() == 1 and ck.latest_step() == 7
        got, m = ck.restore(ck.best_step(), target=make_state())
        assert_bit_exact(got, make_state(1))
        assert m["average_reward"] == 0.9
    on_disk = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
    assert on_disk == [1, 3, 4, 5, 6, 7]
    # a new manager over the same folder sees the same thing (resume)
    with TrainCheckpointer(tmp_path, max_to_keep=5) as ck2:
        assert ck2.latest_step() == 7 and ck2.best_step() == 1
        # a later, better step takes over as best; the old best falls out of the window
        ck2.save(8, make_state(8), metrics={"average_reward": 2.0})
        ck2.wait_until_finished()
        assert ck2.best_step() == 8
        assert ck2.all_steps() == [4, 5, 6, 7, 8]


def test_nan_or_missing_metric_never_best(tmp_path):
    with TrainCheckpointer(tmp_path, max_to_keep=2, async_save=False) as ck:
        ck.save(0, make_state(), metrics={"average_reward": -5.0})
        ck.save(1, make_state(), metrics={"average_reward": float("nan")})
        ck.save(2, make_state(), metrics={"loss": 1.0})
        ck.save(3, make_state(), metrics={"average_reward": -9.0})
        assert ck.best_step() == 0
        assert ck.all_steps() == [0, 2, 3]


def test_every_given_step_is_saved_and_no_best_without_a_metric(tmp_path):
    """The caller picks the steps; ``best_metric=None`` keeps the latest N and no best."""
    with TrainCheckpointer(tmp_path, max_to_keep=2, best_metric=None, async_save=False) as ck:
        for step, r in zip((3, 5, 6, 11), (9.0, 0.0, 0.0, 0.0), strict=True):
            assert ck.save(step, make_state(step), metrics={"average_reward": r})
        assert ck.best_step() is None
        assert ck.all_steps() == [6, 11]  # step 3, the highest reward, is not kept
        got, m = ck.restore(6, target=make_state())
        assert_bit_exact(got, make_state(6))
        assert m == {"average_reward": 0.0}


def test_half_written_checkpoint_is_ignored(tmp_path):
    state = make_state()
    with TrainCheckpointer(tmp_path, async_save=False) as ck:
        ck.save(1, state, metrics={"average_reward": 0.0})
        # A crash mid-write leaves Orbax's temporary folder (here: a partial copy of a
        # real step, with the items but not finalised) ...
        tmp = tmp_path / "2.orbax-checkpoint-tmp-1234567890"
        shutil.copytree(tmp_path / "1", tmp)
        (tmp / "commit_success.txt").unlink(missing_ok=True)
        shutil.rmtree(tmp / "meta")
        assert ck.latest_step() == 1  # the running manager does not see it
    # ... and a manager opened afterwards (a resumed run) neither lists nor restores it.
    with TrainCheckpointer(tmp_path, async_save=False) as ck2:
        assert ck2.latest_step() == 1 and ck2.all_steps() == [1]
        got, *_ = ck2.restore(target=state)
        assert_bit_exact(got, state)
        with pytest.raises(FileNotFoundError):
            ck2.restore(2)
        # the resumed run can write step 2 for real
        ck2.save(2, state, metrics={"average_reward": 1.0})
        assert ck2.latest_step() == 2
    assert not tmp.exists()


def test_restore_empty_dir_raises(tmp_path):
    with TrainCheckpointer(tmp_path) as ck:
        assert ck.latest_step() is None and ck.best_step() is None
        with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
            ck.restore()
