"""Tests for marl_jax.ppo against plain-Python references and hand-worked numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marl_jax import ppo

jax.config.update("jax_default_matmul_precision", "highest")


# ---------------------------------------------------------------- GAE


def gae_reference(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Plain-Python loop, one environment at a time."""
    T, N = rewards.shape
    adv = np.zeros((T, N), np.float64)
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            done = bool(terminated[t, n]) or bool(truncated[t, n])
            bootstrap = 0.0 if terminated[t, n] else next_values[t, n]
            delta = rewards[t, n] + gamma * bootstrap - values[t, n]
            running = delta + gamma * lam * (0.0 if done else running)
            adv[t, n] = running
    return adv, adv + values


def random_rollout(rng, T, N):
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    # next_values[t] = values[t + 1] inside an episode; a fresh value across ends and at T-1.
    next_values = np.concatenate([values[1:], rng.normal(size=(1, N))]).astype(np.float32)
    terminated = rng.random((T, N)) < 0.1
    truncated = (rng.random((T, N)) < 0.1) & ~terminated
    ends = terminated | truncated
    next_values[ends] = rng.normal(size=ends.sum()).astype(np.float32)
    return rewards, values, next_values, terminated, truncated


@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (16, 5), (33, 8)])
@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 1.0), (0.5, 0.0)])
def test_gae_matches_python_loop(shape, gamma, lam):
    rng = np.random.default_rng(hash((shape, gamma, lam)) % 2**32)
    data = random_rollout(rng, *shape)
    adv, ret = jax.jit(ppo.gae)(*data, gamma, lam)
    adv_ref, ret_ref = gae_reference(*data, gamma, lam)
    assert adv.shape == shape and ret.shape == shape
    np.testing.assert_allclose(np.asarray(adv), adv_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), ret_ref, rtol=1e-5, atol=1e-5)


def test_gae_hand_worked():
    # One env, T=3, gamma=0.5, lam=0.5; step 1 truncated, step 2 terminated.
    r = np.array([[1.0], [2.0], [3.0]], np.float32)
    v = np.array([[0.5], [1.0], [2.0]], np.float32)
    nv = np.array([[1.0], [4.0], [9.0]], np.float32)  # nv[0] = v[1]; nv[1] pre-reset value
    term = np.array([[0], [0], [1]], bool)
    trunc = np.array([[0], [1], [0]], bool)
    # t=2 terminated: delta = 3 - 2 = 1, adv = 1
    # t=1 truncated: delta = 2 + 0.5*4 - 1 = 3, recursion cut, adv = 3
    # t=0: delta = 1 + 0.5*1 - 0.5 = 1, adv = 1 + 0.25*3 = 1.75
    adv, ret = ppo.gae(r, v, nv, term, trunc, 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(adv)[:, 0], [1.75, 3.0, 1.0])
    np.testing.assert_allclose(np.asarray(ret)[:, 0], [2.25, 4.0, 3.0])


def test_gae_vmap_over_seeds_and_traced_gamma():
    rng = np.random.default_rng(0)
    batch = [random_rollout(rng, 12, 4) for _ in range(3)]
    stacked = [np.stack(x) for x in zip(*batch, strict=True)]
    gammas = jnp.array([0.9, 0.95, 0.99])
    adv, ret = jax.jit(jax.vmap(ppo.gae, in_axes=(0, 0, 0, 0, 0, 0, None)))(*stacked, gammas, 0.9)
    for i, data in enumerate(batch):
        a_ref, r_ref = gae_reference(*data, float(gammas[i]), 0.9)
        np.testing.assert_allclose(np.asarray(adv[i]), a_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(ret[i]), r_ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- PPO surrogate


def test_ppo_clip_loss_hand_worked():
    # ratios: exp(log 1.5) = 1.5, exp(log 0.5) = 0.5, exp(0) = 1.0, exp(log 1.1) = 1.1
    ratio = np.array([1.5, 0.5, 1.0, 1.1])
    adv = np.array([2.0, 1.0, -3.0, -1.0])
    old = np.array([-1.0, -2.0, -0.5, -0.3])
    new = old + np.log(ratio)
    # eps = 0.2:
    # 1.5 * 2 = 3.0,   clip 1.2 * 2 = 2.4   -> min 2.4
    # 0.5 * 1 = 0.5,   clip 0.8 * 1 = 0.8   -> min 0.5
    # 1.0 * -3 = -3,   clip 1.0 * -3 = -3   -> -3
    # 1.1 * -1 = -1.1, clip 1.1 * -1 = -1.1 -> -1.1
    # loss = -(2.4 + 0.5 - 3 - 1.1) / 4 = 0.3
    loss, m = ppo.ppo_clip_loss(jnp.asarray(new), jnp.asarray(old), jnp.asarray(adv), 0.2)
    assert float(loss) == pytest.approx(0.3, abs=1e-6)
    # clipped: |0.5| > 0.2 twice -> 2 / 4
    assert float(m["clip_frac"]) == pytest.approx(0.5)
    kl = np.mean((ratio - 1) - np.log(ratio))
    assert float(m["approx_kl"]) == pytest.approx(kl, abs=1e-6)


def test_ppo_clip_loss_matches_numpy_and_jits():
    rng = np.random.default_rng(1)
    old = rng.normal(size=256).astype(np.float32)
    new = (old + 0.3 * rng.normal(size=256)).astype(np.float32)
    adv = rng.normal(size=256).astype(np.float32)
    r = np.exp(new.astype(np.float64) - old)
    ref = -np.mean(np.minimum(r * adv, np.clip(r, 0.9, 1.1) * adv))
    loss, m = jax.jit(ppo.ppo_clip_loss)(new, old, adv, 0.1)
    assert float(loss) == pytest.approx(ref, abs=1e-5)
    assert float(m["clip_frac"]) == pytest.approx(np.mean(np.abs(r - 1) > 0.1))
    # gradients exist and are finite
    g = jax.grad(lambda x: ppo.ppo_clip_loss(x, old, adv, 0.1)[0])(jnp.asarray(new))
    assert np.all(np.isfinite(np.asarray(g)))


# ---------------------------------------------------------------- value loss


def value_loss_reference(v, old, ret, eps, clipped, use_huber, delta):
    def elem(e):
        if use_huber:
            return np.where(np.abs(e) <= delta, 0.5 * e**2, delta * (np.abs(e) - 0.5 * delta))
        return 0.5 * e**2

    loss = elem(ret - v)
    if clipped:
        loss = np.maximum(loss, elem(ret - (old + np.clip(v - old, -eps, eps))))
    return loss.mean()


# values 3.0 (old 1.0), returns 5.0; values 0.0 (old 0.0), returns -4.0; eps 0.5, delta 1.0
# unclipped errors: 2, -4          -> mse 2, 8        ; huber 1.5, 3.5
# clipped preds: 1.5, 0.0; errors: 3.5, -4 -> mse 6.125, 8 ; huber 3.0, 3.5
# max (clipped): mse (6.125 + 8)/2 = 7.0625 ; huber (3 + 3.5)/2 = 3.25
# unclipped:     mse (2 + 8)/2 = 5.0        ; huber (1.5 + 3.5)/2 = 2.5
@pytest.mark.parametrize(
    "clipped,use_huber,expected",
    [(True, True, 3.25), (True, False, 7.0625), (False, True, 2.5), (False, False, 5.0)],
)
def test_value_loss_hand_worked(clipped, use_huber, expected):
    v, old, ret = jnp.array([3.0, 0.0]), jnp.array([1.0, 0.0]), jnp.array([5.0, -4.0])
    got = ppo.value_loss(v, old, ret, 0.5, clipped, use_huber, 1.0)
    assert float(got) == pytest.approx(expected)


@pytest.mark.parametrize("clipped", [True, False])
@pytest.mark.parametrize("use_huber", [True, False])
def test_value_loss_matches_numpy(clipped, use_huber):
    rng = np.random.default_rng(2)
    v = rng.normal(size=100) * 5
    old = v + rng.normal(size=100)
    ret = rng.normal(size=100) * 20
    f = jax.jit(ppo.value_loss, static_argnums=(4, 5))
    got = f(
        v.astype(np.float32),
        old.astype(np.float32),
        ret.astype(np.float32),
        0.2,
        clipped,
        use_huber,
        10.0,
    )
    ref = value_loss_reference(v, old, ret, 0.2, clipped, use_huber, 10.0)
    assert float(got) == pytest.approx(ref, rel=1e-5)


def test_huber_is_symmetric():
    e = jnp.array([-20.0, -1.0, 1.0, 20.0])
    np.testing.assert_allclose(np.asarray(ppo.huber(e, 10.0)), [150.0, 0.5, 0.5, 150.0])


def test_normalise_advantages():
    adv = jnp.array([1.0, 2.0, 3.0, 4.0])
    out = np.asarray(ppo.normalise_advantages(adv))
    # mean 2.5, population std sqrt(1.25)
    np.testing.assert_allclose(out, (np.array([1, 2, 3, 4]) - 2.5) / math.sqrt(1.25), rtol=1e-6)


# ---------------------------------------------------------------- ValueNorm


def test_valuenorm_hand_worked():
    s = ppo.valuenorm_init()
    # Before any update: mean 0, var floored at 1e-2 -> x / 0.1.
    assert float(ppo.valuenorm_normalise(s, jnp.float32(1.0))) == pytest.approx(10.0)
    # beta = 0.5, batch [1, 3]: mean 2, mean_sq 5.
    # running_mean = 1.0, running_mean_sq = 2.5, debias = 0.5
    # debiased mean 2, mean_sq 5, var 5 - 4 = 1.
    s = ppo.valuenorm_update(s, jnp.array([1.0, 3.0]), beta=0.5)
    assert float(s.running_mean) == pytest.approx(1.0)
    assert float(s.running_mean_sq) == pytest.approx(2.5)
    assert float(s.debiasing_term) == pytest.approx(0.5)
    assert float(ppo.valuenorm_normalise(s, jnp.float32(4.0))) == pytest.approx(2.0)
    # second batch [5, 7] (mean 6, mean_sq 37):
    # running_mean = 0.5 + 3 = 3.5, running_mean_sq = 1.25 + 18.5 = 19.75, debias 0.75
    # mean = 14/3, mean_sq = 79/3, var = 79/3 - 196/9 = 41/9
    s = ppo.valuenorm_update(s, jnp.array([5.0, 7.0]), beta=0.5)
    mean, var = 14 / 3, 41 / 9
    assert float(ppo.valuenorm_normalise(s, jnp.float32(6.0))) == pytest.approx(
        (6.0 - mean) / math.sqrt(var), rel=1e-6
    )
    assert float(ppo.valuenorm_denormalise(s, jnp.float32(1.0))) == pytest.approx(
        math.sqrt(var) + mean, rel=1e-6
    )


def test_valuenorm_matches_numpy_and_roundtrips():
    rng = np.random.default_rng(3)
    beta, eps = 0.99999, 1e-5
    m = msq = deb = 0.0
    s = ppo.valuenorm_init()
    upd = jax.jit(ppo.valuenorm_update)
    for _ in range(5):
        x = (rng.normal(size=(64, 4)) * 30 + 7).astype(np.float32)
        s = upd(s, x)
        m = beta * m + (1 - beta) * x.astype(np.float64).mean()
        msq = beta * msq + (1 - beta) * (x.astype(np.float64) ** 2).mean()
        deb = beta * deb + (1 - beta)
    mean = m / max(deb, eps)
    var = max(msq / max(deb, eps) - mean**2, 1e-2)
    y = np.linspace(-50, 50, 11).astype(np.float32)
    got = np.asarray(ppo.valuenorm_normalise(s, y))
    np.testing.assert_allclose(got, (y - mean) / np.sqrt(var), rtol=2e-3, atol=2e-3)
    back = np.asarray(ppo.valuenorm_denormalise(s, ppo.valuenorm_normalise(s, y)))
    np.testing.assert_allclose(back, y, rtol=1e-4, atol=1e-3)


def test_valuenorm_vmaps():
    xs = jnp.stack([jnp.array([1.0, 3.0]), jnp.array([10.0, 30.0])])
    states = jax.vmap(lambda _: ppo.valuenorm_init())(jnp.arange(2))
    out = jax.vmap(lambda s, x: ppo.valuenorm_update(s, x, beta=0.5))(states, xs)
    np.testing.assert_allclose(np.asarray(out.running_mean), [1.0, 10.0])
    np.testing.assert_allclose(np.asarray(out.debiasing_term), [0.5, 0.5])
