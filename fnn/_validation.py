"""Checks of user input, run eagerly (at trace time under ``jit``) before any computation.

Each failure raises ``ValueError`` or ``TypeError`` naming the argument, what was expected
and what was given. Shapes and dtypes are static, so these checks cost nothing under ``jit``;
only the label range needs values, and it is checked when the labels are concrete.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import os
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
    if isinstance(sizes, str) or not isinstance(sizes, Sequence | np.ndarray):
        raise TypeError(f"layer_sizes must be a sequence of integers, got {sizes!r}")
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


def fits_in_memory(sizes: tuple[int, ...], itemsize: int) -> None:
    """Raise ``ValueError`` when the parameters of ``sizes`` alone would not fit in the
    device's memory (the host's on CPU): refused by name before anything is allocated."""
    count = sum(n * (m + 1) for m, n in itertools.pairwise(sizes))
    stats = jax.local_devices()[0].memory_stats() or {}  # another process's: no stats
    limit = stats.get("bytes_limit") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if count * itemsize > limit:
        raise ValueError(f"layer_sizes {sizes} mean {count:.3g} parameters, {count * itemsize:.3g} "
                         f"bytes: more than the {limit:.3g} bytes of memory here")


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
    target rows ``(batch, k)`` (one-hot or soft: the delta is exact for any row); sigmoid and
    identity: ``(batch, k)`` (``(k,)`` for one sample), exactly: no broadcasting of
    ``(batch,)`` against ``(batch, 1)``.
    """
    if isinstance(y, np.ndarray) and y.dtype.kind in "iu" and y.size and y.itemsize > 4 and not (
            jax.config.jax_enable_x64) and (y.min() < -(2**31) or y.max() >= 2**31):
        raise ValueError(f"y holds integers beyond int32 ({y.dtype}, {y.min()} .. {y.max()}), "
                         "which JAX would wrap with jax_enable_x64 off")
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
        if values is not None:
            labels(k, values)
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
    return y


def inputs(net, p, x_, y):
    """All checks for ``loss(net, params, x, y)``; returns ``params, x, y`` with a batch axis."""
    p, x_ = params_and_x(net, p, x_)
    y = targets(net, x_, y)
    if x_.ndim == 1:
        x_, y = x_[None], y[None]
    return p, x_, y


# ----------------------------------------------------------------------- scalar parameters


class ParameterError(ValueError):
    """A scalar parameter out of its range: ``name`` is the parameter, ``problem`` the rest.

    The command line turns it into ``--option problem`` (one line, exit code 2).
    """

    def __init__(self, name: str, problem: str) -> None:
        self.name, self.problem = name, problem
        super().__init__(f"{name} {problem}")


@dataclasses.dataclass(frozen=True)
class Interval:
    """A number in ``[low, high]`` (``low`` excluded if ``open_low``), or None if ``optional``.

    The model is scikit-learn's ``Interval(Real, 0, None, closed="left")``: one object that
    both checks a value and says in words what it accepts.
    """

    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    optional: bool = False
    none_means: str = ""

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None:
            what += f" {'>' if self.open_low else '>='} {self.low}"
        if self.high is not None:
            what += f"{' and' if self.low is not None else ''} <= {self.high}"
        return what + (f" or None ({self.none_means})" if self.optional else "")

    def check(self, name: str, value):
        """``value`` as ``kind`` (Python ``int`` or ``float``), or ``ParameterError``."""
        if value is None and self.optional:
            return None
        try:
            if isinstance(value, bool) or value is None:
                raise TypeError
            number = operator.index(value) if self.kind is int else float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or not math.isfinite(number) or (self.low is not None and (
                number < self.low or (self.open_low and number == self.low))) or (
                self.high is not None and number > self.high):
            raise ParameterError(name, f"must be {self.describe()}, got {value!r}")
        if self.kind is float and abs(number) > float(np.finfo(np.float32).max):
            raise ParameterError(name, f"{value!r} overflows float32, the dtype fnn computes in")
        if self.kind is float and number != 0 and np.float32(number) == 0:
            raise ParameterError(name, f"{value!r} rounds to 0 in float32, the dtype fnn "
                                 "computes in")
        return number


PARAMETERS: dict[str, Interval] = {
    "epochs": Interval(int, 1),
    "batch_size": Interval(int, 1, optional=True, none_means="full batch"),
    "learning_rate": Interval(float, 0, open_low=True),
    "l2": Interval(float, 0),
    "eps_loss": Interval(float, 0, open_low=True, optional=True, none_means="off"),
    "eps_grad": Interval(float, 0, open_low=True, optional=True, none_means="off"),
    "patience": Interval(int, 1, optional=True, none_means="off"),
    "clip_norm": Interval(float, 0, open_low=True),
    "noise_multiplier": Interval(float, 0),
    "n": Interval(int, 2, 10**6),
    "noise": Interval(float, 0, 0.5),
    "seed": Interval(int, 0, 2**31 - 1),
    "checkpoint_every": Interval(float, 0),
    "distributed_timeout": Interval(float, 0, open_low=True),
    "target_epsilon": Interval(float, 0, open_low=True),
    "delta": Interval(float, 0, 1, open_low=True),
    "sample_rate": Interval(float, 0, 1, open_low=True),
    "steps": Interval(int, 0),
    "n_examples": Interval(int, 1),
}
"""Every scalar parameter of the training functions, the data sets and the command line, with
what it accepts: the one table that ``parameter`` checks with and the CLI's errors read."""


def parameter(name: str, value):
    """Check ``value`` against ``PARAMETERS[name]``; return it as a Python number (or None)."""
    return PARAMETERS[name].check(name, value)


def labels(k: int, values: np.ndarray) -> None:
    """Raise ``ValueError`` unless the integer labels ``values`` all lie in ``[0, k)``."""
    if values.size and (values.min() < 0 or values.max() >= k):
        bad = values[(values < 0) | (values >= k)]
        raise ValueError(f"y holds integer labels outside [0, {k}) for the {k} softmax outputs: "
                         f"{bad[:5].tolist()}")


def finite(name: str, a) -> None:
    """Raise ``ValueError`` unless every value of the data array ``a`` is finite, naming the
    first row that is not (a copy to the host: for data, checked once, before training)."""
    host = np.asarray(a)
    if host.dtype.kind in "fc" and not np.isfinite(host).all():
        bad = np.argwhere(~np.isfinite(host))
        raise ValueError(f"{name} holds {len(bad)} non-finite values (NaN or inf), the first at "
                         f"index {tuple(int(i) for i in bad[0])}")
