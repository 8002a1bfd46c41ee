"""Tests of fnn.metrics against NumPy hand computations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import metrics

_init = jax.jit(fnn.init)  # one compilation instead of many small eager ones
_forward = jax.jit(fnn.forward)
WRAPS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]


@functools.cache
def _problem(seed=0, sizes=(5, 7, 4), n=50):
    """One shape for all tests, so that eager and jitted calls compile once."""
    net = fnn.MLP(sizes)
    kp, kx = jax.random.split(jax.random.key(seed))
    params = _init(kp, net)
    x = jax.random.normal(kx, (n, sizes[0]))
    return net, params, x


@pytest.mark.parametrize("wrap", WRAPS)
def test_predict_is_argmax_of_the_output(wrap):
    net, params, x = _problem()
    yhat = np.asarray(_forward(net, params, x))
    pred = wrap(metrics.predict)(net, params, x)
    assert pred.dtype == jnp.int32 and pred.shape == (50,)
    np.testing.assert_array_equal(pred, yhat.argmax(axis=1))
    assert len(set(pred.tolist())) > 1  # a real check: not all one class


@pytest.mark.parametrize("wrap", WRAPS)
def test_predict_thresholds_one_sigmoid_unit_at_one_half(wrap):
    net = fnn.MLP((1, 1), output="sigmoid")
    params = ({"W": jnp.ones((1, 1)), "b": jnp.zeros(1)},)
    x = jnp.array([[-3.0], [-1e-3], [0.0], [1e-3], [2.0]])
    np.testing.assert_array_equal(wrap(metrics.predict)(net, params, x), [0, 0, 0, 1, 1])
    y = jnp.array([[0.0], [1.0], [0.0], [1.0], [0.0]])
    assert float(wrap(metrics.accuracy)(net, params, x, y)) == pytest.approx(0.6)
    assert float(metrics.accuracy(net, params, x, y[:, 0])) == pytest.approx(0.6)


def test_predict_one_sample_has_no_batch_axis():
    net, params, x = _problem()
    assert metrics.predict(net, params, x[0]).shape == ()
    assert int(metrics.predict(net, params, x[0])) == int(metrics.predict(net, params, x)[0])


@pytest.mark.parametrize("wrap", WRAPS)
def test_accuracy_matches_numpy(wrap):
    net, params, x = _problem()
    pred = np.asarray(_forward(net, params, x)).argmax(1)
    rng = np.random.default_rng(0)
    y = np.where(rng.random(50) < 0.6, pred, rng.integers(0, 4, 50)).astype(np.int32)
    expected = np.mean(pred == y)
    assert 0.3 < expected < 1.0
    got = wrap(metrics.accuracy)(net, params, x, jnp.asarray(y))
    assert got.dtype == jnp.float32
    assert float(got) == pytest.approx(expected, abs=1e-6)
    one_hot = np.eye(4, dtype=np.float32)[y]
    assert float(wrap(metrics.accuracy)(net, params, x, one_hot)) == pytest.approx(expected,
                                                                                 abs=1e-6)


def test_accuracy_rejects_mismatched_labels():
    net, params, x = _problem()
    with pytest.raises(ValueError, match="labels of shape"):
        metrics.accuracy(net, params, x, np.zeros(49, np.int32))


@pytest.mark.parametrize("wrap", [lambda f: f,
                                  lambda f: jax.jit(f, static_argnames="num_classes")],
                         ids=["eager", "jit"])
def test_confusion_matrix_matches_numpy(wrap):
    rng = np.random.default_rng(1)
    k, n = 4, 200
    y_true = rng.integers(0, k, n).astype(np.int32)
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, k, n)).astype(np.int32)
    expected = np.zeros((k, k), np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        expected[t, p] += 1
    got = wrap(metrics.confusion_matrix)(jnp.asarray(y_true), jnp.asarray(y_pred),
                                         num_classes=k)
    assert got.dtype == jnp.int32 and got.shape == (k, k)
    np.testing.assert_array_equal(got, expected)
    assert int(got.sum()) == n
    assert int(jnp.trace(got)) == int(np.sum(y_true == y_pred))


def test_confusion_matrix_rows_are_true_classes():
    c = metrics.confusion_matrix(jnp.array([0, 0, 0]), jnp.array([1, 1, 2]), 3)
    np.testing.assert_array_equal(c, [[0, 2, 1], [0, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize("bad", [[0, 3], [-1, 0]])
def test_confusion_matrix_rejects_out_of_range_labels(bad):
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix(jnp.array(bad), jnp.array([0, 0]), 3)
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix(jnp.array([0, 0]), jnp.array(bad), 3)


def test_confusion_matrix_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        metrics.confusion_matrix(jnp.array([0, 1]), jnp.array([0]), 2)
    with pytest.raises(ValueError, match="integer"):
        metrics.confusion_matrix(jnp.array([0.0, 1.0]), jnp.array([0, 1]), 2)
