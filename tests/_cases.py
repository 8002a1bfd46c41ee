"""Shared test data for the suite, built on fnn.testing (so the two never drift)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from fnn.testing import ACTIVATIONS, LABELS, PAIRS, architectures, example

__all__ = ["ACTIVATIONS", "PAIRS", "cases", "grads", "problem", "relative_errors"]


def cases(max_hidden=6, max_width=64, max_batch=64):
    """Hypothesis: ``(net, batch, labels, seed)``: an fnn.testing architecture and what
    :func:`problem` needs to draw its data (inside a test body, so that ``jax.enable_x64``
    there applies to the data too)."""
    return st.tuples(architectures(max_hidden=max_hidden, max_width=max_width),
                     st.integers(1, max_batch), st.sampled_from(LABELS),
                     st.integers(0, 2**31 - 1))


def problem(seed, net, batch, dtype=jnp.float32, labels="int"):
    """``params, x, y`` for ``net`` from one integer seed: :func:`fnn.testing.example`."""
    return example(net, batch, seed=seed, dtype=dtype, labels=labels)


@functools.partial(jax.jit, static_argnums=0)
def grads(loss, net, params, x, y):
    """Gradients with respect to params and x, jitted (eager dispatch of hundreds of small
    ops for every new shape is 5x slower than one compilation)."""
    return jax.grad(loss, argnums=(1, 2))(net, params, x, y)


@functools.partial(jax.jit, static_argnums=0)
def value_and_grads(loss, net, params, x, y):
    """The loss and :func:`grads` from one jitted program (one compilation, not two)."""
    return jax.value_and_grad(loss, argnums=(1, 2))(net, params, x, y)


def relative_errors(tree, reference):
    """Per leaf ``||a - b|| / ||b||`` (absolute error where the reference is exactly zero),
    on the host in float64: eager ``jnp`` here compiled a dozen small programs for every new
    set of shapes (15 for a two-layer net)."""

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        err = float(np.linalg.norm((a - b).ravel()))
        ref = float(np.linalg.norm(b.ravel()))
        return err / ref if ref > 0 else err

    return jax.tree.leaves(jax.tree.map(rel, tree, reference))
