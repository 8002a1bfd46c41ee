r"""Activation functions $g$ and their hand-written derivatives $g'$ (lectures 000, 001).

Each activation acts elementwise on a pre-activation vector $z^{[l]}$ of shape ``(n[l],)``
(or any shape) and returns an array of the same shape and dtype. The derivatives are written
by hand, as the lecture derives them, and are what the delta recursion multiplies with; the
tests check each against ``jax.grad`` of the activation itself.

The lecture leaves $g'(0)$ open for ReLU and leaky ReLU. fnn takes $g'(0) = 0$ for ReLU
(``relu(z) = z if z > 0 else 0``, the value ``jax.nn.relu`` uses) and $g'(0) = 1$ for leaky
ReLU (``z if z >= 0 else alpha z``, the branch fnn's notes write with ``z >= 0``); the
forward functions are written so that ``jax.grad`` gives exactly these values too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Array = jax.Array

LEAKY_RELU_SLOPE = 0.01
"""Default slope $\\alpha$ of leaky ReLU for $z < 0$."""


def identity(z: ArrayLike) -> Array:
    r"""Identity (linear) activation: $g(z) = z$."""
    return jnp.asarray(z)


def identity_derivative(z: ArrayLike) -> Array:
    r"""$g'(z) = 1$."""
    return jnp.ones_like(z)


def sigmoid(z: ArrayLike) -> Array:
    r"""Logistic sigmoid: $g(z) = 1 / (1 + e^{-z})$, computed without overflow."""
    return jax.nn.sigmoid(z)


def sigmoid_derivative(z: ArrayLike) -> Array:
    r"""$g'(z) = g(z)\,(1 - g(z))$."""
    s = jax.nn.sigmoid(z)
    return s * (1 - s)


def tanh(z: ArrayLike) -> Array:
    r"""Hyperbolic tangent: $g(z) = \tanh z$."""
    return jnp.tanh(z)


def tanh_derivative(z: ArrayLike) -> Array:
    r"""$g'(z) = 1 - \tanh^2 z$."""
    t = jnp.tanh(z)
    return 1 - t * t


def relu(z: ArrayLike) -> Array:
    r"""Rectified linear unit: $g(z) = \max(0, z)$, written so that $g'(0) = 0$ and NaN stays
    NaN (a bare ``where(z > 0, z, 0)`` turns NaN into 0: a NaN pixel would give a confident
    prediction). ``jax.nn.relu`` does both too, but inside the backward's forward pass it made
    XLA keep $z$ as well as $a$ (40 against 24 MiB for the batch-2048 784-1024-1024-10 gradient).
    """
    z = jnp.asarray(z)
    return jnp.where((z > 0) | jnp.isnan(z), z, jnp.zeros_like(z))


def relu_derivative(z: ArrayLike) -> Array:
    r"""$g'(z) = 1$ for $z > 0$, else $0$ (including $z = 0$); 1 at NaN, so NaN goes through."""
    z = jnp.asarray(z)
    return ((z > 0) | jnp.isnan(z)).astype(z.dtype)


def leaky_relu(z: ArrayLike, alpha: float = LEAKY_RELU_SLOPE) -> Array:
    r"""Leaky ReLU: $g(z) = z$ for $z \ge 0$, $\alpha z$ otherwise."""
    z = jnp.asarray(z)
    return jnp.where(z >= 0, z, alpha * z)


def leaky_relu_derivative(z: ArrayLike, alpha: float = LEAKY_RELU_SLOPE) -> Array:
    r"""$g'(z) = 1$ for $z \ge 0$ (including $z = 0$), $\alpha$ otherwise."""
    z = jnp.asarray(z)
    return jnp.where(z >= 0, jnp.ones_like(z), jnp.full_like(z, alpha))


def derivative_from_output(name: str, a: ArrayLike, leaky_slope: float = LEAKY_RELU_SLOPE
                           ) -> Array:
    r"""$g'(z)$ written in terms of the unit's output $a = g(z)$, as the lecture's table does.

    sigmoid: $a (1 - a)$; tanh: $1 - a^2$; ReLU: $1$ where $a > 0$ (so $g'(0) = 0$); leaky
    ReLU: $1$ where $a \ge 0$, $\alpha$ elsewhere (needs $\alpha > 0$, so that the sign of
    $a$ is the sign of $z$); identity: $1$. Equal to the ``*_derivative(z)`` functions at
    ``a = g(z)``, and what the backward pass uses: it then keeps only the activations
    $a^{[l]}$ from the forward pass, not the pre-activations $z^{[l]}$ too.

    Args:
      name: an activation name from [`ACTIVATIONS`][fnn.activations.ACTIVATIONS].
      a: the activation's output, any shape.

    >>> float(derivative_from_output("sigmoid", sigmoid(0.0)))
    0.25
    """
    a = jnp.asarray(a)
    if name == "sigmoid":
        return a * (1 - a)
    if name == "tanh":
        return 1 - a * a
    if name == "relu":
        return ((a > 0) | jnp.isnan(a)).astype(a.dtype)
    if name == "leaky_relu":
        return jnp.where(a >= 0, jnp.ones_like(a), jnp.full_like(a, leaky_slope))
    if name == "identity":
        return jnp.ones_like(a)
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")


def second_derivative_from_output(name: str, a: ArrayLike) -> Array | None:
    r"""$g''(z)$ written in terms of the unit's output $a = g(z)$, or ``None`` where it is 0.

    sigmoid: $a (1 - a)(1 - 2a)$; tanh: $-2a(1 - a^2)$. ReLU, leaky ReLU and identity are
    piecewise linear: $g'' = 0$ wherever it exists (BackPACK takes the same value at the
    kink), and ``None`` says so without an array of zeros. Used by
    [`fnn.diag_hessian`][fnn.curvature.diag_hessian] for the residual term the GGN leaves out.

    >>> float(second_derivative_from_output("tanh", tanh(0.5)))  # -2 tanh(.5) (1 - tanh(.5)^2)
    -0.7268...
    """
    a = jnp.asarray(a)
    if name == "sigmoid":
        return a * (1 - a) * (1 - 2 * a)
    if name == "tanh":
        return -2 * a * (1 - a * a)
    if name in ACTIVATIONS:
        return None
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")


ACTIVATIONS: dict[str, tuple[Callable[..., Array], Callable[..., Array]]] = {
    "identity": (identity, identity_derivative),
    "sigmoid": (sigmoid, sigmoid_derivative),
    "tanh": (tanh, tanh_derivative),
    "relu": (relu, relu_derivative),
    "leaky_relu": (leaky_relu, leaky_relu_derivative),
}
"""Activation name -> ``(g, g')``."""


class Activation(NamedTuple):
    r"""An activation of your own: its name, $g$ and the hand-written $g'$ the backward uses.

    Pass it where ``fnn.MLP`` takes an activation name: ``fnn.MLP((4, 16, 3), Activation(
    "gelu", gelu, gelu_derivative))``. The forward pass applies ``function``; the delta
    recursion multiplies by ``derivative``, so a wrong derivative gives a wrong gradient, which
    [`fnn.testing.assert_gradients_match`][fnn.testing.assert_gradients_match] names by layer (the
    docs' page *Testing your own pieces* adds GELU this way).

    Attributes:
      name: shown in messages and reports.
      function: $g$, elementwise: any shape to the same shape and dtype.
      derivative: $g'$ as a function of $z$ (the default), or of $a = g(z)$ with
        ``from_output=True`` (as fnn writes sigmoid, tanh and ReLU: then the backward keeps
        only $a^{[l]}$). With a derivative of $z$ the backward keeps $z^{[l]}$ of this layer too.
      from_output: whether ``derivative`` takes $a = g(z)$ rather than $z$.

    An ``Activation`` is hashable (functions hash by identity), so a net that holds one stays
    static under ``jax.jit``; build it once and reuse it, or each new one compiles anew.

    >>> softplus = Activation("softplus", jax.nn.softplus, jax.nn.sigmoid)
    >>> float(softplus.derivative(0.0))
    0.5
    """

    name: str
    function: Callable[[Array], Array]
    derivative: Callable[[Array], Array]
    from_output: bool = False

    def pair(self) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
        """``(g, g')`` with $g'$ a function of $z$, whatever ``from_output`` says."""
        if self.from_output:
            return self.function, lambda z: self.derivative(self.function(z))
        return self.function, self.derivative


def get_activation(
    name: str | Activation, leaky_slope: float = LEAKY_RELU_SLOPE
) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
    """Return ``(g, g')`` for an activation name (or an [`Activation`][fnn.activations.Activation]),
    with leaky ReLU's slope bound.

    >>> g, dg = get_activation("tanh")
    >>> float(dg(jnp.float32(0.0)))
    1.0
    """
    if isinstance(name, Activation):
        return name.pair()
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    g, dg = ACTIVATIONS[name]
    if name == "leaky_relu":
        return (lambda z: leaky_relu(z, leaky_slope)), (
            lambda z: leaky_relu_derivative(z, leaky_slope)
        )
    return g, dg
