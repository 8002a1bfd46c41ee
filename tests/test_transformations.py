"""fnn.loss under jit, vmap, grad-of-grad; no retracing; the custom rule is on the path."""

import functools

import chex
import jax
import jax.numpy as jnp
import pytest
from _cases import grads, problem, relative_errors, value_and_grads

import fnn

NET = fnn.MLP((6, 8, 5, 3), ("tanh", "relu"))


@pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_jit_equals_eager(x64, wrap):
    params, x, y = problem(0, NET, 9, jnp.float64)
    grad = wrap(jax.value_and_grad(fnn.loss, argnums=(1, 2)))
    value, ours = grad(NET, params, x, y)
    # the reference jitted: only the function under test runs eagerly (eager float64
    # autodiff compiles every operation on its own)
    ref_value, ref_grads = value_and_grads(fnn.loss_autodiff, NET, params, x, y)
    assert float(value) == pytest.approx(float(ref_value), rel=1e-14)
    assert max(relative_errors(ours, ref_grads)) <= 1e-12


def test_jitted_equals_eager_float32():
    params, x, y = problem(0, NET, 9)
    grad = jax.grad(fnn.loss, argnums=1)
    chex.assert_trees_all_close(jax.jit(grad)(NET, params, x, y), grad(NET, params, x, y),
                                rtol=1e-6, atol=1e-7)


def test_vmap_over_a_stack_of_parameter_sets(x64):
    sets = [problem(s, NET, 5, jnp.float64)[0] for s in range(4)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *sets)
    _, x, y = problem(0, NET, 5, jnp.float64)
    losses = jax.vmap(fnn.loss, in_axes=(None, 0, None, None))(NET, stacked, x, y)
    assert losses.shape == (4,)
    # the references jitted: one compilation each for the four sets (eagerly, every float64
    # operation compiled on its own: 10 s)
    loss = jax.jit(fnn.loss, static_argnums=0)
    for i, p in enumerate(sets):
        assert float(losses[i]) == pytest.approx(float(loss(NET, p, x, y)), rel=1e-14)
    stacked_grads = jax.vmap(jax.grad(fnn.loss, argnums=1), in_axes=(None, 0, None, None))(
        NET, stacked, x, y)
    for i, p in enumerate(sets):
        ref = grads(fnn.loss_autodiff, NET, p, x, y)[0]
        assert max(relative_errors(jax.tree.map(lambda g, i=i: g[i], stacked_grads), ref)) <= 1e-12


def test_grad_of_grad_equals_autodiff(x64):
    """Reverse over reverse through the custom rule: d/dx of ||dL/dparams||^2."""
    net = fnn.MLP((3, 4, 2), ("tanh",))
    params, x, y = problem(1, net, 5, jnp.float64)

    def outer(loss_fn):
        def squared_grad_norm(x):
            g = jax.grad(loss_fn, argnums=1)(net, params, x, y)
            return sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(g))

        return jax.grad(squared_grad_norm)(x)

    ours, reference = outer(fnn.loss), jax.jit(lambda: outer(fnn.loss_autodiff))()
    assert float(jnp.linalg.norm(reference)) > 0
    assert max(relative_errors(ours, reference)) <= 1e-10


def test_hessian_vector_product_by_reverse_over_reverse(x64):
    net = fnn.MLP((3, 4, 2), ("sigmoid",))
    params, x, y = problem(2, net, 5, jnp.float64)
    v = jax.tree.map(jnp.ones_like, params)

    @functools.partial(jax.jit, static_argnums=0)  # one program, not 144 eager ones
    def hvp(loss_fn):
        g = lambda p: jax.grad(loss_fn, argnums=1)(net, p, x, y)  # noqa: E731
        return jax.grad(lambda p: sum(jax.tree.leaves(jax.tree.map(
            lambda a, b: jnp.sum(a * b), g(p), v))))(params)

    assert max(relative_errors(hvp(fnn.loss), hvp(fnn.loss_autodiff))) <= 1e-10


def test_no_retracing_for_repeated_calls():
    chex.clear_trace_counter()

    def gradient(net, params, x, y):
        return jax.grad(fnn.loss, argnums=1)(net, params, x, y)

    grad = jax.jit(chex.assert_max_traces(gradient, n=1))
    for seed in range(3):
        params, x, y = problem(seed, NET, 7)
        grad(NET, params, x, y)
    # Same shapes with a freshly built but equal architecture: still no new trace.
    grad(fnn.MLP((6, 8, 5, 3), ("tanh", "relu")), params, x, y)
    # A different architecture must trace again: the counter would then raise.
    with pytest.raises(AssertionError, match="traced > 1 times"):
        grad(fnn.MLP((6, 8, 5, 3), "tanh"), params, x, y)


def test_custom_rule_is_on_the_path():
    params, x, y = problem(0, NET, 4)
    ours = str(jax.make_jaxpr(jax.grad(fnn.loss, argnums=1))(NET, params, x, y))
    reference = str(jax.make_jaxpr(jax.grad(fnn.loss_autodiff, argnums=1))(NET, params, x, y))
    assert "custom_vjp_call" in str(jax.make_jaxpr(fnn.loss)(NET, params, x, y))
    assert "custom_vjp_call" not in str(jax.make_jaxpr(fnn.loss_autodiff)(NET, params, x, y))
    assert ours != reference


def test_primal_equals_fwd(x64):
    """Without differentiation only the primal runs: it must equal what fwd computes."""
    from fnn.backpropagation import _loss_fwd

    params, x, y = problem(3, NET, 6, jnp.float64)
    assert float(fnn.loss(NET, params, x, y)) == float(_loss_fwd(NET, params, x, y)[0])


def test_no_per_example_gradients_in_the_compiled_backward():
    """The batch gradient is a contraction: no (batch, n[l], n[l-1]) tensor in the HLO."""
    net = fnn.MLP((48, 40, 10))
    params, x, y = problem(0, net, 32)
    hlo = jax.jit(jax.grad(fnn.loss, argnums=1)).lower(net, params, x, y).compile().as_text()
    assert "f32[32,40,48]" not in hlo and "f32[32,10,40]" not in hlo
    assert "f32[40,48]" in hlo
    # vmap of the per-sample products leaves ordinary matrix products: no batched dot.
    assert "lhs_batch_dims" not in hlo and "lhs_contracting_dims" in hlo
