"""Shared test data: random problems for every output/loss pair."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu")
PAIRS = (("softmax", "cce"), ("softmax", "mse"), ("sigmoid", "bce"), ("sigmoid", "mse"),
         ("identity", "mse"))


def targets(rng, net, batch, dtype, labels="int"):
    """Targets for ``net``'s output: int labels or one-hot rows (softmax), 0/1 (sigmoid),
    real values (identity)."""
    k = net.layer_sizes[-1]
    if net.output == "softmax":
        y = rng.integers(0, k, batch).astype(np.int32)
        return jnp.asarray(y) if labels == "int" else jnp.asarray(np.eye(k)[y], dtype)
    if net.output == "sigmoid":
        return jnp.asarray(rng.integers(0, 2, (batch, k)), dtype)
    return jnp.asarray(rng.normal(size=(batch, k)), dtype)


def problem(seed, net, batch, dtype=jnp.float32, labels="int"):
    """``params, x, y`` for ``net`` from one integer seed.

    Drawn with NumPy, not ``jax.random``: eager JAX compiles every random op anew for each
    shape, which made data generation cost more than the gradients under test.
    """
    rng = np.random.default_rng(seed)
    sizes = net.layer_sizes
    params = tuple(
        {"W": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(n), dtype),
         # Nonzero biases, so that the bias gradients and the bias path are exercised.
         "b": jnp.asarray(0.1 * rng.normal(size=m), dtype)}
        for n, m in itertools.pairwise(sizes)
    )
    x = jnp.asarray(rng.normal(size=(batch, sizes[0])), dtype)
    return params, x, targets(rng, net, batch, dtype, labels)


@functools.partial(jax.jit, static_argnums=0)
def grads(loss, net, params, x, y):
    """Gradients with respect to params and x, jitted (eager dispatch of hundreds of small
    ops for every new shape is 5x slower than one compilation)."""
    return jax.grad(loss, argnums=(1, 2))(net, params, x, y)


def relative_errors(tree, reference):
    """Per leaf ``||a - b|| / ||b||`` (absolute error where the reference is exactly zero)."""

    def rel(a, b):
        err = float(jnp.linalg.norm((a - b).ravel()))
        ref = float(jnp.linalg.norm(b.ravel()))
        return err / ref if ref > 0 else err

    return jax.tree.leaves(jax.tree.map(rel, tree, reference))
