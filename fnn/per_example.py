r"""Per-example gradient norms, clipped gradients and DP-SGD, from the deltas alone.

For a dense layer the gradient of sample $i$'s own loss $\ell_i$ is an outer product,
$\partial \ell_i / \partial W^{[l]} = \delta_i^{[l]} a_i^{[l-1]T}$, so its Frobenius norm is
$\lVert \delta_i^{[l]} \rVert \, \lVert a_i^{[l-1]} \rVert$ (Goodfellow 2015, "Efficient
per-example gradient computations"). With the bias, $\partial \ell_i / \partial b^{[l]} =
\delta_i^{[l]}$, the norm of the whole per-example gradient $g_i$ (all layers, weights and
biases) is

$$\lVert g_i \rVert^2 = \sum_{l=1}^{L} \lVert \delta_i^{[l]} \rVert^2
\big(\lVert a_i^{[l-1]} \rVert^2 + 1\big).$$

This is the gradient of $\ell_i$, **not** of $\ell_i / N$: the per-example gradient that DP-SGD
clips (Abadi et al. 2016). A per-example scale $c_i$ then enters the batch contraction as a
row scaling of the deltas, $\sum_i c_i \delta_i^{[l]} a_i^{[l-1]T} = (C D^{[l]})^T A^{[l-1]}$
with $C = \operatorname{diag}(c)$, so clipping costs one forward pass, one delta recursion and
the same contraction as the plain gradient; no tensor of per-example gradients is ever formed.

The deltas here are those of [`fnn.delta_recursion`][fnn.backpropagation.delta_recursion]: for a net
with ``feedback="random"`` or ``"sign"`` every quantity is that rule's update, not a gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fnn import _validation, precision
from fnn.backpropagation import _cast_like, batch_gradients, trace_and_deltas
from fnn.network import MLP, Params

Array = jax.Array


def norms_from_deltas(deltas: tuple[Array, ...], a: tuple[Array, ...], *,
                      policy: precision.Policy | None = None) -> Array:
    r"""$\lVert g_i \rVert = \big(\sum_l \lVert \delta_i^{[l]} \rVert^2
    (\lVert a_i^{[l-1]} \rVert^2 + 1)\big)^{1/2}$ from stacked deltas and activations.

    Args:
      deltas: per layer $D^{[l]}$ of shape ``(N, n[l])``, ``l = 1 .. L``.
      a: per layer $A^{[l]}$ of shape ``(N, n[l])``, ``l = 0 .. L-1`` (more are ignored).
      policy: a precision policy (``net.precision``): the sums of squares are then taken in
        the accumulation dtype (float32 for bfloat16 compute); ``None``: as given.

    Returns:
      Shape ``(N,)``: the norm of each sample's gradient over all weights and biases.
    """
    wide = lambda v: precision.accumulate(policy, v)  # noqa: E731
    squares = [
        jnp.sum(wide(D) * wide(D), axis=1) * (jnp.sum(wide(A) * wide(A), axis=1) + 1)
        for D, A in zip(deltas, a[: len(deltas)], strict=True)
    ]
    return jnp.sqrt(sum(squares[1:], squares[0]))


def per_example_grad_norms(net: MLP, params: Params, x: ArrayLike, y: ArrayLike) -> Array:
    r"""The norm of each sample's own gradient $g_i = \partial \ell_i / \partial \theta$.

    All layers, weights and biases: $\lVert g_i \rVert^2 = \sum_l \lVert \delta_i^{[l]}
    \rVert^2 (\lVert a_i^{[l-1]} \rVert^2 + 1)$, from one forward pass and one delta recursion.
    It is the gradient of $\ell_i$, not of $\ell_i / N$ (multiply by $1/N$ for the latter).

    Args:
      net, params, x, y: as for [`fnn.loss`][fnn.backpropagation.loss].

    Returns:
      Shape ``(N,)`` (``(1,)`` for a single sample without batch axis).

    >>> import fnn
    >>> net = fnn.MLP((3, 4, 2))
    >>> per_example_grad_norms(net, fnn.init(jax.random.key(0), net), jnp.ones((5, 3)),
    ...                        jnp.zeros(5, int)).shape
    (5,)
    """
    params, x, y = _validation.inputs(net, params, x, y)
    _, a, deltas = trace_and_deltas(net, params, x, y)
    return norms_from_deltas(deltas, a, policy=net.precision)


def _non_negative(name: str, value: ArrayLike) -> None:
    """Raise for a negative (or non-scalar) value when it is known now (not under ``jit``)."""
    if jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
    concrete = _validation._concrete(value)
    if concrete is not None and not concrete >= 0:
        raise ValueError(f"{name} must be >= 0, got {concrete}")


def clip_factors(norms: ArrayLike, clip_norm: ArrayLike) -> Array:
    r"""$c_i = \min(1, C / \lVert g_i \rVert)$, equal to 1 where $\lVert g_i \rVert = 0$.

    Written with the double ``where`` so that neither the value nor its derivative is NaN at
    a zero norm (a sample the network already fits perfectly, or ``clip_norm = 0``).
    """
    norms = jnp.asarray(norms)
    clip = norms > clip_norm
    return jnp.where(clip, clip_norm / jnp.where(clip, norms, 1), 1).astype(norms.dtype)


class Clipped(NamedTuple):
    """What [`clipped_grad_and_norms`][fnn.per_example.clipped_grad_and_norms] returns."""

    grads: Params
    r"""$\frac1N \sum_i c_i g_i$, like params."""
    norms: Array
    r"""$\lVert g_i \rVert$ before clipping, shape ``(N,)``."""


def clipped_grad_and_norms(
    net: MLP, params: Params, x: ArrayLike, y: ArrayLike, clip_norm: ArrayLike
) -> Clipped:
    r"""[`clipped_grad`][fnn.per_example.clipped_grad] and the unclipped per-example norms it used
    (for logging)."""
    _non_negative("clip_norm", clip_norm)
    params, x, y = _validation.inputs(net, params, x, y)
    _, a, deltas = trace_and_deltas(net, params, x, y)
    norms = norms_from_deltas(deltas, a, policy=net.precision)
    # Deltas are linear in delta[L]: scaling sample i's delta[L] by c_i / N scales its row of
    # every D[l] by the same factor, so the rows are scaled here, after the one recursion.
    rows = (clip_factors(norms, clip_norm) / x.shape[0])[:, None]
    grads = batch_gradients(tuple(D * rows for D in deltas), a, policy=net.precision)
    return Clipped(_cast_like(grads, params), norms)


def clipped_grad(
    net: MLP, params: Params, x: ArrayLike, y: ArrayLike, clip_norm: ArrayLike
) -> Params:
    r"""The mean of the per-example gradients, each clipped to norm at most ``clip_norm``.

    $$\bar g = \frac1N \sum_{i=1}^N \min\Big(1, \frac{C}{\lVert g_i \rVert}\Big) g_i,
    \qquad \frac{\partial}{\partial W^{[l]}}: \frac1N (C D^{[l]})^T A^{[l-1]},\quad
    \frac{\partial}{\partial b^{[l]}}: \frac1N \mathbf 1^T C D^{[l]}.$$

    Forward pass -> deltas -> norms ([`norms_from_deltas`][fnn.per_example.norms_from_deltas]) ->
    scale the rows of every $D^{[l]}$ by $c_i / N$ -> the batch contraction of
    [`fnn.batch_gradients`][fnn.backpropagation.batch_gradients]. One forward pass and one delta
    recursion; no per-example gradient is formed. A sample with $\lVert g_i \rVert = 0$ gets
    $c_i = 1$ (it contributes zero, never NaN).

    Args:
      net, params, x, y: as for [`fnn.loss`][fnn.backpropagation.loss].
      clip_norm: $C \ge 0$, a scalar (may be traced).

    Returns:
      Like ``params``. With ``clip_norm`` above every $\lVert g_i \rVert$ it equals
      ``jax.grad(fnn.loss)``.

    >>> import fnn
    >>> net = fnn.MLP((3, 4, 2))
    >>> g = clipped_grad(net, fnn.init(jax.random.key(0), net), jnp.ones((5, 3)),
    ...                  jnp.zeros(5, int), 0.1)
    >>> g[0]["W"].shape
    (4, 3)
    """
    return clipped_grad_and_norms(net, params, x, y, clip_norm).grads


def dp_noise(key: ArrayLike, like: Params, stddev: ArrayLike) -> Params:
    r"""Independent Gaussian noise $\mathcal N(0, \sigma^2)$ for every entry of ``like``.

    Args:
      key: a ``jax.random`` key; the same key gives the same noise.
      like: a pytree of arrays (params or gradients); the noise has its structure, shapes and
        dtypes.
      stddev: $\sigma$, a scalar.

    Returns:
      A pytree like ``like``.
    """
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(key, len(leaves))
    noise = [
        jnp.asarray(stddev, leaf.dtype) * jax.random.normal(k, jnp.shape(leaf), leaf.dtype)
        for k, leaf in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, noise)


def dp_gradient(
    net: MLP,
    params: Params,
    x: ArrayLike,
    y: ArrayLike,
    clip_norm: ArrayLike,
    noise_multiplier: ArrayLike,
    key: ArrayLike,
) -> Params:
    r"""The DP-SGD gradient (Abadi et al. 2016): clipped mean plus Gaussian noise.

    $$\tilde g = \frac1N \Big(\sum_i \min\big(1, \tfrac{C}{\lVert g_i \rVert}\big) g_i
    + \mathcal N(0, \sigma^2 C^2 I)\Big),$$

    i.e. [`clipped_grad`][fnn.per_example.clipped_grad] plus noise of standard deviation
    ``noise_multiplier * clip_norm / N`` in every entry. It is an ordinary gradient pytree, so any
    optax optimizer takes it::

        g = dp_gradient(net, params, x, y, clip_norm, noise_multiplier, key)
        updates, opt_state = optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)

    (a ``GradientTransformation`` would not fit: clipping needs the samples, and a
    transformation only sees the gradient). Draw a fresh ``key`` every step.

    Privacy accounting is **out of scope**: this function does not compute $(\epsilon,
    \delta)$, which depends on the sampling of the batches, the number of steps and an
    accountant (e.g. the RDP accountant of TensorFlow Privacy or Opacus). Nor does it make
    any other part of a training pipeline private.

    Args:
      net, params, x, y: as for [`fnn.loss`][fnn.backpropagation.loss].
      clip_norm: $C$, the per-example clipping norm.
      noise_multiplier: $\sigma$; the noise's standard deviation is $\sigma C / N$.
      key: a ``jax.random`` key; the same key gives the same noise.

    Returns:
      Like ``params``.
    """
    _non_negative("noise_multiplier", noise_multiplier)
    grads = clipped_grad(net, params, x, y, clip_norm)
    batch = 1 if jnp.ndim(x) == 1 else jnp.shape(x)[0]
    return jax.tree.map(jnp.add, grads, dp_noise(key, grads, noise_multiplier * clip_norm / batch))
