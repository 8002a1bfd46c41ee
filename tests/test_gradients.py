"""The hand-written backward pass equals jax.grad of the plain forward, and finite differences."""

import chex
import jax
import jax.numpy as jnp
import pytest
from _cases import ACTIVATIONS, PAIRS, cases, grads, problem, relative_errors, value_and_grads
from hypothesis import given, settings
from jax.test_util import check_grads

import fnn
import fnn.testing


@given(cases())
def test_float64_grads_equal_autodiff(case):
    net, batch, labels, seed = case
    with jax.enable_x64(True):
        params, x, y = problem(seed, net, batch, jnp.float64, labels)
        # one program per loss, value and gradients together (12 drawn architectures: two
        # compilations each instead of four)
        value, ours = value_and_grads(fnn.loss, net, params, x, y)
        ref_value, reference = value_and_grads(fnn.loss_autodiff, net, params, x, y)
        assert max(relative_errors(ours, reference)) <= 1e-10, (net, batch, labels)
        assert value.dtype == jnp.float64
        assert float(value) == float(ref_value)


@settings(max_examples=8)
@given(fnn.testing.problems(max_hidden=6, max_width=64, max_batch=64))
def test_float32_grads_equal_autodiff(problem):
    """With fnn.testing, as a user would: elementwise |ours - ref| <= 1e-6 + 1e-5 |ref|."""
    fnn.testing.assert_gradients_match(*problem, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("output,loss", PAIRS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_and_pair(x64, activation, output, loss):
    """Deterministic coverage of every activation with every output/loss pair."""
    net = fnn.MLP((6, 9, 7, 4), activation, output, loss)
    params, x, y = problem(3, net, 11, jnp.float64)
    ours = grads(fnn.loss, net, params, x, y)
    reference = grads(fnn.loss_autodiff, net, params, x, y)
    assert max(relative_errors(ours, reference)) <= 1e-10


@pytest.mark.parametrize("labels", ["int", "one-hot"])
def test_mixed_activations_per_layer(x64, labels):
    net = fnn.MLP((8, 16, 12, 10, 9, 5), ("relu", "tanh", "sigmoid", "leaky_relu"))
    params, x, y = problem(0, net, 32, jnp.float64, labels)
    ours = grads(fnn.loss, net, params, x, y)
    reference = grads(fnn.loss_autodiff, net, params, x, y)
    assert max(relative_errors(ours, reference)) <= 1e-10


@pytest.mark.parametrize("output,loss", PAIRS)
def test_finite_differences_second_order(x64, output, loss):
    """check_grads in float64, reverse mode, up to second order (reverse over reverse).

    Of the jitted loss: its many evaluations at perturbed points are then one program, not a
    hundred eager ones (175 compilations before); the backward is the same custom_vjp."""
    net = fnn.MLP((4, 5, 3), ("tanh",), output, loss)
    params, x, y = problem(1, net, 6, jnp.float64)
    check_grads(jax.jit(lambda p, x: fnn.loss(net, p, x, y)), (params, x), order=2,
                modes=["rev"])


def test_finite_differences_catch_a_wrong_backward(x64, monkeypatch):
    """The finite-difference check is sharp enough to fail for a 0.1% error in a delta."""
    net = fnn.MLP((4, 5, 3), "tanh")
    params, x, y = problem(1, net, 6, jnp.float64)
    original = fnn.losses.output_delta
    monkeypatch.setattr(fnn.losses, "output_delta", lambda *a: 1.001 * original(*a))
    with pytest.raises(AssertionError):
        check_grads(lambda p: fnn.loss(net, p, x, y), (params,), order=1, modes=["rev"])


def test_forward_mode_is_not_available():
    """custom_vjp is reverse mode only: jax.jvp raises, pinning the documented limitation."""
    net = fnn.MLP((3, 4, 2))
    params, x, y = problem(0, net, 5)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: fnn.loss(net, params, x, y), (x,), (jnp.ones_like(x),))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_gradient_dtypes_match_params(dtype):
    net = fnn.MLP((3, 4, 2))
    params, x, y = problem(0, net, 5, dtype)
    g_params, g_x = grads(fnn.loss, net, params, x, y)
    for g, p in zip(jax.tree.leaves(g_params), jax.tree.leaves(params), strict=True):
        assert g.dtype == p.dtype
    assert g_x.dtype == x.dtype


def test_mixed_dtype_params_and_x(x64):
    """float32 params with float64 inputs: each gradient keeps its own argument's dtype."""
    net = fnn.MLP((3, 4, 2))
    params, _, y = problem(0, net, 5, jnp.float32)
    x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
    g_params, g_x = grads(fnn.loss, net, params, x, y)
    ref_params, ref_x = grads(fnn.loss_autodiff, net, params, x, y)
    assert g_x.dtype == jnp.float64 and g_params[0]["W"].dtype == jnp.float32
    chex.assert_trees_all_close((g_params, g_x), (ref_params, ref_x), rtol=1e-6)


def test_single_sample_equals_batch_of_one(x64):
    net = fnn.MLP((5, 7, 3), "sigmoid")
    params, x, y = problem(4, net, 1, jnp.float64)
    single = grads(fnn.loss, net, params, x[0], y[0])
    batch = grads(fnn.loss, net, params, x, y)
    chex.assert_trees_all_close(single[0], batch[0], rtol=1e-14)
    chex.assert_trees_all_close(single[1], batch[1][0], rtol=1e-14)


def test_cotangent_scales_the_gradient(x64):
    """The custom rule multiplies by the incoming cotangent (here 3 * loss)."""
    net = fnn.MLP((5, 7, 3), "tanh")
    params, x, y = problem(2, net, 8, jnp.float64)
    ours = jax.jit(jax.grad(lambda p: 3 * fnn.loss(net, p, x, y)))(params)
    reference = jax.jit(jax.grad(lambda p: 3 * fnn.loss_autodiff(net, p, x, y)))(params)
    assert max(relative_errors(ours, reference)) <= 1e-10
