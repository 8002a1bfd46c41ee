"""The architecture object, initialisation, the forward pass and the augmented bias form."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import problem

import fnn


def test_mlp_is_immutable_hashable_and_normalised():
    net = fnn.MLP([784, 128, 64, 10], activation="tanh")
    assert net.layer_sizes == (784, 128, 64, 10)
    assert net.activation == ("tanh", "tanh")
    assert net.loss == "cce" and net.depth == 3
    assert hash(net) == hash(fnn.MLP((784, 128, 64, 10), ("tanh", "tanh")))
    assert net == fnn.MLP((784, 128, 64, 10), ("tanh", "tanh"), "softmax", "cce")
    with pytest.raises(AttributeError):
        net.output = "sigmoid"


@pytest.mark.parametrize("output,loss", [("softmax", "cce"), ("sigmoid", "bce"),
                                         ("identity", "mse")])
def test_default_loss_follows_the_output(output, loss):
    assert fnn.MLP((2, 3), output=output).loss == loss


def test_mlp_passes_through_jit_as_an_ordinary_argument():
    net = fnn.MLP((3, 5, 2))
    params, x, y = problem(0, net, 4)
    assert jax.tree.leaves(net) == []
    value = jax.jit(fnn.loss)(net, params, x, y)
    np.testing.assert_allclose(value, fnn.loss(net, params, x, y), rtol=1e-6)
    # A different architecture is a different static value: a new trace, not a stale one.
    other = fnn.MLP((3, 5, 2), "tanh")
    assert float(jax.jit(fnn.loss)(other, params, x, y)) == pytest.approx(
        float(fnn.loss(other, params, x, y)), rel=1e-6)


def test_init_shapes_dtype_and_orientation():
    net = fnn.MLP((5, 7, 4, 3))
    params = fnn.init(jax.random.key(0), net, dtype=jnp.bfloat16)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        params,
        tuple({"W": jnp.zeros((m, n), jnp.bfloat16), "b": jnp.zeros(m, jnp.bfloat16)}
              for n, m in [(5, 7), (7, 4), (4, 3)]),
    )


@pytest.mark.parametrize("scheme,activation,expected_var", [
    ("he", "tanh", lambda n_in, n_out: 2 / n_in),
    ("xavier", "relu", lambda n_in, n_out: 2 / (n_in + n_out)),
    ("auto", "relu", lambda n_in, n_out: 2 / n_in),
    ("auto", "sigmoid", lambda n_in, n_out: 2 / (n_in + n_out)),
])
def test_init_variance(scheme, activation, expected_var):
    net = fnn.MLP((400, 300, 10), activation)
    W = fnn.init(jax.random.key(1), net, scheme=scheme)[0]["W"]
    assert float(jnp.var(W)) == pytest.approx(expected_var(400, 300), rel=0.05)
    assert float(jnp.mean(W)) == pytest.approx(0.0, abs=0.01)


def test_init_is_random_never_zero_and_deterministic():
    net = fnn.MLP((3, 1, 1))
    a = fnn.init(jax.random.key(0), net)
    b = fnn.init(jax.random.key(0), net)
    c = fnn.init(jax.random.key(1), net)
    chex.assert_trees_all_equal(a, b)
    assert all(bool(jnp.any(p["W"] != 0)) for p in a)
    assert not bool(jnp.all(a[0]["W"] == c[0]["W"]))
    assert all(bool(jnp.all(p["b"] == 0)) for p in a)


def test_init_accepts_raw_uint32_keys():
    params = fnn.init(jax.random.PRNGKey(0), fnn.MLP((2, 3)))
    assert params[0]["W"].shape == (3, 2)


def test_init_rejects_bad_scheme_and_dtype():
    with pytest.raises(ValueError, match=r"scheme must be one of .* got 'zeros'"):
        fnn.init(jax.random.key(0), fnn.MLP((2, 3)), scheme="zeros")
    with pytest.raises(TypeError, match="dtype must be a floating dtype, got int32"):
        fnn.init(jax.random.key(0), fnn.MLP((2, 3)), dtype=jnp.int32)


def test_forward_matches_the_lecture_equations(x64):
    """z = W a + b, a = g(z), yhat = O(z[L]), written out with numpy, row layout Z = X W^T + b."""
    net = fnn.MLP((4, 6, 5, 3), ("tanh", "sigmoid"))
    params, x, _ = problem(2, net, 7, jnp.float64)
    P = [{k: np.asarray(v) for k, v in p.items()} for p in params]
    A1 = np.tanh(np.asarray(x) @ P[0]["W"].T + P[0]["b"])
    A2 = 1 / (1 + np.exp(-(A1 @ P[1]["W"].T + P[1]["b"])))
    Z3 = A2 @ P[2]["W"].T + P[2]["b"]
    A3 = np.exp(Z3) / np.exp(Z3).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(fnn.forward(net, params, x), A3, rtol=1e-13)
    np.testing.assert_allclose(fnn.forward(net, params, x[3]), A3[3], rtol=1e-13)


def test_forward_trace_keeps_every_layer(x64):
    net = fnn.MLP((4, 6, 3), "relu")
    params, x, _ = problem(2, net, 1, jnp.float64)
    z, a = fnn.forward_trace(net, params, x[0])
    assert [v.shape for v in z] == [(6,), (3,)]
    assert [v.shape for v in a] == [(4,), (6,), (3,)]
    np.testing.assert_array_equal(a[1], jnp.maximum(z[0], 0))
    np.testing.assert_allclose(a[2], fnn.softmax(z[1]), rtol=1e-15)


def test_augmented_conversion_is_exact():
    net = fnn.MLP((5, 7, 3))
    params, _, _ = problem(0, net, 1)
    augmented = fnn.to_augmented(params)
    assert [W_B.shape for W_B in augmented] == [(7, 6), (3, 8)]
    np.testing.assert_array_equal(augmented[0][:, -1], params[0]["b"])
    chex.assert_trees_all_equal(fnn.from_augmented(augmented), params)


def test_augmented_forward_gives_identical_outputs(x64):
    net = fnn.MLP((5, 7, 4, 3), "sigmoid")
    params, x, _ = problem(0, net, 6, jnp.float64)
    augmented = fnn.to_augmented(params)
    np.testing.assert_allclose(fnn.forward_augmented(net, augmented, x),
                               fnn.forward(net, params, x), rtol=1e-14)
    # With small integers every product and sum is exact: the two forms agree bit for bit.
    ints = tuple({"W": jnp.round(4 * p["W"]), "b": jnp.round(4 * p["b"])} for p in params)
    net_id = fnn.MLP((5, 7, 4, 3), "relu", output="identity")
    np.testing.assert_array_equal(fnn.forward_augmented(net_id, fnn.to_augmented(ints), x.round()),
                                  fnn.forward(net_id, ints, x.round()))
