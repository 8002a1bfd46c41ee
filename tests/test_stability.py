"""Float32 stability: huge logits, saturated units, exact zeros where gradients vanish."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn


def _single_layer(W, b):
    return ({"W": jnp.asarray(W), "b": jnp.asarray(b)},)


def _finite(tree):
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_softmax_logits_1e4_match_float64_reference(scale):
    net = fnn.MLP((2, 3))
    W = np.array([[scale, 0.0], [0.0, scale], [-scale, 0.0]])
    x = np.array([[1.0, -1.0], [0.5, 1.0]])
    y = np.array([1, 2])
    p32 = _single_layer(W.astype(np.float32), np.zeros(3, np.float32))
    value, grads = jax.value_and_grad(fnn.loss, argnums=1)(net, p32, x.astype(np.float32), y)
    assert np.isfinite(float(value)) and _finite(grads)
    with jax.enable_x64(True):
        p64 = _single_layer(W, np.zeros(3))
        ref_value, ref_grads = jax.jit(jax.value_and_grad(fnn.loss_autodiff, argnums=1),
                                       static_argnums=0)(net, p64, x, y)
        assert float(value) == pytest.approx(float(ref_value), rel=1e-6)
        np.testing.assert_allclose(grads[0]["W"], ref_grads[0]["W"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("logit", [100.0, 1e9])
def test_sigmoid_bce_at_huge_logits(logit):
    net = fnn.MLP((1, 1), output="sigmoid")
    params = _single_layer(np.array([[1.0]], np.float32), np.zeros(1, np.float32))
    x = np.array([[logit], [-logit], [logit], [-logit]], np.float32)
    y = np.array([[1.0], [0.0], [0.0], [1.0]], np.float32)
    value, (g_params, g_x) = jax.value_and_grad(fnn.loss, argnums=(1, 2))(net, params, x, y)
    assert float(value) == pytest.approx(logit / 2, rel=1e-6)  # two samples wrong by `logit`
    assert _finite((g_params, g_x))
    # Right with certainty: delta = sigmoid(z) - y is exactly 0, so the gradient is 0 there.
    np.testing.assert_array_equal(g_x[:2], 0.0)
    np.testing.assert_allclose(g_x[2:], [[0.25], [-0.25]])


def test_dead_relu_units_get_exactly_zero_gradient():
    net = fnn.MLP((2, 3, 2), "relu")
    params = (
        {"W": jnp.array([[1.0, 1.0], [-1.0, -1.0], [0.5, -0.5]]), "b": jnp.array([0.0, -5.0, 0.0])},
        {"W": jnp.ones((2, 3)), "b": jnp.zeros(2)},
    )
    x = jnp.array([[1.0, 2.0], [0.5, 0.1]])
    grads = jax.grad(fnn.loss, argnums=1)(net, params, x, jnp.array([0, 1]))
    np.testing.assert_array_equal(grads[0]["W"][1], 0.0)  # unit 2 is dead on both samples
    assert float(grads[0]["b"][1]) == 0.0
    assert _finite(grads)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_saturated_hidden_units_give_zero_not_nan(activation):
    net = fnn.MLP((2, 3, 2), activation)
    params = ({"W": jnp.full((3, 2), 1e6), "b": jnp.zeros(3)}, {"W": jnp.ones((2, 3)),
                                                               "b": jnp.zeros(2)})
    x = jnp.array([[1.0, 1.0], [-1.0, -1.0]])
    grads = jax.grad(fnn.loss, argnums=1)(net, params, x, jnp.array([0, 1]))
    assert _finite(grads)
    np.testing.assert_array_equal(grads[0]["W"], 0.0)  # g'(z) is exactly 0 at saturation
    ref = jax.grad(fnn.loss_autodiff, argnums=1)(net, params, x, jnp.array([0, 1]))
    np.testing.assert_array_equal(ref[0]["W"], 0.0)


def test_out_of_range_label_under_jit_is_detectable():
    """Under jit the label values are unknown: the result is NaN, and checkify reports it."""
    from jax.experimental import checkify

    net = fnn.MLP((3, 4, 2))
    params = fnn.init(jax.random.key(0), net)
    x = jnp.ones((2, 3))
    bad = jnp.array([0, 5])
    assert bool(jnp.isnan(jax.jit(fnn.loss)(net, params, x, bad)))
    grads = jax.jit(jax.grad(fnn.loss, argnums=1))(net, params, x, bad)
    assert bool(jnp.all(jnp.isnan(grads[-1]["W"])))
    checked = checkify.checkify(jax.jit(jax.value_and_grad(fnn.loss, argnums=1)),
                                errors=checkify.nan_checks)
    err, _ = checked(net, params, x, bad)
    assert err.get() is not None and "nan" in err.get()
    err, _ = checked(net, params, x, jnp.array([0, 1]))
    assert err.get() is None
