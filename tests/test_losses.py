"""Output functions, losses and the output delta against jax.grad and the lecture's examples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import PAIRS

import fnn
from fnn import losses


def test_softmax_jacobian_lecture_example(x64):
    """Lecture 003: softmax of z = [5, -2, -1, 3] and its Jacobian diag(a) - a a^T."""
    z = jnp.array([5.0, -2.0, -1.0, 3.0])
    a = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(fnn.softmax(z), a, rtol=1e-15)
    J = fnn.softmax_jacobian(z)
    np.testing.assert_allclose(J, jax.jacrev(fnn.softmax)(z), rtol=1e-14, atol=1e-17)
    np.testing.assert_allclose(J, np.diag(a) - np.outer(a, a), rtol=1e-14, atol=1e-17)
    # One row, as the slide prints it: dA_1/dz = a_1 (e_1 - a).
    np.testing.assert_allclose(J[0], a[0] * (np.eye(4)[0] - a), rtol=1e-14)
    np.testing.assert_allclose(J.sum(axis=1), 0.0, atol=1e-15)


def test_logistic_unit_lecture_example(x64):
    """Lecture 003: x = [-8, 1, -3, 5, 2] with the slide's W and b gives z = -2.4591, a = 0.0788."""
    x = jnp.array([-8.0, 1.0, -3.0, 5.0, 2.0])
    W = jnp.array([[0.7576, 0.2793, 0.4031, 0.7347, 0.0293]])
    b = jnp.array([0.7999])
    net = fnn.MLP((5, 1), output="sigmoid")
    a = fnn.forward(net, ({"W": W, "b": b},), x)
    np.testing.assert_allclose(W @ x + b, [-2.4591], atol=5e-4)
    np.testing.assert_allclose(a, [0.0788], atol=5e-5)
    # Its BCE gradient is (a - y) x, the logistic-regression rule.
    y = jnp.array([1.0])
    g = jax.grad(fnn.loss, argnums=1)(net, ({"W": W, "b": b},), x, y)
    np.testing.assert_allclose(g[0]["W"], (a - y)[:, None] * x[None, :], rtol=1e-12)
    np.testing.assert_allclose(g[0]["b"], a - y, rtol=1e-12)


@pytest.mark.parametrize("output,loss", PAIRS)
def test_output_delta_equals_autodiff(x64, output, loss):
    """delta[L] = d loss / d z[L], written by hand, equals jax.grad of the per-sample loss."""
    key = jax.random.key(0)
    z = 3 * jax.random.normal(key, (5,), jnp.float64)
    if output == "softmax":
        ys = [jnp.array(3), jax.nn.one_hot(1, 5, dtype=jnp.float64)]
    else:
        ys = [jax.random.uniform(jax.random.fold_in(key, 1), (5,), jnp.float64)]
    for y in ys:
        expected = jax.grad(losses.sample_loss, argnums=2)(output, loss, z, y)
        yhat = losses.OUTPUT_FUNCTIONS[output](z)
        np.testing.assert_allclose(losses.output_delta(output, loss, yhat, y), expected,
                                   rtol=1e-13, atol=1e-15)


def test_canonical_deltas_are_the_table(x64):
    z = jnp.array([0.3, -1.2, 2.0])
    y = jnp.array([0.0, 1.0, 0.0])
    yhat = jnp.array([0.2, 0.7, 0.1])
    np.testing.assert_array_equal(losses.output_delta("softmax", "cce", yhat, y), yhat - y)
    np.testing.assert_array_equal(losses.output_delta("sigmoid", "bce", yhat, y), yhat - y)
    np.testing.assert_array_equal(losses.output_delta("identity", "mse", z, y), 2 * (z - y))


def test_cross_entropy_never_takes_log_of_softmax():
    """Logits of +-1e4 in float32: log(softmax) would give inf; log-softmax gives the value."""
    z = jnp.array([1e4, -1e4, 0.0], jnp.float32)
    assert float(fnn.cross_entropy(z, jnp.array(1))) == pytest.approx(2e4, rel=1e-6)
    assert float(fnn.cross_entropy(z, jnp.array(0))) == 0.0
    naive = -jnp.log(jax.nn.softmax(z))[1]
    assert not bool(jnp.isfinite(naive))  # what the stable form avoids


@pytest.mark.parametrize("logit", [100.0, 1e9])
def test_binary_cross_entropy_is_stable(logit):
    for z, y, expected in [(logit, 1.0, 0.0), (-logit, 0.0, 0.0), (logit, 0.0, logit),
                           (-logit, 1.0, logit)]:
        value = fnn.binary_cross_entropy(jnp.array([z], jnp.float32), jnp.array([y], jnp.float32))
        assert float(value) == pytest.approx(expected, rel=1e-6, abs=1e-30)


def test_integer_label_and_one_hot_agree(x64):
    z = jnp.array([0.1, 2.0, -0.7])
    assert float(fnn.cross_entropy(z, jnp.array(2))) == pytest.approx(
        float(fnn.cross_entropy(z, jax.nn.one_hot(2, 3, dtype=jnp.float64))), rel=1e-15)


def test_out_of_range_label_is_nan_not_zero():
    """Unchecked bad labels (only possible under jit) poison the loss instead of hiding."""
    z = jnp.array([0.1, 2.0, -0.7])
    assert bool(jnp.isnan(fnn.cross_entropy(z, jnp.array(3))))
    yhat = fnn.softmax(z)
    assert bool(jnp.all(jnp.isnan(losses.output_delta("softmax", "cce", yhat, jnp.array(-1)))))


def test_squared_error_is_a_sum_over_outputs():
    assert float(fnn.squared_error(jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0]))) == 5.0
