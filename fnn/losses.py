r"""Output functions $O$, per-sample losses and the output delta (lectures 001, 003, 004).

All functions here act on **one sample**: the output layer's pre-activation (the logits)
$z^{[L]}$ of shape ``(k,)`` and its target $y$. ``jax.vmap`` lifts them to a minibatch.

| output $O$ | loss (per sample) | $\delta^{[L]} = \partial \ell / \partial z^{[L]}$ |
| --- | --- | --- |
| softmax | cce: $-\sum_j y_j \log \hat y_j$ | $\hat y - y$ |
| sigmoid | bce: $\sum_j -y_j \log \hat y_j - (1 - y_j) \log(1 - \hat y_j)$ | $\hat y - y$ |
| identity | mse: $\sum_j (\hat y_j - y_j)^2$ | $2 (\hat y - y)$ |

Squared error is also allowed on softmax and sigmoid outputs; its delta is then the general
rule $\delta^{[L]} = J_O(z^{[L]})^T \, \partial \ell / \partial \hat y$.

Cross-entropies are computed from the logits with ``log_softmax`` / ``log_sigmoid``, never
as ``log(softmax(z))``, so they stay finite for logits of any size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Array = jax.Array

OUTPUTS = ("softmax", "sigmoid", "identity")
LOSSES = ("cce", "bce", "mse")
DEFAULT_LOSS = {"softmax": "cce", "sigmoid": "bce", "identity": "mse"}
r"""The loss each output function gets when none is named: its canonical pair, for which
$\delta^{[L]} = \hat y - y$."""
ALLOWED_LOSSES = {"softmax": ("cce", "mse"), "sigmoid": ("bce", "mse"), "identity": ("mse",)}
"""Output -> losses it can be trained with. Cross-entropy needs probabilities."""


def softmax(z: ArrayLike) -> Array:
    r"""$O(z)_j = e^{z_j} / \sum_i e^{z_i}$, shape ``(k,) -> (k,)``."""
    return jax.nn.softmax(z, axis=-1)


def softmax_jacobian(z: ArrayLike) -> Array:
    r"""$J = \partial a / \partial z = \operatorname{diag}(a) - a a^T$, $a = \mathrm{softmax}(z)$.

    Args:
      z: logits, shape ``(k,)``.

    Returns:
      The Jacobian, shape ``(k, k)``; symmetric, rows sum to 0.

    >>> J = softmax_jacobian(jnp.array([5.0, -2.0, -1.0, 3.0]))
    >>> J.shape
    (4, 4)
    """
    return output_jacobian("softmax", softmax(z))


OUTPUT_FUNCTIONS = {
    "softmax": softmax,
    "sigmoid": jax.nn.sigmoid,
    "identity": jnp.asarray,
}
"""Output name -> $O$."""


def output_jacobian(output: str, yhat: ArrayLike) -> Array:
    r"""$J_O = \partial \hat y / \partial z$, shape ``(k, k)``, by hand from $\hat y = O(z)$.

    softmax: $\operatorname{diag}(\hat y) - \hat y \hat y^T$; sigmoid:
    $\operatorname{diag}(\hat y (1 - \hat y))$; identity: $I$.
    """
    yhat = jnp.asarray(yhat)
    if output == "softmax":
        return jnp.diag(yhat) - jnp.outer(yhat, yhat)
    if output == "sigmoid":
        return jnp.diag(yhat * (1 - yhat))
    return jnp.eye(yhat.shape[-1], dtype=yhat.dtype)


def one_hot_target(y: ArrayLike, k: int, dtype) -> Array:
    """A one-hot row for an integer label, or ``y`` itself if it is already a row.

    An integer label outside ``[0, k)`` gives a row of NaN (never a silent all-zero row), so
    that an unchecked bad label under ``jit`` poisons the loss and the gradient visibly.
    """
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.integer):
        valid = (y >= 0) & (y < k)
        return jnp.where(valid, jax.nn.one_hot(y, k, dtype=dtype), jnp.nan)
    return y.astype(dtype)


def cross_entropy(z: ArrayLike, y: ArrayLike) -> Array:
    r"""Categorical cross-entropy from logits: $\ell = -\sum_j y_j \log \mathrm{softmax}(z)_j$.

    Args:
      z: logits, shape ``(k,)``.
      y: an integer label (shape ``()``) or a one-hot / probability row (shape ``(k,)``).

    Returns:
      The loss of this sample, a scalar. An integer label outside ``[0, k)`` gives NaN.
    """
    z = jnp.asarray(z)
    log_p = jax.nn.log_softmax(z, axis=-1)
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.integer):  # a negative label must not count from the end
        k = log_p.shape[-1]
        poison = jnp.where((y >= 0) & (y < k), 1.0, jnp.nan).astype(log_p.dtype)
        return -jnp.take(log_p, jnp.clip(y, 0, k - 1)) * poison  # NaN in value and gradient
    return -jnp.sum(y * log_p)


def binary_cross_entropy(z: ArrayLike, y: ArrayLike) -> Array:
    r"""Binary cross-entropy from logits, summed over the ``k`` output units.

    $\ell = \sum_j -y_j \log \sigma(z_j) - (1 - y_j) \log(1 - \sigma(z_j))$, with
    $\log \sigma(z)$ and $\log(1 - \sigma(z)) = \log \sigma(-z)$ from ``log_sigmoid``.

    Args:
      z: logits, shape ``(k,)``.
      y: targets in ``[0, 1]``, shape ``(k,)``.
    """
    z = jnp.asarray(z)
    y = jnp.asarray(y, dtype=z.dtype)
    return -jnp.sum(y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z))


def squared_error(yhat: ArrayLike, y: ArrayLike) -> Array:
    r"""Squared error $\ell = \sum_j (\hat y_j - y_j)^2$ (lecture 001), shapes ``(k,)``."""
    yhat = jnp.asarray(yhat)
    return jnp.sum((yhat - jnp.asarray(y, dtype=yhat.dtype)) ** 2)


def sample_loss(output: str, loss: str, z: ArrayLike, y: ArrayLike) -> Array:
    """The loss of one sample from its output logits ``z`` (shape ``(k,)``) and target ``y``."""
    if loss == "cce":
        return cross_entropy(z, y)
    if loss == "bce":
        return binary_cross_entropy(z, y)
    yhat = OUTPUT_FUNCTIONS[output](z)
    return squared_error(yhat, one_hot_target(y, yhat.shape[-1], yhat.dtype))


def batch_loss(output: str, loss: str, z: ArrayLike, y: ArrayLike) -> Array:
    r"""The minibatch loss $L = \frac1N \sum_{i=1}^N \ell(z^{[L]}_i, y_i)$ (lectures 002, 003).

    Args:
      z: the output logits of the batch, shape ``(N, k)``.
      y: ``N`` targets (labels ``(N,)`` or rows ``(N, k)``).
    """
    return jnp.mean(jax.vmap(lambda z, y: sample_loss(output, loss, z, y))(z, y))


def output_delta(output: str, loss: str, yhat: ArrayLike, y: ArrayLike) -> Array:
    r"""$\delta^{[L]} = \partial \ell / \partial z^{[L]}$ for one sample, written by hand.

    softmax + cce: $\hat y \sum_j y_j - y$, which is $\hat y - y$ for a one-hot (or any
    probability) row and exact for any other target row (soft labels, label smoothing);
    sigmoid + bce: $\hat y - y$; identity + mse: $2(\hat y - y)$; squared error on a softmax
    or sigmoid output: $J_O^T \, 2(\hat y - y)$. Written in terms of the
    output $\hat y = a^{[L]} = O(z^{[L]})$, as the lecture writes it, so the backward pass
    needs no logits.

    Args:
      yhat: the output $\hat y = O(z^{[L]})$, shape ``(k,)``.
      y: target: an integer label (shape ``()``) or a row of shape ``(k,)``.

    Returns:
      $\delta^{[L]}$, shape ``(k,)``.
    """
    yhat = jnp.asarray(yhat)
    y = one_hot_target(y, yhat.shape[-1], yhat.dtype)
    if loss == "cce":  # d/dz of -sum_j y_j log softmax(z)_j is softmax(z) sum_j y_j - y
        return yhat * jnp.sum(y) - y
    if loss == "bce":
        return yhat - y
    dl_dyhat = 2 * (yhat - y)
    if output == "identity":
        return dl_dyhat
    return output_jacobian(output, yhat).T @ dl_dyhat
