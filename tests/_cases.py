"""Shared test data: random problems for every output/loss pair."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import fnn

ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu")
PAIRS = (("softmax", "cce"), ("softmax", "mse"), ("sigmoid", "bce"), ("sigmoid", "mse"),
         ("identity", "mse"))


@st.composite
def cases(draw, max_hidden=6, max_width=64, max_batch=64):
    """Hypothesis: ``(net, batch, labels, seed)`` over architectures (0..max_hidden hidden
    layers of widths 1..max_width, mixed activations, every output/loss pair), batch sizes
    and label forms."""
    hidden = draw(st.integers(0, max_hidden))
    sizes = tuple(draw(st.lists(st.integers(1, max_width), min_size=hidden + 2,
                                max_size=hidden + 2)))
    activation = tuple(draw(st.sampled_from(ACTIVATIONS)) for _ in range(hidden))
    output, loss = draw(st.sampled_from(PAIRS))
    net = fnn.MLP(sizes, activation, output, loss)
    batch = draw(st.integers(1, max_batch))
    labels = draw(st.sampled_from(["int", "one-hot"]))
    return net, batch, labels, draw(st.integers(0, 2**31 - 1))


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
