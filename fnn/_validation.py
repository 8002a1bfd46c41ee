"""Checks of user input, run eagerly (at trace time under ``jit``) before any computation.

Each failure raises ``ValueError`` or ``TypeError`` naming the argument, what was expected
and what was given. Shapes and dtypes are static, so these checks cost nothing under ``jit``;
only the label range needs values, and it is checked when the labels are concrete.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def one_of(argument: str, value, valid) -> None:
    """Raise unless ``value`` is one of ``valid``."""
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{argument} must be one of {sorted(valid)}, got {value!r}")


def activation(act) -> None:
    """Check a user-defined ``fnn.Activation``: a name and two callables."""
    if not isinstance(act.name, str) or not act.name:
        raise TypeError(f"Activation.name must be a non-empty string, got {act.name!r}")
    for field in ("function", "derivative"):
        if not callable(getattr(act, field)):
            raise TypeError(f"Activation {act.name!r}: {field} must be callable, "
                            f"got {getattr(act, field)!r}")


def feedback_seed(value) -> int:
    """Validate an integer seed (``MLP.feedback_seed``): a non-negative Python integer."""
    if isinstance(value, bool):
        raise TypeError(f"feedback_seed must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"feedback_seed must be an integer, got {value!r}") from None
    if value < 0:
        raise ValueError(f"feedback_seed must be non-negative, got {value}")
    return value


def layer_sizes(sizes) -> tuple[int, ...]:
    """Validate ``layer_sizes``: at least two positive integer widths."""
    try:
        if isinstance(sizes, str) or any(isinstance(n, bool) for n in sizes):
            raise TypeError
        sizes = tuple(operator.index(n) for n in sizes)
    except TypeError:
        raise TypeError(
            f"layer_sizes must be a sequence of integers, got {sizes!r}"
        ) from None
    if len(sizes) < 2:
        raise ValueError(
            f"layer_sizes must have at least 2 entries (input and output width), got {sizes}"
        )
    bad = [(i, n) for i, n in enumerate(sizes) if n <= 0]
    if bad:
        i, n = bad[0]
        raise ValueError(f"layer_sizes[{i}] must be a positive width, got {n} in {sizes}")
    return sizes


def params(net, params) -> tuple[dict, ...]:
    """Check the params tree against ``net``; return it as a tuple of ``{"W", "b"}`` dicts."""
    L = net.depth
    if not isinstance(params, Sequence) or len(params) != L:
        got = f"{type(params).__name__} of length {len(params)}" if isinstance(
            params, Sequence) else type(params).__name__
        raise ValueError(
            f"params must be a tuple of {L} layers (one per dense layer of "
            f"layer_sizes={net.layer_sizes}), got {got}"
        )
    checked = []
    for l, layer in enumerate(params, start=1):
        if not isinstance(layer, Mapping) or set(layer) != {"W", "b"}:
            keys = sorted(layer) if isinstance(layer, Mapping) else type(layer).__name__
            raise ValueError(f"params[{l - 1}] must be a dict with keys 'W' and 'b', got {keys}")
        expected = {"W": (net.layer_sizes[l], net.layer_sizes[l - 1]), "b": (net.layer_sizes[l],)}
        for name, shape in expected.items():
            leaf = layer[name]
            if jnp.shape(leaf) != shape:
                raise ValueError(
                    f"params[{l - 1}][{name!r}] (layer {l}) must have shape {shape}, "
                    f"got {jnp.shape(leaf)}"
                )
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise TypeError(
                    f"params[{l - 1}][{name!r}] (layer {l}) must be floating point, "
                    f"got dtype {jnp.result_type(leaf)}"
                )
            policy = net.precision
            if policy is not None and jnp.result_type(leaf) != policy.param:
                raise TypeError(
                    f"params[{l - 1}][{name!r}] (layer {l}) is {jnp.result_type(leaf)}, but the "
                    f"net's precision policy keeps params in {policy.param}: make them with "
                    f"fnn.init(key, net) or net.precision.cast_to_param(params)"
                )
        checked.append({"W": jnp.asarray(layer["W"]), "b": jnp.asarray(layer["b"])})
    return tuple(checked)


def x(net, x) -> jax.Array:
    """Check ``x``: shape ``(n[0],)`` or ``(batch, n[0])`` with batch >= 1, floating."""
    x = jnp.asarray(x)
    n0 = net.layer_sizes[0]
    if x.ndim not in (1, 2):
        raise ValueError(
            f"x must have shape ({n0},) or (batch, {n0}), got shape {x.shape} ({x.ndim}-D)"
        )
    if x.shape[-1] != n0:
        raise ValueError(f"x has {x.shape[-1]} features (shape {x.shape}), layer 0 expects {n0}")
    if x.ndim == 2 and x.shape[0] == 0:
        raise ValueError(f"x is an empty batch (shape {x.shape}): the mean loss needs batch >= 1")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating point, got dtype {x.dtype}; cast it first")
    return x


def params_and_x(net, p, x_):
    return params(net, p), x(net, x_)


def _concrete(a) -> np.ndarray | None:
    """The values of ``a`` if they are known now (not a tracer under jit), else None."""
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def targets(net, x, y) -> jax.Array:
    """Check ``y`` against the output layer and ``x``; return it batched like ``x``.

    softmax: integer labels of shape ``(batch,)`` (``()`` for one sample) in ``[0, k)``, or
    one-hot rows ``(batch, k)``; sigmoid and identity: ``(batch, k)`` (``(k,)`` for one
    sample), exactly: no broadcasting of ``(batch,)`` against ``(batch, 1)``.
    """
    y = jnp.asarray(y)
    k = net.layer_sizes[-1]
    batch = x.shape[:-1]
    label_shape, row_shape = batch, (*batch, k)
    integer = jnp.issubdtype(y.dtype, jnp.integer)
    if x.ndim == 2 and y.ndim >= 1 and y.shape[0] != x.shape[0]:
        raise ValueError(
            f"x and y must have the same batch size: x has {x.shape[0]} (shape {x.shape}), "
            f"y has {y.shape[0]} (shape {y.shape})"
        )
    if net.output == "softmax" and integer and y.shape == label_shape:
        values = _concrete(y)
        if values is not None and values.size and (values.min() < 0 or values.max() >= k):
            bad = values[(values < 0) | (values >= k)]
            raise ValueError(
                f"y holds integer labels outside [0, {k}) for the {k} softmax outputs: "
                f"{bad[:5].tolist()}"
            )
        return y
    if y.shape != row_shape:
        if net.output == "softmax":
            expected = f"integer labels of shape {label_shape} or one-hot rows of shape {row_shape}"
        else:
            expected = f"shape {row_shape} ({net.output} output with {k} units)"
        hint = ""
        if y.shape == label_shape and k == 1:
            hint = "; write y[:, None] for one output unit (no silent broadcasting)"
        raise ValueError(f"y must be {expected}, got shape {y.shape}, dtype {y.dtype}{hint}")
    if y.dtype == jnp.bool_ or integer:
        y = y.astype(x.dtype)
    if not jnp.issubdtype(y.dtype, jnp.floating):
        raise TypeError(f"y must be numeric targets, got dtype {y.dtype}")
    if net.output == "softmax" and net.loss == "cce":
        values = _concrete(y)
        if values is not None and not np.allclose(values.sum(-1), 1.0, atol=1e-3):
            raise ValueError(
                "y one-hot rows must each sum to 1 for cross-entropy, got row sums "
                f"{np.unique(values.sum(-1))[:5].tolist()}"
            )
    return y


def inputs(net, p, x_, y):
    """All checks for ``loss(net, params, x, y)``; returns ``params, x, y`` with a batch axis."""
    p, x_ = params_and_x(net, p, x_)
    y = targets(net, x_, y)
    if x_.ndim == 1:
        x_, y = x_[None], y[None]
    return p, x_, y
