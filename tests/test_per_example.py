"""Per-example norms, clipped gradients and DP-SGD equal vmap(grad) of single samples + clipping."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cases import cases, problem, relative_errors
from hypothesis import given, settings

import fnn
from fnn.per_example import (
    clip_factors,
    clipped_grad,
    clipped_grad_and_norms,
    dp_gradient,
    dp_noise,
    per_example_grad_norms,
)


@jax.jit
def reference(net, params, x, y, clip_norm):
    """vmap(grad) over single samples (x[i][None], y[i][None]), then explicit clipping."""
    per = jax.vmap(lambda xi, yi: jax.grad(fnn.loss_autodiff, argnums=1)(
        net, params, xi[None], yi[None]))(x, y)
    norms = jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1)
                         for g in jax.tree.leaves(per)))
    scale = jnp.where(norms > clip_norm, clip_norm / jnp.where(norms > clip_norm, norms, 1), 1)
    clipped = jax.tree.map(
        lambda g: jnp.mean(g * scale.reshape((-1,) + (1,) * (g.ndim - 1)), axis=0), per)
    return norms, clipped


ours = jax.jit(clipped_grad_and_norms)


def compare(net, batch, labels, seed, dtype):
    params, x, y = problem(seed, net, batch, dtype, labels)
    ref_norms, _ = reference(net, params, x, y, jnp.inf)
    clip = float(np.median(np.asarray(ref_norms)))  # about half the samples are clipped
    ref_norms, ref_grads = reference(net, params, x, y, clip)
    grads, norms = ours(net, params, x, y, clip)
    # absolute error where the gradient is exactly zero (softmax with one output unit)
    norm_err = float(jnp.max(jnp.abs(norms - ref_norms) / jnp.where(ref_norms > 0, ref_norms, 1)))
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params), strict=True):
        assert g.dtype == p.dtype
    return norm_err, max(relative_errors(grads, ref_grads))


@settings(max_examples=4)
@given(cases(max_hidden=4, max_width=32, max_batch=16))
def test_float64_norms_and_clipped_grad_equal_vmap_grad(case):
    with jax.enable_x64(True):
        norm_err, grad_err = compare(*case, jnp.float64)
    assert norm_err <= 1e-10 and grad_err <= 1e-10, case


@settings(max_examples=2)
@given(cases(max_hidden=4, max_width=32, max_batch=16))
def test_float32_norms_and_clipped_grad_equal_vmap_grad(case):
    norm_err, grad_err = compare(*case, jnp.float32)
    assert norm_err <= 1e-5 and grad_err <= 1e-5, case


def test_large_clip_norm_is_the_plain_gradient(x64):
    net = fnn.MLP((6, 9, 7, 4), ("tanh", "relu"))
    params, x, y = problem(1, net, 12, jnp.float64)
    clipped = jax.jit(clipped_grad)(net, params, x, y, 1e6)
    plain = jax.jit(jax.grad(fnn.loss, argnums=1), static_argnums=0)(net, params, x, y)
    assert max(relative_errors(clipped, plain)) <= 1e-13


def test_tiny_clip_norm_gives_each_sample_exactly_clip_norm(x64):
    net = fnn.MLP((6, 9, 4), "sigmoid", "sigmoid")
    params, x, y = problem(2, net, 10, jnp.float64)
    clip = 1e-3
    assert float(jnp.min(ours(net, params, x, y, clip).norms)) > 100 * clip
    one = jax.jit(jax.vmap(lambda xi, yi: clipped_grad(net, params, xi[None], yi[None], clip)))
    per_sample = one(x, y)
    norms = jnp.sqrt(sum(jnp.sum(g.reshape(10, -1) ** 2, axis=1)
                         for g in jax.tree.leaves(per_sample)))
    np.testing.assert_allclose(np.asarray(norms), clip, rtol=1e-12)
    # and the batch result is the mean of those clipped per-sample gradients
    batch = ours(net, params, x, y, clip).grads
    mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), per_sample)
    assert max(relative_errors(batch, mean)) <= 1e-12


def test_zero_gradient_sample_gives_no_nan(x64):
    """A sample fitted exactly (||g_i|| = 0) and clip_norm = 0 give finite results."""
    net = fnn.MLP((3, 5, 2), "tanh", "identity")
    params, x, y = problem(3, net, 4, jnp.float64)
    # Fitted exactly on every backend: with x_0 = 0 and b[1] = 0 the sample's output is b[2]
    # with no rounding at all (y = forward(x_0) computed apart need not be bitwise what the
    # batched program computes: on a GPU it differed by 5.6e-16).
    params = (dict(params[0], b=jnp.zeros_like(params[0]["b"])), params[1])
    x, y = x.at[0].set(0.0), y.at[0].set(params[1]["b"])
    norms = ours(net, params, x, y, 1.0).norms
    assert float(norms[0]) == 0.0 and bool(jnp.all(norms[1:] > 0))
    for clip in (0.0, 1e-3, 1e3):
        g = ours(net, params, x, y, clip).grads
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(g))
        if clip == 0.0:
            assert all(not np.any(leaf) for leaf in jax.tree.leaves(g))
    # the clip factor's own derivative is finite at a zero norm, too
    d = jax.grad(lambda n: jnp.sum(clip_factors(n, 1.0)))(jnp.array([0.0, 2.0]))
    assert bool(jnp.all(jnp.isfinite(d))) and float(d[1]) == -0.25


def test_norms_single_sample_without_batch_axis(x64):
    net = fnn.MLP((5, 4, 3))
    params, x, y = problem(4, net, 1, jnp.float64)
    norms = jax.jit(per_example_grad_norms)
    np.testing.assert_allclose(norms(net, params, x, y), ours(net, params, x, y, 1.0).norms,
                               rtol=1e-15)
    assert norms(net, params, x[0], y[0]).shape == (1,)
    np.testing.assert_array_equal(norms(net, params, x[0], y[0]), norms(net, params, x, y))


def test_dp_noise_has_the_documented_std_and_is_deterministic():
    net = fnn.MLP((64, 64, 10))
    params, x, y = problem(5, net, 16)
    clip, sigma, key = 0.5, 1.3, jax.random.key(42)
    dp = jax.jit(dp_gradient)
    noisy = dp(net, params, x, y, clip, sigma, key)
    clean = dp(net, params, x, y, clip, 0.0, key)  # same compiled function, no noise
    noise = np.concatenate([np.ravel(np.asarray(a, np.float64) - np.asarray(b, np.float64))
                            for a, b in zip(jax.tree.leaves(noisy), jax.tree.leaves(clean),
                                            strict=True)])
    expected = sigma * clip / 16
    # 4810 draws: the sample std is within ~1% of the truth (one standard error); the key is
    # fixed, so the test is deterministic and the 10% band is ten standard errors wide.
    assert noise.size == 64 * 64 + 64 + 10 * 64 + 10
    assert abs(noise.std() / expected - 1) < 0.1
    assert abs(noise.mean()) < 5 * expected / np.sqrt(noise.size)
    chex.assert_trees_all_equal(noisy, dp(net, params, x, y, clip, sigma, key))
    other = dp(net, params, x, y, clip, sigma, jax.random.key(43))
    assert not np.array_equal(np.asarray(other[0]["W"]), np.asarray(noisy[0]["W"]))
    # noise has the params' structure and dtypes
    n = dp_noise(key, params, 1.0)
    chex.assert_trees_all_equal_shapes_and_dtypes(n, params)


def test_dp_gradient_trains_with_optax():
    """DP-SGD with a small noise multiplier still lowers the loss on separable data."""
    net = fnn.MLP((4, 16, 3), "tanh")
    params, x, _ = problem(6, net, 64)
    y = jnp.argmax(x[:, :3], axis=1)  # learnable labels
    opt = optax.sgd(0.3)

    @jax.jit
    def train(params, key):
        def step(carry, key):
            params, state = carry
            g = dp_gradient(net, params, x, y, 1.0, 0.5, key)
            updates, state = opt.update(g, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, 100))
        return params

    loss = jax.jit(fnn.loss)
    before = float(loss(net, params, x, y))
    after = float(loss(net, train(params, jax.random.key(0)), x, y))
    assert after < 0.6 * before


@pytest.mark.parametrize("clip,sigma,match", [
    (-1.0, 1.0, "clip_norm must be >= 0, got -1.0"),
    (1.0, -0.5, "noise_multiplier must be >= 0, got -0.5"),
    (jnp.ones(2), 1.0, "clip_norm must be a scalar"),
])
def test_bad_clip_norm_or_noise(clip, sigma, match):
    net = fnn.MLP((3, 2))
    params, x, y = problem(0, net, 2)
    with pytest.raises(ValueError, match=match):
        dp_gradient(net, params, x, y, clip, sigma, jax.random.key(0))
