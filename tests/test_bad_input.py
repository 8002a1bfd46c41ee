"""Every bad input raises before any computation, naming the argument, expected and actual."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import grads, problem

import fnn

NET = fnn.MLP((4, 5, 3))


@pytest.fixture
def ok():
    return problem(0, NET, 6)


@pytest.mark.parametrize("sizes,error,match", [
    ((784,), ValueError, r"layer_sizes must have at least 2 entries .* got \(784,\)"),
    ((), ValueError, r"at least 2 entries .* got \(\)"),
    ((784, 0, 10), ValueError, r"layer_sizes\[1\] must be a positive width, got 0"),
    ((784, -3, 10), ValueError, r"layer_sizes\[1\] must be a positive width, got -3"),
    ((784, 2.5, 10), TypeError, r"layer_sizes must be a sequence of integers, got \(784, 2.5"),
    ("784", TypeError, r"layer_sizes must be a sequence of integers, got '784'"),
    ((4, True), TypeError, r"sequence of integers"),
])
def test_bad_layer_sizes(sizes, error, match):
    with pytest.raises(error, match=match):
        fnn.MLP(sizes)


def test_unknown_names():
    with pytest.raises(ValueError, match=r"activation must be one of \[.*'relu'.*\], got 'gelu'"):
        fnn.MLP((2, 3, 2), "gelu")
    with pytest.raises(ValueError, match=r"activation must be one of .* got 'elu'"):
        fnn.MLP((2, 3, 3, 2), ("relu", "elu"))
    with pytest.raises(ValueError, match=r"output must be one of \[.*'softmax'\], got 'tanh'"):
        fnn.MLP((2, 3), output="tanh")
    with pytest.raises(ValueError, match=r"loss must be one of \[.*'mse'\], got 'hinge'"):
        fnn.MLP((2, 3), loss="hinge")
    with pytest.raises(ValueError, match=r"loss 'cce' does not apply to output 'identity'"):
        fnn.MLP((2, 3), output="identity", loss="cce")


@pytest.mark.parametrize("slope", [0.0, -0.1, 1.5])
def test_leaky_slope_out_of_range(slope):
    with pytest.raises(ValueError, match=rf"leaky_slope must be in \(0, 1\), got {slope}"):
        fnn.MLP((2, 3, 2), "leaky_relu", leaky_slope=slope)


def test_activation_tuple_of_wrong_length():
    with pytest.raises(ValueError, match=r"tuple of 2 names .* got 1: \('relu',\)"):
        fnn.MLP((4, 5, 6, 3), ("relu",))
    with pytest.raises(ValueError, match=r"tuple of 0 names .* got 1"):
        fnn.MLP((4, 3), ("relu",))


def test_params_tree_must_match(ok):
    params, x, y = ok
    with pytest.raises(ValueError, match=r"params must be a tuple of 2 layers .* got tuple of "
                                         r"length 1"):
        fnn.loss(NET, params[:1], x, y)
    with pytest.raises(ValueError, match=r"params must be a tuple of 2 layers .* got dict"):
        fnn.loss(NET, {"W": 1}, x, y)
    with pytest.raises(ValueError, match=r"params\[1\] must be a dict with keys 'W' and 'b', "
                                         r"got \['W', 'bias'\]"):
        fnn.loss(NET, (params[0], {"W": params[1]["W"], "bias": params[1]["b"]}), x, y)


def test_params_shapes_must_match(ok):
    params, x, y = ok
    wrong = (params[0], {"W": params[1]["W"].T, "b": params[1]["b"]})
    with pytest.raises(ValueError, match=r"params\[1\]\['W'\] \(layer 2\) must have shape "
                                         r"\(3, 5\), got \(5, 3\)"):
        fnn.loss(NET, wrong, x, y)
    wrong = ({"W": params[0]["W"], "b": params[0]["b"][:, None]}, params[1])
    with pytest.raises(ValueError, match=r"params\[0\]\['b'\] \(layer 1\) must have shape "
                                         r"\(5,\), got \(5, 1\)"):
        fnn.forward(NET, wrong, x)


def test_params_must_be_floating(ok):
    params, x, y = ok
    ints = jax.tree.map(lambda p: p.astype(jnp.int32), params)
    with pytest.raises(TypeError, match=r"params\[0\]\['W'\] \(layer 1\) must be floating point, "
                                        r"got dtype int32"):
        fnn.loss(NET, ints, x, y)


def test_x_with_wrong_number_of_features(ok):
    params, _, y = ok
    with pytest.raises(ValueError, match=r"x has 5 features \(shape \(6, 5\)\), layer 0 expects 4"):
        fnn.loss(NET, params, jnp.ones((6, 5)), y)
    with pytest.raises(ValueError, match=r"x has 3 features \(shape \(3,\)\), layer 0 expects 4"):
        fnn.forward(NET, params, jnp.ones(3))


def test_x_of_wrong_rank_or_dtype(ok):
    params, _, _ = ok
    with pytest.raises(ValueError, match=r"x must have shape \(4,\) or \(batch, 4\), got shape "
                                         r"\(2, 3, 4\)"):
        fnn.forward(NET, params, jnp.ones((2, 3, 4)))
    with pytest.raises(TypeError, match="x must be floating point, got dtype int32"):
        fnn.forward(NET, params, jnp.ones((6, 4), jnp.int32))


def test_x_and_y_batch_sizes_differ(ok):
    params, x, y = ok
    with pytest.raises(ValueError, match=r"x and y must have the same batch size: x has 6 "
                                         r"\(shape \(6, 4\)\), y has 5"):
        fnn.loss(NET, params, x, y[:5])


def test_empty_batch(ok):
    params, _, _ = ok
    with pytest.raises(ValueError, match=r"x is an empty batch \(shape \(0, 4\)\)"):
        fnn.loss(NET, params, jnp.ones((0, 4)), jnp.zeros(0, jnp.int32))


def test_one_hot_of_wrong_width(ok):
    params, x, _ = ok
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \(6,\) or one-hot "
                                         r"rows of shape \(6, 3\), got shape \(6, 4\)"):
        fnn.loss(NET, params, x, jax.nn.one_hot(jnp.zeros(6, jnp.int32), 4))


def test_any_target_row_gets_the_exact_gradient(ok, x64):
    """Soft labels, label smoothing, rows that do not sum to 1: dl/dz = yhat sum(y) - y is
    exact for each, so the hand-written gradient equals autodiff (it did not, by 0.5, when
    the delta was yhat - y and such rows were refused only when concrete)."""
    params, x, _ = ok
    params, x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, x))
    rows = jnp.asarray([[1, 1, 1], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05], [0, 0, 0], [3, 0, 0],
                        [0.5, 0.5, 0]], jnp.float64)
    auto = grads(fnn.loss_autodiff, NET, params, x, rows)[0]  # the reference, jitted
    for f in (fnn.loss, jax.jit(fnn.loss)):  # eager and jitted: both must take such rows
        hand = jax.grad(f, argnums=1)(NET, params, x, rows)
        chex.assert_trees_all_close(hand, auto, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad", [[0, 1, 2, 3, 0, 1], [0, -1, 2, 0, 0, 1]])
def test_labels_out_of_range_when_concrete(ok, bad):
    params, x, _ = ok
    with pytest.raises(ValueError, match=r"y holds integer labels outside \[0, 3\) for the 3 "
                                         r"softmax outputs: \[-?\d\]"):
        fnn.loss(NET, params, x, np.array(bad))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        jax.grad(fnn.loss, argnums=1)(NET, params, x, jnp.array(bad))


def test_float_labels_of_label_shape_are_rejected(ok):
    params, x, y = ok
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \(6,\) .* got shape "
                                         r"\(6,\), dtype float32"):
        fnn.loss(NET, params, x, y.astype(jnp.float32))


def test_no_silent_broadcasting_of_column_targets():
    """(B,) targets against a (B, 1) output are an error, never a (B, B) matrix."""
    for output in ("sigmoid", "identity"):
        net = fnn.MLP((4, 5, 1), output=output)
        params, x, y = problem(0, net, 6)
        with pytest.raises(ValueError, match=r"y must be shape \(6, 1\) .* got shape \(6,\), "
                                             r".*write y\[:, None\]"):
            fnn.loss(net, params, x, y[:, 0])
        assert fnn.loss(net, params, x, y).shape == ()
