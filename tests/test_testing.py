"""fnn.testing on itself: its strategies draw valid problems, its assertions catch what they
promise (a delta off by 0.1%, a wrong user derivative, a wrong custom backward, a wrong
per-example norm, a retrace) and name where."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import find, given, settings
from jax.scipy.special import erf

import fnn
import fnn.testing as ft
from fnn import losses, per_example


def gelu(z):
    return 0.5 * z * (1 + erf(z / math.sqrt(2)))


def gelu_derivative(z):
    return 0.5 * (1 + erf(z / math.sqrt(2))) + z * jnp.exp(-z * z / 2) / math.sqrt(2 * math.pi)


GELU = fnn.Activation("gelu", gelu, gelu_derivative)
WRONG_GELU = fnn.Activation("gelu", gelu, lambda z: 1.001 * gelu_derivative(z))
# tanh written by the user with g' read off the output, as fnn writes its own
TANH = fnn.Activation("my_tanh", jnp.tanh, lambda a: 1 - a * a, from_output=True)


@settings(max_examples=4)
@given(ft.problems(activations=(*ft.ACTIVATIONS, GELU, TANH), max_batch=8))
def test_problems_are_valid_and_bounded(problem):
    net, params, x, y = problem
    assert net.depth <= 4 and max(net.layer_sizes) <= 32 and 1 <= x.shape[0] <= 8
    assert x.shape[1] == net.layer_sizes[0] and x.dtype == jnp.float32
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, fnn.init(jax.random.key(0), net))
    assert bool(jnp.isfinite(jax.jit(fnn.loss)(net, params, x, y)))  # targets are valid


@settings(max_examples=4)
@given(ft.problems(activations=(*ft.ACTIVATIONS, GELU, TANH), max_hidden=2, max_width=16,
                   max_batch=8))
def test_hand_written_gradients_match_autodiff(problem):
    """fnn's own backward, and the two user activations', pass on drawn problems."""
    ft.assert_gradients_match(*problem)


def test_architectures_shrink_to_small_nets():
    net = find(ft.architectures(), lambda net: net.depth >= 3)
    assert net.layer_sizes == (1, 1, 1, 1) and net.activation == ("identity", "identity")


def test_strategies_cover_feedback_rules_and_policies():
    net = find(ft.architectures(feedback=("backprop", "random"), precision=(None, "mixed")),
               lambda net: net.feedback == "random" and net.precision is not None)
    assert net.precision == fnn.POLICIES["mixed"]
    params = find(ft.params(net), lambda p: True)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    x, y = find(ft.batches(net, max_batch=4), lambda b: b[0].shape[0] == 4)
    assert x.shape == (4, net.layer_sizes[0]) and y.shape[0] == 4


def test_example_is_deterministic():
    net = fnn.MLP((3, 4, 2))
    a, b = ft.example(net, 5, seed=7), ft.example(net, 5, seed=7)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)
    assert ft.example(net, 5, labels="one-hot")[2].shape == (5, 2)


NET = fnn.MLP((4, 16, 8, 3), (GELU, "tanh"))


def test_catches_a_delta_off_by_a_tenth_of_a_percent(monkeypatch):
    params, x, y = ft.example(NET, 8)
    ft.assert_gradients_match(NET, params, x, y)
    original = losses.output_delta
    monkeypatch.setattr(losses, "output_delta", lambda *a: 1.001 * original(*a))
    jax.clear_caches()  # the compiled gradients would not see the patched function
    with pytest.raises(AssertionError, match=r"first at layer 3 of 3 \(output softmax, loss "
                                             r"cce; .*\n  layer 3: params\[2\]\['W'\] at index"):
        ft.assert_gradients_match(NET, params, x, y)
    jax.clear_caches()


def test_catches_a_wrong_user_derivative_and_names_its_layer():
    net = fnn.MLP((4, 16, 8, 3), (WRONG_GELU, "tanh"))
    params, x, y = ft.example(net, 8)
    with pytest.raises(AssertionError) as info:
        ft.assert_gradients_match(net, params, x, y)
    message = str(info.value)
    assert "first at layer 1 of 3 (g = gelu" in message
    assert "layer 1: params[0]['W'] at index" in message and "layer 2" not in message
    assert "relative error of the leaf 0.001" in message


def test_feedback_rules_are_refused():
    net = fnn.MLP((3, 4, 2), feedback="sign")
    with pytest.raises(ValueError, match="is not the gradient"):
        ft.assert_gradients_match(net, *ft.example(net))


@jax.custom_vjp
def softplus(z):
    return jax.nn.softplus(z)


def _softplus_fwd(z):
    return softplus(z), z


def _softplus_bwd(z, g):
    return (g * jax.nn.sigmoid(z) * jnp.where(jnp.arange(z.shape[-1]) == 2, 1.01, 1.0),)


softplus.defvjp(_softplus_fwd, _softplus_bwd)


def test_assert_vjp_matches_catches_a_wrong_custom_backward():
    z = jnp.linspace(-2.0, 2.0, 5)
    with pytest.raises(AssertionError, match=r"cotangent of args\[0\] at index \(2,\)"):
        ft.assert_vjp_matches(softplus, jax.nn.softplus, z)
    net = fnn.MLP((3, 5, 2), "sigmoid")
    ft.assert_vjp_matches(fnn.loss, fnn.loss_autodiff, net, *ft.example(net))


def test_assert_per_example_match_passes_and_catches_a_wrong_norm(monkeypatch):
    net = fnn.MLP((5, 6, 3), "tanh")
    params, x, y = ft.example(net, 6, seed=3)
    ft.assert_per_example_match(net, params, x, y)
    original = per_example.norms_from_deltas

    def wrong(deltas, a, **kw):
        return original(deltas, a, **kw).at[4].multiply(1.001)

    monkeypatch.setattr(per_example, "norms_from_deltas", wrong)
    jax.clear_caches()
    with pytest.raises(AssertionError, match=r"\|\|g_i\|\| of sample i = 4"):
        ft.assert_per_example_match(net, params, x, y, clip_norm=1e6)
    jax.clear_caches()


def test_assert_max_traces_counts_per_wrapper_and_names_the_arguments():
    def gradient(net, params, x, y):
        return jax.grad(fnn.loss, argnums=1)(net, params, x, y)

    net = fnn.MLP((3, 4, 2))
    for _ in range(2):  # a fresh wrapper starts from zero (chex's global counter would not)
        grad = ft.assert_max_traces(gradient, n=1)
        for seed in range(3):
            grad(fnn.MLP((3, 4, 2)), *ft.example(net, seed=seed))
    with pytest.raises(AssertionError, match=r"(?s)gradient traced 2 times, at most 1 allowed.*"
                                             r"\n  trace 2: MLP\(layer_sizes=\(3, 4, 2\), "
                                             r"activation=\('tanh',\)"):
        grad(fnn.MLP((3, 4, 2), "tanh"), *ft.example(net))


def test_strategies_name_the_extra_without_hypothesis():
    """The assertions import and run without hypothesis; the strategies say what to install."""
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import fnn, fnn.testing as ft\n"
            "net = fnn.MLP((3, 2)); ft.assert_gradients_match(net, *ft.example(net))\n"
            "try:\n    ft.problems()\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "pip install 'fnn[testing]'" in out


def test_assertions_compute_with_float32_products_whatever_the_caller_set():
    """On a GPU JAX's default float32 products are TF32, and two orders of the same products
    then differ by 2e-4 (seen on an H200): the assertions trace both sides with "highest"
    precision. Checked here by what a user's activation sees while it is traced (a
    bfloat16-precision caller, a fresh activation so nothing comes from a cache)."""
    seen = []

    def g(z):
        seen.append(jax.config.jax_default_matmul_precision)
        return jnp.tanh(z)

    spy = fnn.Activation("spy", g, lambda z: 1 - jnp.tanh(z) ** 2)
    net = fnn.MLP((3, 4, 2), spy)
    with jax.default_matmul_precision("bfloat16"):
        ft.assert_gradients_match(net, *ft.example(net))
        ft.assert_per_example_match(net, *ft.example(net, 4))
        ft.assert_vjp_matches(fnn.loss, fnn.loss_autodiff, net, *ft.example(net))
        assert jax.config.jax_default_matmul_precision == "bfloat16"  # restored afterwards
    assert seen and set(seen) == {"highest"}, seen
