"""Per-layer diagnostics and the gradient checker."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cases import problem

import fnn
from fnn.diagnostics import GradientCheckError, check_gradients, layer_diagnostics

diagnostics = jax.jit(layer_diagnostics)


def constant_units(net, biases):
    """Params whose first hidden layer has zero weights and the given biases (z = b)."""
    params = list(fnn.init(jax.random.key(0), net))
    params[0] = {"W": jnp.zeros_like(params[0]["W"]), "b": jnp.asarray(biases, jnp.float32)}
    return tuple(params)


def test_dead_relu_fraction():
    net = fnn.MLP((3, 4, 2), "relu")
    params = constant_units(net, [-1.0, -2.0, 0.5, 0.0])  # z = 0 counts as dead: relu'(0) = 0
    x = jax.random.normal(jax.random.key(1), (6, 3))
    d = diagnostics(net, params, x, jnp.zeros(6, jnp.int32))
    np.testing.assert_array_equal(d["dead_fraction"], [0.75])
    np.testing.assert_array_equal(d["inactive_fraction"], [0.75])
    np.testing.assert_array_equal(d["saturated_fraction"], [0.0])
    # a unit alive for some samples only is inactive for those, but not dead
    params = ({"W": jnp.array([[1.0, 0, 0], [0, 0, 0]]), "b": jnp.array([0.0, -1.0])},
              params[1] | {"W": params[1]["W"][:, :2]})
    net = fnn.MLP((3, 2, 2), "relu")
    x = jnp.array([[1.0, 0, 0], [-1.0, 0, 0], [2.0, 0, 0], [-3.0, 0, 0]])
    d = diagnostics(net, params, x, jnp.zeros(4, jnp.int32))
    np.testing.assert_array_equal(d["dead_fraction"], [0.5])
    np.testing.assert_array_equal(d["inactive_fraction"], [0.75])


@pytest.mark.parametrize("activation,biases,expected", [
    ("sigmoid", [10.0, -10.0, 4.0, 0.0], 0.5),  # sigmoid'(4) = 0.0177 >= 0.01
    ("tanh", [5.0, 0.0, -3.5, 2.0], 0.5),  # 1 - tanh(2)^2 = 0.0707
])
def test_saturated_fraction(activation, biases, expected):
    net = fnn.MLP((3, 4, 2), activation)
    params = constant_units(net, biases)
    d = diagnostics(net, params, jnp.ones((5, 3)), jnp.zeros(5, jnp.int32))
    np.testing.assert_allclose(d["saturated_fraction"], [expected])
    np.testing.assert_array_equal(d["dead_fraction"], [0.0])


def test_norms_equal_jax_grad_leaves_and_backprop_deltas(x64):
    net = fnn.MLP((6, 9, 7, 4), ("tanh", "relu"))
    params, x, y = problem(0, net, 10, jnp.float64)
    d = diagnostics(net, params, x, y)
    g = jax.jit(jax.grad(fnn.loss_autodiff, argnums=1))(net, params, x, y)
    expected = [np.sqrt(np.sum(np.square(p["W"])) + np.sum(np.square(p["b"]))) for p in g]
    np.testing.assert_allclose(d["grad_norm"], expected, rtol=1e-12)
    bp = jax.jit(fnn.backprop)(net, params, x, y)
    np.testing.assert_allclose(
        d["delta_norm"], [np.mean(np.linalg.norm(D, axis=1)) for D in bp.delta[1:]], rtol=1e-12)
    np.testing.assert_allclose(d["loss"], bp.loss, rtol=1e-14)
    assert d["dead_fraction"].shape == (2,) and d["grad_norm"].shape == (3,)


def test_runs_inside_a_jitted_train_step():
    net = fnn.MLP((5, 8, 3), "tanh")
    params, x, y = problem(1, net, 16)
    opt = optax.adam(1e-2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        g = jax.grad(fnn.loss, argnums=1)(net, params, x, y)
        updates, state = opt.update(g, state)
        return optax.apply_updates(params, updates), state, layer_diagnostics(net, params, x, y)

    chex.clear_trace_counter()
    state = opt.init(params)
    logs = []
    for _ in range(3):
        params, state, d = step(params, state)
        logs.append(d)
    assert all(bool(jnp.all(jnp.isfinite(d["grad_norm"]))) for d in logs)
    assert float(logs[-1]["loss"]) < float(logs[0]["loss"])


def test_logistic_regression_has_no_hidden_layers():
    net = fnn.MLP((4, 3))
    params, x, y = problem(2, net, 5)
    d = diagnostics(net, params, x, y)
    assert d["dead_fraction"].shape == (0,) and d["grad_norm"].shape == (1,)


def test_check_gradients_passes_for_a_correct_net():
    net = fnn.MLP((4, 6, 5, 3), ("relu", "sigmoid"), "sigmoid")
    params, x, y = problem(0, net, 7)  # float32 in, checked in float64
    result = check_gradients(net, params, x, y, raise_on_error=True)
    assert result.ok and bool(result) and result.first_failure is None
    assert len(result.checks) == 3 * 3 + 3
    assert str(result).startswith("gradient check passed: 12 checks")
    assert max(c.error for c in result.checks) < 1e-8


def test_check_gradients_names_the_layer_of_a_wrong_activation_derivative(x64, monkeypatch):
    net = fnn.MLP((4, 6, 5, 4, 3), ("relu", "tanh", "relu"))
    params, x, y = problem(1, net, 6, jnp.float64)
    original = fnn.activations.derivative_from_output

    def wrong_tanh(name, a, *args):
        return (1.01 if name == "tanh" else 1.0) * original(name, a, *args)

    monkeypatch.setattr(fnn.activations, "derivative_from_output", wrong_tanh)
    result = check_gradients(net, params, x, y, directions=1)
    first = result.first_failure
    assert not result.ok and first.layer == 2
    assert first.equation.startswith("delta[2] = W[3]^T delta[3] * g'(z[2])")
    assert 5e-3 < first.error < 2e-2
    assert str(result).startswith("gradient check FAILED: layer 2: delta[2] = W[3]^T delta[3]")
    assert "disagrees with jax.grad (max rel err 1.0e-02)" in str(first)
    # the layers above the error are fine
    assert all(c.passed for c in result.checks if c.layer is not None and c.layer > 2)
    with pytest.raises(GradientCheckError, match="layer 2: delta\\[2\\]"):
        check_gradients(net, params, x, y, directions=0, raise_on_error=True)


def test_check_gradients_names_a_wrong_output_delta(x64, monkeypatch):
    net = fnn.MLP((4, 6, 3), "tanh", "identity")
    params, x, y = problem(2, net, 5, jnp.float64)
    original = fnn.losses.output_delta
    monkeypatch.setattr(fnn.losses, "output_delta", lambda *a: 1.01 * original(*a))
    result = check_gradients(net, params, x, y, directions=2)
    assert result.first_failure.layer == 2
    assert result.first_failure.equation.startswith("delta[2] = dl/dz[2] (identity output")
    # the finite differences catch it too
    assert not any(c.passed for c in result.checks if c.layer is None)
