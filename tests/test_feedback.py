"""Feedback rules in the delta recursion: backprop (default), random (feedback alignment), sign."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cases import problem, relative_errors

import fnn
from fnn.backpropagation import feedback_matrix
from fnn.diagnostics import check_gradients

grad = jax.jit(jax.grad(fnn.loss, argnums=1))
grad_autodiff = jax.jit(jax.grad(fnn.loss_autodiff, argnums=1))
B_of = jax.jit(feedback_matrix, static_argnums=(0, 2))


def numpy_feedback(net, params, l):
    """B[l] as documented, built independently of fnn.backprop."""
    W = np.asarray(params[l - 1]["W"])
    if net.feedback == "sign":
        return np.sign(W)
    key = jax.random.fold_in(jax.random.key(net.feedback_seed), l)
    return np.asarray(jax.random.normal(key, W.shape, W.dtype)) / np.sqrt(W.shape[1])


NUMPY_G_PRIME = {
    "tanh": lambda z: 1 - np.tanh(z) ** 2,
    "sigmoid": lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2,
    "relu": lambda z: (z > 0).astype(z.dtype),
}


def numpy_update(net, params, x, y):
    """The feedback rule's update, by the lecture's per-sample loop in NumPy (softmax + cce)."""
    W = [np.asarray(p["W"]) for p in params]
    b = [np.asarray(p["b"]) for p in params]
    x, y = np.asarray(x), np.asarray(y)
    grads = [{"W": np.zeros_like(w), "b": np.zeros_like(c)} for w, c in zip(W, b, strict=True)]
    L = net.depth
    B = {l: numpy_feedback(net, params, l) for l in range(2, L + 1)}
    for xi, yi in zip(x, y, strict=True):
        a, zs = [xi], []
        for l in range(L):
            zs.append(W[l] @ a[-1] + b[l])
            if l < L - 1:
                a.append(np.tanh(zs[-1]) if net.activation[l] == "tanh" else
                         np.maximum(zs[-1], 0) if net.activation[l] == "relu" else
                         1 / (1 + np.exp(-zs[-1])))
        p = np.exp(zs[-1] - zs[-1].max())
        delta = p / p.sum() - np.eye(len(p))[yi]
        for l in range(L, 0, -1):
            grads[l - 1]["W"] += np.outer(delta, a[l - 1]) / len(x)
            grads[l - 1]["b"] += delta / len(x)
            if l > 1:
                delta = (B[l].T @ delta) * NUMPY_G_PRIME[net.activation[l - 2]](zs[l - 2])
    return tuple(grads)


def test_default_is_backprop_with_no_extra_ops():
    net = fnn.MLP((5, 7, 6, 3), "tanh")
    assert net.feedback == "backprop" and net == fnn.MLP((5, 7, 6, 3), "tanh", feedback="backprop")
    params, x, y = problem(0, net, 8)
    text = str(jax.make_jaxpr(jax.grad(fnn.loss, argnums=1), static_argnums=0)(net, params, x, y))
    assert "random" not in text and "sign" not in text and "threefry" not in text
    for l in (1, 2, 3):
        assert feedback_matrix(net, params, l) is params[l - 1]["W"]


@pytest.mark.parametrize("rule", ["random", "sign"])
def test_rule_matches_numpy_recursion_and_is_not_the_gradient(x64, rule):
    net = fnn.MLP((5, 7, 6, 3), ("tanh", "sigmoid"), feedback=rule, feedback_seed=3)
    params, x, y = problem(1, net, 9, jnp.float64)
    ours = grad(net, params, x, y)
    assert max(relative_errors(ours, numpy_update(net, params, x, y))) <= 1e-12
    # the output layer's update is the true gradient; the layers below are not
    true = grad_autodiff(net, params, x, y)
    errors = relative_errors(ours, true)
    assert max(errors[-2:]) <= 1e-12 and min(errors[:2]) > 1e-3
    # the same parameters under the default rule give the true gradient
    bp = fnn.MLP((5, 7, 6, 3), ("tanh", "sigmoid"))
    assert max(relative_errors(grad(bp, params, x, y), true)) <= 1e-12


def test_random_feedback_is_fixed_and_independent_of_params():
    net = fnn.MLP((4, 6, 5, 3), "relu", feedback="random", feedback_seed=7)
    p1, _, _ = problem(1, net, 2)
    p2, _, _ = problem(2, net, 2)
    for l in (2, 3):
        B = B_of(net, p1, l)
        np.testing.assert_array_equal(B, B_of(net, p2, l))
        assert B.shape == p1[l - 1]["W"].shape and B.dtype == p1[l - 1]["W"].dtype
    # the documented construction, built independently
    np.testing.assert_allclose(B, numpy_feedback(net, p1, 3), rtol=1e-6)
    other = fnn.MLP((4, 6, 5, 3), "relu", feedback="random", feedback_seed=8)
    assert not np.array_equal(B_of(other, p1, 2), B_of(net, p1, 2))


def test_sign_feedback_follows_the_weights():
    net = fnn.MLP((4, 6, 3), "tanh", feedback="sign")
    params, _, _ = problem(3, net, 2)
    np.testing.assert_array_equal(feedback_matrix(net, params, 2), jnp.sign(params[1]["W"]))


@pytest.mark.parametrize("rule", ["random", "sign"])
def test_feedback_rules_still_learn(rule):
    """Feedback alignment / sign symmetry lower the loss on a learnable problem."""
    net = fnn.MLP((8, 32, 32, 4), "tanh", feedback=rule)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(128, 8)), jnp.float32)
    y = jnp.argmax(x[:, :4] + 0.5 * x[:, 4:], axis=1)
    params, _, _ = problem(0, net, 1)
    opt = optax.sgd(0.2, momentum=0.9)

    @jax.jit
    def train(params):
        def step(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(fnn.loss, argnums=1)(net, params, x, y), state)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, opt.init(params)), None, length=150)[0][0]

    @jax.jit
    def evaluate(params):
        correct = jnp.argmax(fnn.forward(net, params, x), 1) == y
        return fnn.loss(net, params, x, y), jnp.mean(correct)

    before, _ = evaluate(params)
    after, accuracy = evaluate(train(params))
    assert float(after) < 0.5 * float(before) and float(accuracy) > 0.8


def test_check_gradients_flags_feedback_alignment(x64):
    net = fnn.MLP((4, 6, 5, 3), "tanh", feedback="random")
    params, x, y = problem(0, net, 5, jnp.float64)
    result = check_gradients(net, params, x, y, directions=1)
    assert result.first_failure.layer == 2
    assert "B[3]^T delta[3]" in result.first_failure.equation


@pytest.mark.parametrize("bad,error", [("bogus", ValueError), ("", ValueError)])
def test_unknown_feedback_names_it(bad, error):
    with pytest.raises(error, match=f"feedback must be one of .*got {bad!r}"):
        fnn.MLP((3, 2), feedback=bad)


@pytest.mark.parametrize("seed,error", [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_feedback_seed(seed, error):
    with pytest.raises(error, match="feedback_seed"):
        fnn.MLP((3, 2), feedback="random", feedback_seed=seed)
