r"""Evaluation: predicted classes, accuracy and the confusion matrix.

Pure functions of ``(net, params, x)`` or of label arrays; each works eagerly and under
``jax.jit`` (``confusion_matrix`` with ``num_classes`` static). The predicted class is
$\hat c = \arg\max_k \hat y_k$ for a softmax output (lecture 001: the most probable class), and
$\hat c = [\hat y > 0.5]$ for a single sigmoid unit (binary classification).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fnn import _validation
from fnn.network import MLP, Params, forward

Array = jax.Array

__all__ = ["accuracy", "confusion_matrix", "labels_of", "predict"]


def predict(net: MLP, params: Params, x: ArrayLike) -> Array:
    r"""The predicted class of each sample: $\arg\max_k \hat y_k$, or $[\hat y > 0.5]$.

    A network with one sigmoid output unit is a binary classifier: class 1 where
    $\hat y = \sigma(z) > 0.5$ (so $z = 0$ gives class 0). Any other output (softmax, several
    sigmoid units, identity) predicts the index of its largest output, the first one on ties.

    Args:
      net: the architecture.
      params: one ``{"W": (n[l], n[l-1]), "b": (n[l],)}`` per layer.
      x: ``(N, n[0])``, or ``(n[0],)`` for one sample.

    Returns:
      int32 classes of shape ``(N,)`` (``()`` for one sample).

    >>> import fnn
    >>> net = fnn.MLP((2, 3))
    >>> params = ({"W": jnp.eye(3, 2), "b": jnp.array([0.0, 0.0, 0.5])},)
    >>> predict(net, params, jnp.array([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
    Array([0, 1, 2], dtype=int32)
    """
    yhat = forward(net, params, x)
    if net.output == "sigmoid" and net.layer_sizes[-1] == 1:
        return (yhat[..., 0] > 0.5).astype(jnp.int32)
    return jnp.argmax(yhat, axis=-1).astype(jnp.int32)


def labels_of(net: MLP, y: ArrayLike) -> Array:
    """Integer class labels from targets as [`fnn.loss`][fnn.backpropagation.loss] takes them.

    Integer labels ``(N,)`` stay as they are; one-hot (or probability) rows ``(N, k)`` become
    their argmax; for one sigmoid unit, targets ``(N, 1)`` or ``(N,)`` become ``y > 0.5``.

    Returns:
      int32 labels of shape ``(N,)``.

    >>> import fnn
    >>> labels_of(fnn.MLP((2, 3)), jnp.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    Array([2, 0], dtype=int32)
    """
    y = jnp.asarray(y)
    if net.output == "sigmoid" and net.layer_sizes[-1] == 1:
        if y.ndim >= 1 and y.shape[-1] == 1:
            y = y[..., 0]
        return (y > 0.5).astype(jnp.int32)
    if jnp.issubdtype(y.dtype, jnp.integer) or y.dtype == jnp.bool_:
        return y.astype(jnp.int32)
    return jnp.argmax(y, axis=-1).astype(jnp.int32)


def accuracy(net: MLP, params: Params, x: ArrayLike, y: ArrayLike) -> Array:
    r"""The fraction of samples classified correctly, $\frac1N \sum_i [\hat c_i = c_i]$.

    Args:
      net, params, x: as for [`predict`][fnn.metrics.predict], ``x`` of shape ``(N, n[0])``.
      y: targets as [`fnn.loss`][fnn.backpropagation.loss] takes them (integer labels ``(N,)``,
        one-hot rows ``(N, k)``, or 0/1 targets ``(N, 1)`` for one sigmoid unit); see
        [`labels_of`][fnn.metrics.labels_of].

    Returns:
      A float32 scalar in ``[0, 1]``.

    >>> import fnn
    >>> net = fnn.MLP((2, 2))
    >>> params = ({"W": jnp.eye(2), "b": jnp.zeros(2)},)
    >>> float(accuracy(net, params, jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([0, 0])))
    0.5
    """
    pred = predict(net, params, x)
    labels = labels_of(net, y)
    if labels.shape != pred.shape:
        raise ValueError(
            f"y gives labels of shape {labels.shape} for predictions of shape {pred.shape}"
        )
    return jnp.mean((pred == labels).astype(jnp.float32))


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> Array:
    r"""Counts $C_{ij}$ = number of samples of true class $i$ predicted as class $j$.

    Rows are true classes, columns predicted classes; the diagonal holds the correct ones and
    ``C.sum() == N``. Computed as $C = \mathrm{onehot}(c)^T \, \mathrm{onehot}(\hat c)$.

    Args:
      y_true: int labels ``(N,)`` in ``[0, num_classes)``.
      y_pred: int predictions ``(N,)`` in ``[0, num_classes)``.
      num_classes: ``k``, a Python int (static under ``jit``).

    Returns:
      int32 counts of shape ``(k, k)``.

    Labels outside ``[0, k)`` raise ``ValueError`` when their values are known; under ``jit``
    they cannot be checked and are left out of the counts (then ``C.sum() < N``).

    >>> confusion_matrix(jnp.array([0, 1, 1, 2]), jnp.array([0, 1, 2, 2]), 3)
    Array([[1, 0, 0],
           [0, 1, 1],
           [0, 0, 1]], dtype=int32)
    """
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.ndim != 1 or not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(f"{name} must be 1-D integer labels, got shape {y.shape} "
                             f"dtype {y.dtype}")
        values = _validation._concrete(y)
        if values is not None and values.size and (values.min() < 0 or values.max() >= k):
            raise ValueError(f"{name} holds labels outside [0, {k}): "
                             f"{values[(values < 0) | (values >= k)][:5].tolist()}")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {y_true.shape} "
                         f"and {y_pred.shape}")
    true = jax.nn.one_hot(y_true, k, dtype=jnp.int32)
    pred = jax.nn.one_hot(y_pred, k, dtype=jnp.int32)
    return true.T @ pred
