"""Each hand-written derivative g' equals jax.grad of its activation g (SPEC table)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import ACTIVATIONS

from fnn import activations

POINTS = jnp.array([-1e9, -100.0, -30.0, -3.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 2.0, 30.0, 100.0, 1e9])


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_derivative_equals_autodiff(x64, name):
    g, dg = activations.get_activation(name)
    z = POINTS.astype(jnp.float64)
    np.testing.assert_allclose(dg(z), jax.vmap(jax.grad(g))(z), rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_derivative_from_output_equals_derivative(x64, name):
    """g' written through a = g(z) (what the backward keeps) equals g'(z), bit for bit."""
    g, dg = activations.get_activation(name, 0.2)
    z = POINTS.astype(jnp.float64)
    np.testing.assert_array_equal(activations.derivative_from_output(name, g(z), 0.2), dg(z))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_float32_finite_and_dtype_preserved(name):
    g, dg = activations.get_activation(name)
    z = POINTS.astype(jnp.float32)
    assert g(z).dtype == dg(z).dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(dg(z))))


def test_values_against_the_table(x64):
    z = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(activations.sigmoid(z), 1 / (1 + np.exp(-np.asarray(z))))
    np.testing.assert_allclose(activations.tanh(z), np.tanh(z))
    np.testing.assert_array_equal(activations.relu(z), [0.0, 0.0, 3.0])
    np.testing.assert_array_equal(activations.leaky_relu(z), [-0.02, 0.0, 3.0])
    np.testing.assert_array_equal(activations.identity(z), z)


def test_derivative_at_zero_is_the_documented_choice():
    """g'(0): 0 for ReLU (as jax.nn.relu), 1 for leaky ReLU (the z >= 0 branch)."""
    assert float(activations.relu_derivative(0.0)) == 0.0
    assert float(jax.grad(activations.relu)(0.0)) == 0.0
    assert float(jax.grad(jax.nn.relu)(0.0)) == 0.0
    assert float(activations.leaky_relu_derivative(0.0)) == 1.0
    assert float(jax.grad(activations.leaky_relu)(0.0)) == 1.0


def test_saturation_gives_exact_zero_derivatives():
    """Sigmoid and tanh saturate (lecture 000's vanishing gradients): g' is 0, never NaN."""
    z = jnp.array([-1e9, 1e9], jnp.float32)
    for name in ("sigmoid", "tanh"):
        np.testing.assert_array_equal(activations.get_activation(name)[1](z), [0.0, 0.0])


@pytest.mark.parametrize("slope", [0.01, 0.2])
def test_leaky_slope_is_configurable(slope):
    g, dg = activations.get_activation("leaky_relu", slope)
    np.testing.assert_allclose(g(jnp.array([-2.0])), [-2 * slope], rtol=1e-6)
    np.testing.assert_allclose(dg(jnp.array([-2.0, 2.0])), [slope, 1.0], rtol=1e-6)
    np.testing.assert_allclose(jax.grad(g)(-2.0), slope, rtol=1e-6)


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match=r"activation must be one of .*'relu'.*got 'swish'"):
        activations.get_activation("swish")
