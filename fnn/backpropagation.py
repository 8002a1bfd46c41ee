r"""Backpropagation: the lecture's delta recursion, written by hand (lectures 001, 002, 004).

For **one sample**, with the activations $a^{[l]}$ kept from the forward pass:

$$\delta^{[L]} = \frac{\partial \ell}{\partial z^{[L]}} \;(= \hat y - y),\qquad
\delta^{[l]} = \big(W^{[l+1]T} \delta^{[l+1]}\big) \odot g'^{[l]}(z^{[l]}),$$
$$\frac{\partial \ell}{\partial W^{[l]}} = \delta^{[l]} a^{[l-1]T},\qquad
\frac{\partial \ell}{\partial b^{[l]}} = \delta^{[l]},\qquad
\frac{\partial \ell}{\partial x} = W^{[1]T} \delta^{[1]}.$$

[`delta_recursion`][fnn.backpropagation.delta_recursion] is that recursion for one sample;
``jax.vmap`` lifts it to the minibatch, stacking the deltas as rows $D^{[l]}$ of shape
``(N, n[l])``. The minibatch gradient is the mean of the per-sample outer products, formed as one
contraction over the batch, $\partial L / \partial W^{[l]} = \frac1N \sum_i \delta_i^{[l]}
a_i^{[l-1]T} = \frac1N D^{[l]T} A^{[l-1]}$ (lecture 004's ``Delta += delta a^T``, vectorised), so no
tensor of per-example gradients is ever built.

Only the activations are kept for the backward pass: $g'(z^{[l]})$ is read off
$a^{[l]} = g(z^{[l]})$ the way the lecture's table writes it (sigmoid $a(1 - a)$, tanh
$1 - a^2$, ReLU $[a > 0]$; the same numbers as from $z$, tested bit for bit), and
$\delta^{[L]}$ off $\hat y = a^{[L]}$. That halves what the forward pass hands to the backward
pass (measured: 24 MB of compiled temporaries for the batch-2048 784-1024-1024-10 gradient,
against 32 MB for ``jax.grad`` of the plain forward).

[`loss`][fnn.backpropagation.loss] attaches this backward pass to the mean loss with
``jax.custom_vjp``: ``jax.grad(fnn.loss)`` runs the hand-written recursion,
``jax.grad(fnn.loss_autodiff)`` runs JAX's own reverse mode over the same forward; the tests prove
the two equal.

Alternative feedback rules (``fnn.MLP(..., feedback="random" | "sign")``) replace
$W^{[l+1]T}$ in the recursion by $B^{[l+1]T}$
([`feedback_matrix`][fnn.backpropagation.feedback_matrix]): feedback alignment and sign-symmetric
feedback. ``jax.grad(fnn.loss)`` then returns that rule's update, which is not the gradient; the
default ``"backprop"`` runs exactly the recursion above.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fnn import _validation, activations, losses, precision
from fnn.network import MLP, Params, batch_loss, forward_trace, mean_loss

Array = jax.Array


def feedback_matrix(net: MLP, params: Params, l: int) -> Array:
    r"""$B^{[l]}$, the matrix that carries $\delta^{[l]}$ back to layer ``l - 1``.

    Per ``net.feedback``:

    - ``"backprop"``: $B^{[l]} = W^{[l]}$, so the recursion gives the true gradient.
    - ``"random"`` (feedback alignment, Lillicrap et al. 2016): a fixed random matrix,
      $B^{[l]}_{ij} \sim \mathcal N(0, 1 / n^{[l-1]})$, drawn from
      ``jax.random.fold_in(jax.random.key(net.feedback_seed), l)``. It depends on the
      architecture and the seed only, never on ``params``: the same matrix at every step of
      training, and recomputed (not stored) wherever the recursion runs.
    - ``"sign"`` (sign-symmetric feedback, Liao, Leibo and Poggio 2016):
      $B^{[l]} = \operatorname{sign}(W^{[l]})$.

    Args:
      net: the architecture.
      params: one ``{"W", "b"}`` per layer.
      l: the layer, ``2 <= l <= L`` (``B[1]`` also carries $\partial \ell / \partial x$).

    Returns:
      $B^{[l]}$, shape ``(n[l], n[l-1])`` and dtype of $W^{[l]}$.
    """
    W = params[l - 1]["W"]
    if net.feedback == "sign":
        return jnp.sign(W)
    if net.feedback == "random":
        key = jax.random.fold_in(jax.random.key(net.feedback_seed), l)
        return jax.random.normal(key, W.shape, W.dtype) * (1.0 / math.sqrt(W.shape[1]))
    return W


def _g_prime(net: MLP, l: int, a: tuple[Array, ...], z: tuple | None) -> Array:
    """$g'(z^{[l]})$ of hidden layer ``l``: read off $a^{[l]}$, or from $z^{[l]}$ for an
    [`fnn.Activation`][fnn.activations.Activation] whose derivative takes $z$."""
    act = net.activation[l - 1]
    if not isinstance(act, activations.Activation):
        a_l = precision.accumulate(net.precision, a[l])
        return activations.derivative_from_output(act, a_l, net.leaky_slope)
    if act.from_output:
        return act.derivative(precision.accumulate(net.precision, a[l]))
    if z is None or z[l - 1] is None:
        raise ValueError(f"layer {l}'s activation {act.name!r} takes g'(z): pass z= (the "
                         "pre-activations of forward_trace) to delta_recursion")
    return act.derivative(z[l - 1])


def _times_g_prime(activation, product: Array, g_prime: Array) -> Array:
    """``product * g'``; for ReLU, whose $g'$ is a 0/1 mask, a select, as ``jax.nn.relu``'s
    derivative is: an inf or NaN reaching an inactive unit stops there (``0 * inf`` is NaN)."""
    if activation == "relu":
        return jnp.where(g_prime > 0, product, jnp.zeros_like(product))
    return product * g_prime


def delta_recursion(
    net: MLP, params: Params, a: tuple[Array, ...], y: Array, seed: ArrayLike = 1.0, *,
    z: tuple | None = None,
) -> tuple[Array, ...]:
    r"""The deltas of **one sample**, from the output layer back to layer 1.

    $\delta^{[L]} = \text{seed} \cdot \partial \ell / \partial z^{[L]}$ ($= \hat y - y$ for
    the canonical pairs), then
    $\delta^{[l]} = (W^{[l+1]T} \delta^{[l+1]}) \odot g'^{[l]}(z^{[l]})$ for
    $l = L-1, \dots, 1$. Both $\delta^{[L]}$ and $g'(z^{[l]})$ are written through the
    layer outputs, as the lecture's table writes them ($\hat y = a^{[L]}$; sigmoid
    $g' = a(1 - a)$, tanh $1 - a^2$, ReLU $[a > 0]$:
    [`fnn.activations.derivative_from_output`][fnn.activations.derivative_from_output]), so the
    backward pass keeps only the activations $a^{[l]}$ of the forward pass (the same numbers as from
    $z^{[l]}$, half the memory). With ``net.feedback`` other than ``"backprop"``, the feedback
    matrix $B^{[l+1]}$ of [`feedback_matrix`][fnn.backpropagation.feedback_matrix] takes the place
    of $W^{[l+1]}$, and the deltas are that rule's error signals rather than
    $\partial \ell / \partial z^{[l]}$.

    Args:
      net: the architecture.
      params: one ``{"W", "b"}`` per layer.
      a: ``a[l]`` is $a^{[l]}$ of shape ``(n[l],)`` for ``l = 0 .. L`` (``a[L] = yhat``), as
        [`fnn.network.forward_trace`][fnn.network.forward_trace] returns it.
      y: this sample's target (an integer label, or a row of shape ``(n[L],)``).
      seed: the cotangent scaling $\delta^{[L]}$ (``1`` for the sample's own loss ``l``;
        ``g / N`` for ``g`` times the mean over ``N`` samples).
      z: ``z[l-1]`` is $z^{[l]}$, as [`fnn.network.forward_trace`][fnn.network.forward_trace]
        returns it; needed only for a hidden layer whose
        [`fnn.Activation`][fnn.activations.Activation] takes $g'(z)$ (``None`` entries elsewhere are
        fine).

    Returns:
      ``(delta[1], ..., delta[L])``, ``delta[l-1]`` of shape ``(n[l],)``. Under a precision
      policy ([`fnn.precision`][fnn.precision]), $\delta^{[L]}$ has the output dtype, the hidden
      deltas the compute dtype ($B^T \delta$ accumulated and multiplied by $g'$ in float32, then
      rounded).
    """
    policy = net.precision
    delta = seed * losses.output_delta(net.output, net.loss, a[-1], y)
    deltas = [delta]
    for l in range(net.depth - 1, 0, -1):
        g_prime = _g_prime(net, l, a, z)
        B = feedback_matrix(net, params, l + 1)
        product = precision.matvec(policy, B.T, delta)  # the lecture's B^T delta
        delta = precision.compute(policy, _times_g_prime(net.activation[l - 1], product,
                                                         g_prime))
        deltas.append(delta)
    return tuple(reversed(deltas))


def batch_gradients(
    deltas: tuple[Array, ...], a: tuple[Array, ...], scale: ArrayLike = 1.0, *,
    policy: precision.Policy | None = None,
) -> Params:
    r"""The batch contraction $\partial W^{[l]} = s \sum_i \delta^{[l]}_i a^{[l-1]T}_i = s D^T A$.

    And $\partial b^{[l]} = s \sum_i \delta^{[l]}_i = s D^T \mathbf 1_N$.

    Args:
      deltas: per layer, the stacked deltas $D^{[l]}$ of shape ``(N, n[l])``.
      a: the stacked activations, ``a[l]`` of shape ``(N, n[l])`` for ``l = 0 .. L-1``.
      scale: $s$, multiplies every gradient (``1 / N`` for the mean).
      policy: a precision policy (``net.precision``): the products take compute-dtype
        operands and, like the bias sums, accumulate in float32; ``None``: as given.

    Returns:
      One ``{"W": (n[l], n[l-1]), "b": (n[l],)}`` per layer: the sum over the batch of the
      lecture's per-sample $\delta a^T$, as one contraction over the batch axis (in the
      accumulation dtype under a policy: cast them to the params' dtype).
    """
    return tuple(
        {"W": scale * precision.einsum(policy, "bi,bj->ij", D, A),
         "b": scale * _batch_sum(policy, D)}
        for D, A in zip(deltas, a[: len(deltas)], strict=True)
    )


def _batch_sum(policy: precision.Policy | None, D: Array) -> Array:
    r"""$D^T \mathbf 1_N$, summed from the deltas as stored, in the accumulation dtype."""
    # db as lecture 003 writes it, dL/db = dL/dZ^T 1_N: a matrix-vector product, which XLA:CPU
    # runs faster than the two-stage reduction it makes of jnp.sum(D, axis=0) (measured:
    # 1.41 against 1.56 ms for the b256 784-256-256-10 tanh gradient).
    ones = jnp.ones(D.shape[0], D.dtype)
    if policy is None:
        return ones @ D
    return jnp.matmul(ones, D, preferred_element_type=policy.accumulate)


def trace_and_deltas(
    net: MLP, params: Params, x: Array, y: Array
) -> tuple[tuple[Array, ...], tuple[Array, ...], tuple[Array, ...]]:
    r"""One forward pass and one delta recursion over a validated batch, nothing contracted.

    The shared first half of [`backprop`][fnn.backpropagation.backprop],
    [`fnn.per_example.clipped_grad`][fnn.per_example.clipped_grad] and
    [`fnn.diagnostics.layer_diagnostics`][fnn.diagnostics.layer_diagnostics].

    Args:
      x: shape ``(N, n[0])``; ``y``: ``N`` targets (as returned by ``_validation.inputs``).

    Returns:
      ``(z, a, deltas)`` stacked over the batch: ``z[l-1]`` is $Z^{[l]}$ ``(N, n[l])`` for
      ``l = 1 .. L``, ``a[l]`` is $A^{[l]}$ ``(N, n[l])`` for ``l = 0 .. L``, and
      ``deltas[l-1]`` is $D^{[l]}$ ``(N, n[l])``, row ``i`` sample ``i``'s own
      $\delta^{[l]}_i = \partial \ell_i / \partial z^{[l]}_i$.
    """
    z, a = jax.vmap(lambda x: forward_trace(net, params, x))(x)
    deltas = jax.vmap(lambda a, z, y: delta_recursion(net, params, a, y, z=z))(a, z, y)
    return z, a, deltas


def _cast_like(tree, like):
    return jax.tree.map(lambda g, p: g.astype(p.dtype), tree, like)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _loss(net: MLP, params: Params, x: Array, y: Array) -> Array:
    return mean_loss(net, params, x, y)


def _loss_fwd(net, params, x, y):
    z, a = jax.vmap(lambda x: forward_trace(net, params, x))(x)
    value = batch_loss(net, z[-1], y)
    # Residuals: the activations a[1] .. yhat = a[L] (x stands for a[0]: under a precision
    # policy the backward casts it again); no logits, and z[l] only for the hidden layers whose
    # user-defined g' takes z.
    z = tuple(z[l - 1] if l < net.depth and net.derivative_reads_z(l) else None
              for l in range(1, net.depth + 1))
    return value, (params, x, a[1:], z, y)


def _loss_bwd(net, residuals, g):
    params, x, a, z, y = residuals
    policy = net.precision
    a = (precision.compute(policy, x), *a)
    seed = g / x.shape[0]
    deltas = jax.vmap(lambda a, z, y: delta_recursion(net, params, a, y, seed, z=z))(a, z, y)
    grads = batch_gradients(deltas, a, policy=policy)
    # rows of B[1]^T delta[1], B[1] = W[1]
    dx = precision.matmul(policy, deltas[0], feedback_matrix(net, params, 1))
    return _cast_like(grads, params), dx.astype(x.dtype), None


_loss.defvjp(_loss_fwd, _loss_bwd)


def loss(net: MLP, params: Params, x: ArrayLike, y: ArrayLike) -> Array:
    r"""The mean loss $L = \frac1N \sum_i \ell(\hat y_i, y_i)$, with the hand-written backward.

    Reverse-mode derivatives (``jax.grad``, ``jax.vjp``, with respect to ``params`` and to
    ``x``) run the delta recursion attached with ``jax.custom_vjp``. For a net with
    ``feedback="random"`` or ``"sign"`` they return that feedback rule's update, which is
    **not** the gradient of this loss ([`fnn.loss_autodiff`][fnn.network.loss_autodiff] gives the
    gradient). Forward mode (``jax.jvp``, ``jax.jacfwd``) does not apply to a ``custom_vjp``
    function and raises.

    Args:
      net: the architecture.
      params: one ``{"W": (n[l], n[l-1]), "b": (n[l],)}`` per layer.
      x: shape ``(N, n[0])``, or ``(n[0],)`` for one sample.
      y: softmax: integer labels ``(N,)`` in ``[0, k)`` or one-hot rows ``(N, k)``;
        sigmoid: 0/1 targets ``(N, k)``; identity: real targets ``(N, k)``
        (without the batch axis for one sample).

    Returns:
      The mean loss, a scalar of the computation's dtype.

    Integer labels outside ``[0, k)`` raise ``ValueError`` when their values are known; under
    ``jit`` they cannot be checked before running, and give a NaN loss and NaN gradients
    instead (never a silently wrong number): wrap with ``jax.experimental.checkify``
    (``errors=checkify.nan_checks``) or test ``jnp.isfinite`` to catch them.

    >>> from fnn import init
    >>> net = MLP((4, 8, 3))
    >>> params = init(jax.random.key(0), net)
    >>> grads = jax.grad(loss, argnums=1)(net, params, jnp.ones((2, 4)), jnp.array([0, 2]))
    >>> grads[0]["W"].shape
    (8, 4)
    """
    params, x, y = _validation.inputs(net, params, x, y)
    return _loss(net, params, x, y)


class Backprop(NamedTuple):
    """What [`backprop`][fnn.backpropagation.backprop] returns; lists are indexed by the lecture's
    layer number ``l``."""

    loss: Array
    """The mean loss $L$, a scalar."""
    grads: Params
    r"""$\partial L / \partial W^{[l]}$ and $\partial L / \partial b^{[l]}$, like params."""
    z: tuple
    """``z[l]`` of shape ``(N, n[l])`` for ``l = 1 .. L``; ``z[0]`` is ``None``."""
    a: tuple
    """``a[l]`` of shape ``(N, n[l])`` for ``l = 0 .. L``; ``a[0] = x``, ``a[L] = yhat``."""
    delta: tuple
    r"""``delta[l]`` of shape ``(N, n[l])``: row ``i`` is sample ``i``'s own
    $\delta^{[l]}_i = \partial \ell_i / \partial z^{[l]}_i$ (so
    $\partial L / \partial Z^{[l]} = D^{[l]} / N$, i.e. ``delta[l] / N``); ``delta[0]`` is
    ``None``."""


def backprop(net: MLP, params: Params, x: ArrayLike, y: ArrayLike) -> Backprop:
    r"""One forward and one backward pass, returning the lecture's quantities per layer.

    Args: as for [`loss`][fnn.backpropagation.loss] (``x`` with or without the batch axis; the
    results always have one).

    Returns:
      [`Backprop`][fnn.backpropagation.Backprop] with the loss, the gradients (equal to
      ``jax.grad(fnn.loss)``), and $z^{[l]}$, $a^{[l]}$, $\delta^{[l]}$ per layer.

    >>> net = MLP((5, 7, 4, 3), activation="sigmoid")
    >>> from fnn import init
    >>> bp = backprop(net, init(jax.random.key(0), net), jnp.ones((4, 5)), jnp.array([2, 0, 1, 2]))
    >>> [d.shape for d in bp.delta[1:]]
    [(4, 7), (4, 4), (4, 3)]
    """
    params, x, y = _validation.inputs(net, params, x, y)
    z, a, deltas = trace_and_deltas(net, params, x, y)
    value = batch_loss(net, z[-1], y)
    grads = batch_gradients(deltas, a, 1.0 / x.shape[0], policy=net.precision)
    return Backprop(value, _cast_like(grads, params), (None, *z), a, (None, *deltas))
