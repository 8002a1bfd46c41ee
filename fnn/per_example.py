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

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import random as jax_random
from jax.typing import ArrayLike

from fnn import _validation, losses, precision
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
    grads, norms, _ = _clipped_sum(net, params, x, y, clip_norm)
    return Clipped(grads, norms)


def _clipped_sum(net, params, x, y, clip_norm, mask=None, denominator=None):
    r"""$\frac1d \sum_i m_i c_i g_i$, the norms $\lVert g_i \rVert$ and the losses $\ell_i$.

    $d$ is ``denominator`` (default: the rows of ``x``), $m_i$ the ``mask`` (default all
    ones). A masked row's scaled deltas are exactly zero (``where``, not a product), so it
    contributes exactly nothing as long as its activations are finite. The losses come from
    the same forward pass (unused, XLA drops them). Under a precision policy the norms are
    float32 and the products accumulate in float32.
    """
    _non_negative("clip_norm", clip_norm)
    params, x, y = _validation.inputs(net, params, x, y)
    if mask is not None and jnp.shape(mask) != x.shape[:1]:
        raise ValueError(f"mask must have shape {x.shape[:1]} (one entry per row of x), "
                         f"got {jnp.shape(mask)}")
    z, a, deltas = trace_and_deltas(net, params, x, y)
    norms = norms_from_deltas(deltas, a, policy=net.precision)
    # Deltas are linear in delta[L]: scaling sample i's delta[L] by c_i / N scales its row of
    # every D[l] by the same factor, so the rows are scaled here, after the one recursion.
    rows = (clip_factors(norms, clip_norm) / (x.shape[0] if denominator is None
                                                else denominator))[:, None]
    scaled = tuple(D * rows if mask is None else jnp.where(mask[:, None], D * rows, 0)
                   for D in deltas)
    grads = batch_gradients(scaled, a, policy=net.precision)
    sample_losses = jax.vmap(lambda z, y: losses.sample_loss(net.output, net.loss, z, y))(
        z[-1], y)
    return _cast_like(grads, params), norms, sample_losses


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


def _threefry2x32(k1, k2, x1, x2):
    """The Threefry-2x32 hash (20 rounds; Salmon et al. 2011) that ``jax.random`` uses,
    unrolled: JAX lowers it on CPU as a loop of 5 passes over the whole array, which XLA
    cannot fuse into what consumes the bits (measured 3.6x the time for 1.9M numbers)."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for block in range(5):
        for r in ((13, 15, 26, 6), (17, 29, 16, 24))[block % 2]:
            x1 = x1 + x2
            x2 = x1 ^ ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r)))
        x1 = x1 + ks[(block + 1) % 3]
        x2 = x2 + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x1, x2


def _threefry_bits(key, bit_width, shape):
    """``jax.random.bits`` of a threefry key (``jax_threefry_partitionable``, the default):
    the hash of the 64-bit counters ``0 .. n-1``, high and low 32 bits."""
    n = math.prod(shape)
    if n >= 2**32:
        raise NotImplementedError("dp_noise draws fewer than 2**32 numbers at once")
    b1, b2 = _threefry2x32(key[0], key[1], jnp.zeros(shape, jnp.uint32),
                           jax.lax.iota(jnp.uint32, n).reshape(shape))
    dtype = jnp.dtype(f"uint{bit_width}")
    if bit_width == 64:
        return (b1.astype(dtype) << dtype.type(32)) | b2.astype(dtype)
    return (b1 ^ b2).astype(dtype)


_UNROLLED_THREEFRY = jax_random.define_prng_impl(
    key_shape=(2,), seed=jax_random.threefry_prng_impl.seed,
    split=jax_random.threefry_prng_impl.split, fold_in=jax_random.threefry_prng_impl.fold_in,
    random_bits=_threefry_bits, name="threefry2x32_unrolled")
"""JAX's threefry key with the unrolled hash: the same bits (tested), fused by XLA:CPU."""


def _unrolled(key):
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # a raw uint32[2] key
        return jax.random.wrap_key_data(key, impl=_UNROLLED_THREEFRY)
    if str(jax.random.key_impl(key)) != "threefry2x32":
        return key
    return jax.random.wrap_key_data(jax.random.key_data(key), impl=_UNROLLED_THREEFRY)


def dp_noise(key: ArrayLike, like: Params, stddev: ArrayLike) -> Params:
    r"""Independent Gaussian noise $\mathcal N(0, \sigma^2)$ for every entry of ``like``.

    ``jax.random.normal`` with ``key``'s split, bitwise; a threefry key's bits come from an
    unrolled hash that XLA fuses into the update that consumes the noise (no temporary the
    size of the parameters, 3.6x faster on CPU).

    Args:
      key: a ``jax.random`` key; the same key gives the same noise.
      like: a pytree of arrays (params or gradients); the noise has its structure, shapes and
        dtypes.
      stddev: $\sigma$, a scalar.

    Returns:
      A pytree like ``like``.
    """
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(_unrolled(key), len(leaves))
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
    *,
    mask: ArrayLike | None = None,
    expected_batch: ArrayLike | None = None,
) -> Params:
    r"""The DP-SGD gradient (Abadi et al. 2016): clipped sum plus Gaussian noise, over $d$.

    $$\tilde g = \frac1d \Big(\sum_i m_i \min\big(1, \tfrac{C}{\lVert g_i \rVert}\big) g_i
    + \mathcal N(0, \sigma^2 C^2 I)\Big),$$

    with $d$ the number of rows $N$ and $m_i = 1$ by default (then it is
    [`clipped_grad`][fnn.per_example.clipped_grad] plus noise of standard deviation
    ``noise_multiplier * clip_norm / N`` in every entry). For a Poisson-sampled batch
    ([`fnn.privacy.poisson_sample`][fnn.privacy.poisson_sample]) pass the padded batch, its
    ``mask`` and ``expected_batch`` $= qN$: masked rows contribute exactly nothing, and the
    sum is divided by the expected batch size, not the sampled one, as the privacy analysis
    assumes. It is an ordinary gradient pytree, so any optax optimizer takes it::

        g = dp_gradient(net, params, x, y, clip_norm, noise_multiplier, key)
        updates, opt_state = optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)

    (a ``GradientTransformation`` would not fit: clipping needs the samples, and a
    transformation only sees the gradient). Draw a fresh ``key`` every step.

    The $(\varepsilon, \delta)$ this spends depends on how the batches are sampled and on
    the number of steps: [`fnn.privacy.epsilon`][fnn.privacy.epsilon] accounts for
    Poisson-sampled steps, which [`fnn.fit`][fnn.training.fit] with ``dp=`` runs. A fixed
    batch (``mask=None``) is not a Poisson sample, and that accounting does not apply to it.

    Args:
      net, params, x, y: as for [`fnn.loss`][fnn.backpropagation.loss].
      clip_norm: $C$, the per-example clipping norm.
      noise_multiplier: $\sigma$; the noise's standard deviation is $\sigma C / d$.
      key: a ``jax.random`` key; the same key gives the same noise.
      mask: ``(N,)`` bool, the rows that are examples (default: all).
      expected_batch: $d$, what the sum is divided by (default: $N$, the rows of ``x``).

    Returns:
      Like ``params``.
    """
    return _dp_gradient_and_loss(net, params, x, y, clip_norm, noise_multiplier, key, mask,
                                 expected_batch)[0]


def _dp_gradient_and_loss(net, params, x, y, clip_norm, noise_multiplier, key, mask=None,
                          expected_batch=None):
    r"""[`dp_gradient`][fnn.per_example.dp_gradient] and $\frac1d \sum_i m_i \ell_i$ from the same
    forward pass."""
    _non_negative("noise_multiplier", noise_multiplier)
    rows = 1 if jnp.ndim(x) == 1 else jnp.shape(x)[0]
    d = rows if expected_batch is None else expected_batch
    grads, _, sample_losses = _clipped_sum(net, params, x, y, clip_norm, mask, d)
    if mask is not None:
        sample_losses = jnp.where(mask, sample_losses, 0)
    noisy = jax.tree.map(jnp.add, grads, dp_noise(key, grads, noise_multiplier * clip_norm / d))
    return noisy, jnp.sum(sample_losses) / d
