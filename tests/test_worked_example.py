"""Lecture 003's worked example: the 5-7-4-3 sigmoid/sigmoid/softmax MLP on a 4-sample batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import grads, relative_errors

import fnn

X = [[-8.0, 1.0, -3.0, 5.0, 2.0], [-2.0, 2.0, -1.0, 5.0, 2.0], [7.0, 1.0, 9.0, -5.0, -2.0],
     [3.0, 1.0, 9.0, 5.0, 2.0]]
LABELS = [2, 0, 1, 2]
NET = fnn.MLP((5, 7, 4, 3), activation="sigmoid", output="softmax")


@pytest.fixture
def lecture(x64):
    # The slide draws W, b with torch.rand (uniform on [0, 1)); we do the same with jax.random.
    keys = jax.random.split(jax.random.key(1), 6)
    sizes = NET.layer_sizes
    params = tuple(
        {"W": jax.random.uniform(keys[2 * i], (sizes[i + 1], sizes[i]), jnp.float64),
         "b": jax.random.uniform(keys[2 * i + 1], (sizes[i + 1],), jnp.float64)}
        for i in range(3)
    )
    X_ = jnp.array(X, jnp.float64)
    Y = jax.nn.one_hot(jnp.array(LABELS), 3, dtype=jnp.float64)
    return params, X_, Y


def test_shapes_and_mean_cross_entropy(lecture):
    params, X_, Y = lecture
    bp = fnn.backprop(NET, params, X_, jnp.array(LABELS))
    assert [a.shape for a in bp.a] == [(4, 5), (4, 7), (4, 4), (4, 3)]
    A3 = np.asarray(bp.a[3])
    np.testing.assert_allclose(A3.sum(axis=1), 1.0, rtol=1e-15)
    # L = -1/N sum(Y * log A3), the slide's formula.
    assert float(bp.loss) == pytest.approx(-np.mean(np.sum(np.asarray(Y) * np.log(A3), 1)),
                                           rel=1e-14)


def test_output_delta_is_A3_minus_Y_over_N(lecture):
    """dL/dZ3 = (A3 - Y) / N (the slide prints a stray minus sign), checked against jax.grad."""
    params, X_, Y = lecture
    bp = fnn.backprop(NET, params, X_, Y)
    A3 = bp.a[3]
    N = X_.shape[0]
    np.testing.assert_allclose(bp.delta[3] / N, (A3 - Y) / N, rtol=1e-15)
    # The same, as jax.grad of the mean loss with respect to the logits Z3.
    dL_dZ3 = jax.grad(lambda Z3: jnp.mean(jax.vmap(fnn.cross_entropy)(Z3, Y)))(bp.z[3])
    np.testing.assert_allclose(bp.delta[3] / N, dL_dZ3, rtol=1e-14)


def test_every_gradient_equals_jax_grad(lecture):
    params, X_, Y = lecture
    for y in (Y, jnp.array(LABELS)):
        ours = jax.grad(fnn.loss, argnums=1)(NET, params, X_, y)
        reference = grads(fnn.loss_autodiff, NET, params, X_, y)[0]  # jitted
        assert max(relative_errors(ours, reference)) <= 1e-12
        bp = fnn.backprop(NET, params, X_, y)
        assert max(relative_errors(bp.grads, reference)) <= 1e-12


def test_delta_recursion_by_hand(lecture):
    """delta[l] = W[l+1]^T delta[l+1] * g'(z[l]) and dW[l] = mean of delta[l] a[l-1]^T."""
    params, X_, Y = lecture
    bp = fnn.backprop(NET, params, X_, Y)
    for l in (2, 1):
        s = jax.nn.sigmoid(bp.z[l])
        expected = (bp.delta[l + 1] @ params[l]["W"]) * s * (1 - s)
        np.testing.assert_allclose(bp.delta[l], expected, rtol=1e-14)
    for l in (1, 2, 3):
        outer = np.mean([np.outer(bp.delta[l][i], bp.a[l - 1][i]) for i in range(4)], axis=0)
        np.testing.assert_allclose(bp.grads[l - 1]["W"], outer, rtol=1e-13)
        np.testing.assert_allclose(bp.grads[l - 1]["b"], np.mean(bp.delta[l], 0), rtol=1e-13)
