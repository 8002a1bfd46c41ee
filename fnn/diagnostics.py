r"""Per-layer diagnostics from the backward pass, and a gradient checker for your own network.

[`layer_diagnostics`][fnn.diagnostics.layer_diagnostics] reads the lecture's quantities $z^{[l]}$,
$a^{[l]}$, $\delta^{[l]}$ of one forward pass and one delta recursion and condenses them per layer:
the size of the deltas, dead ReLUs ($g'(z) = 0$), saturated sigmoid / tanh units ($g'(z)$ small: the
vanishing gradients of lecture 000) and the gradient norm. It is pure JAX, so it runs inside a
jitted train step and can be logged every step.

[`check_gradients`][fnn.diagnostics.check_gradients] checks every equation of the recursion on your
network and data, in the order backprop computes them (layer $L$ down to 1), and names the first
that disagrees.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fnn import _validation, losses
from fnn.backpropagation import _cast_like, batch_gradients, loss, trace_and_deltas
from fnn.network import MLP, Params, batch_loss, loss_autodiff

Array = jax.Array

SATURATING = ("sigmoid", "tanh")
"""Activations whose units can saturate: $g'(z) \\to 0$ for large $|z|$."""


def layer_diagnostics(
    net: MLP, params: Params, x: ArrayLike, y: ArrayLike, *, saturation_threshold: float = 0.01
) -> dict[str, Array]:
    r"""Per-layer health of the backward pass, from one forward pass and one delta recursion.

    Index ``l - 1`` of each array is layer ``l``. Definitions:

    - ``delta_norm`` ``(L,)``: $\frac1N \sum_i \lVert \delta_i^{[l]} \rVert$, the mean over the
      batch of each sample's own delta norm ($\delta_i = \partial \ell_i / \partial z_i$, not
      divided by $N$).
    - ``grad_norm`` ``(L,)``: $\big(\lVert \partial L / \partial W^{[l]} \rVert_F^2 +
      \lVert \partial L / \partial b^{[l]} \rVert^2\big)^{1/2}$ of the batch-mean gradient
      (the leaves of ``jax.grad(fnn.loss)``, weights and bias together).
    - ``dead_fraction`` ``(L-1,)``, hidden layers: the fraction of units with
      $g'(z^{[l]}_{ij}) = 0$ for **every** sample $i$ of the batch (dead ReLUs; no gradient
      reaches their incoming weights).
    - ``inactive_fraction`` ``(L-1,)``: the fraction of (sample, unit) pairs with $g' = 0$.
    - ``saturated_fraction`` ``(L-1,)``: for sigmoid and tanh layers, the fraction of (sample,
      unit) pairs with $g'(z) <$ ``saturation_threshold`` (default 0.01: sigmoid' < 0.01 means
      $|z| > 4.6$, $1 - \tanh^2 z < 0.01$ means $|z| > 3.0$); 0 for the other activations,
      which do not saturate this way.
    - ``loss``: the mean loss, a scalar.

    Args:
      net, params, x, y: as for [`fnn.loss`][fnn.backpropagation.loss].
      saturation_threshold: the $g'$ below which a sigmoid / tanh unit counts as saturated.

    Returns:
      A dict of arrays (jit-friendly: ``jax.jit(layer_diagnostics)`` works).

    >>> import fnn
    >>> net = fnn.MLP((3, 4, 2))
    >>> d = layer_diagnostics(net, fnn.init(jax.random.key(0), net), jnp.ones((5, 3)),
    ...                       jnp.zeros(5, int))
    >>> d["grad_norm"].shape, d["dead_fraction"].shape
    ((2,), (1,))
    """
    params, x, y = _validation.inputs(net, params, x, y)
    z, a, deltas = trace_and_deltas(net, params, x, y)
    n = x.shape[0]
    grads = _cast_like(batch_gradients(deltas, a, 1.0 / n, policy=net.precision), params)
    dtype = z[-1].dtype
    dead, inactive, saturated = [], [], []
    for l in range(1, net.depth):
        g_prime = net.activation_of(l)[1](z[l - 1])
        zero = g_prime == 0
        dead.append(jnp.mean(jnp.all(zero, axis=0)))
        inactive.append(jnp.mean(zero))
        if net.activation[l - 1] in SATURATING:
            saturated.append(jnp.mean(jnp.abs(g_prime) < saturation_threshold))
        else:
            saturated.append(jnp.zeros((), dtype))

    def stack(values):
        return jnp.stack([v.astype(dtype) for v in values]) if values else jnp.zeros(0, dtype)

    return {
        "loss": batch_loss(net, z[-1], y),
        "delta_norm": stack([jnp.mean(jnp.linalg.norm(D, axis=1)) for D in deltas]),
        "grad_norm": stack(
            [jnp.sqrt(jnp.sum(g["W"] ** 2) + jnp.sum(g["b"] ** 2)) for g in grads]
        ),
        "dead_fraction": stack(dead),
        "inactive_fraction": stack(inactive),
        "saturated_fraction": stack(saturated),
    }


# ----------------------------------------------------------------------------------------------
# Gradient checking


class Check(NamedTuple):
    """One comparison made by [`check_gradients`][fnn.diagnostics.check_gradients]."""

    layer: int | None
    """The lecture's layer ``l``, or ``None`` for a finite-difference direction."""
    equation: str
    """The equation checked, in the lecture's notation."""
    reference: str
    """What it was compared against."""
    error: float
    r"""$\max |\text{ours} - \text{ref}| / \max |\text{ref}|$ (absolute where ref is 0)."""
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.error <= self.tolerance)

    def __str__(self) -> str:
        where = f"layer {self.layer}" if self.layer is not None else "all layers"
        verdict = "agrees with" if self.passed else "disagrees with"
        return (f"{where}: {self.equation} {verdict} {self.reference} "
                f"(max rel err {self.error:.1e})")


class GradientCheckError(AssertionError):
    """Raised by ``check_gradients(..., raise_on_error=True)``; ``.result`` holds the report."""

    def __init__(self, result: GradientCheck):
        super().__init__(str(result))
        self.result = result


@dataclasses.dataclass(frozen=True)
class GradientCheck:
    """What [`check_gradients`][fnn.diagnostics.check_gradients] returns: every comparison, in the
    order they were made."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def first_failure(self) -> Check | None:
        """The first equation (from layer ``L`` down) that disagrees, or ``None``."""
        return next((c for c in self.checks if not c.passed), None)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        first = self.first_failure
        if first is None:
            worst = max(self.checks, key=lambda c: c.error / c.tolerance)
            head = (f"gradient check passed: {len(self.checks)} checks "
                    f"(largest relative error {worst.error:.1e}, {worst.equation})")
        else:
            head = f"gradient check FAILED: {first}"
        rows = [f"  [{'ok' if c.passed else 'FAIL'}] {c}" for c in self.checks]
        return "\n".join([head, *rows])


def _error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = np.max(np.abs(ref), initial=0.0)
    err = np.max(np.abs(ours - ref), initial=0.0)
    return float(err / scale) if scale > 0 else float(err)


def _perturbed_loss(net: MLP, eps, params, x, y):
    r"""The mean loss with $z^{[l]} + \epsilon^{[l]}$ in place of $z^{[l]}$, plain JAX.

    Its gradient with respect to ``eps[l-1]`` at ``eps = 0`` is
    $\partial L / \partial Z^{[l]} = D^{[l]} / N$.
    """

    def one(x, y, eps):
        a = x
        for l, layer in enumerate(params, start=1):
            z = layer["W"] @ a + layer["b"] + eps[l - 1]
            a = net.layer_function(l)(z)
        return losses.sample_loss(net.output, net.loss, z, y)

    return jnp.mean(jax.vmap(one)(x, y, eps))


def check_gradients(
    net: MLP,
    params: Params,
    x: ArrayLike,
    y: ArrayLike,
    *,
    directions: int = 3,
    seed: int = 0,
    tolerance: float = 1e-6,
    raise_on_error: bool = False,
) -> GradientCheck:
    r"""Check the hand-written backward pass of ``net`` on ``(x, y)``, equation by equation.

    Everything runs in float64 (``params``, ``x`` and real targets are cast), whatever the
    dtype given. For ``l = L`` down to ``1``, in the order backprop computes them:

    1. $\delta^{[l]}$ from [`fnn.delta_recursion`][fnn.backpropagation.delta_recursion] against
       ``jax.grad`` of a plain-JAX forward with respect to $z^{[l]}$ (zero perturbations
       $\epsilon^{[l]}$ added to $z^{[l]}$: $\partial L / \partial \epsilon^{[l]} = D^{[l]} / N$);
    2. $\partial L / \partial W^{[l]}$ and $\partial L / \partial b^{[l]}$ of
       ``jax.grad(fnn.loss)`` against ``jax.grad(fnn.loss_autodiff)``;

    then 3. for ``directions`` random unit directions $v$ in parameter space, the directional
    derivative $\langle \nabla L, v \rangle$ against the central difference
    $(L(\theta + h v) - L(\theta - h v)) / 2h$, relative to $\lVert \nabla L \rVert$.

    The report names the first equation that disagrees by more than ``tolerance``: an error in
    $g'^{[l]}$ shows first in $\delta^{[l]}$, and only later in the layers below. A net with
    ``feedback="random"`` or ``"sign"`` fails by design: its recursion is not the gradient.

    A precision policy (``net.precision``) is set aside: the equations are checked in float64.

    This is a host-side tool (it compiles a few small functions on each call): call it once
    on a batch, not inside ``jit``.

    Args:
      net, params, x, y: as for [`fnn.loss`][fnn.backpropagation.loss].
      directions: how many random finite-difference directions.
      seed: the seed of those directions.
      tolerance: the largest relative error accepted (float64: a correct backward pass is at
        about 1e-13; finite differences at about 1e-9 for smooth activations).
      raise_on_error: raise [`GradientCheckError`][fnn.diagnostics.GradientCheckError] (an
        ``AssertionError``) on the first disagreement instead of only reporting it.

    Returns:
      [`GradientCheck`][fnn.diagnostics.GradientCheck]; ``str()`` of it is a readable report,
      ``.ok`` and ``.first_failure`` tell the outcome.
    """
    params, x, y = _validation.inputs(net, params, x, y)
    net = dataclasses.replace(net, precision=None)
    with jax.enable_x64(True):
        to64 = lambda v: jnp.asarray(v, jnp.float64)  # noqa: E731
        params = jax.tree.map(to64, params)
        x = to64(x)
        if jnp.issubdtype(y.dtype, jnp.floating):
            y = to64(y)
        n = x.shape[0]
        eps = tuple(jnp.zeros((n, m), jnp.float64) for m in net.layer_sizes[1:])
        # Fresh closures on every call, so that nothing compiled for an earlier (say,
        # monkeypatched) version of the code is reused.
        ours_fn = jax.jit(lambda p, x, y: (trace_and_deltas(net, p, x, y)[2],
                                           jax.grad(loss, argnums=1)(net, p, x, y)))
        ref_fn = jax.jit(lambda e, p, x, y: (
            jax.grad(lambda e: _perturbed_loss(net, e, p, x, y))(e),
            jax.grad(loss_autodiff, argnums=1)(net, p, x, y)))
        deltas, grads = ours_fn(params, x, y)
        dz, ref_grads = ref_fn(eps, params, x, y)

        checks = _equation_checks(net, deltas, grads, dz, ref_grads, n, tolerance)
        checks += _finite_difference_checks(net, params, x, y, grads, directions, seed,
                                            tolerance)
    result = GradientCheck(tuple(checks))
    if raise_on_error and not result.ok:
        raise GradientCheckError(result)
    return result


def _equation_checks(net, deltas, grads, dz, ref_grads, n, tolerance) -> list[Check]:
    """Each layer's delta, dW and db against their references, from the output layer down."""
    B = "W" if net.feedback == "backprop" else "B"
    checks: list[Check] = []
    for l in range(net.depth, 0, -1):
        if l == net.depth:
            equation = f"delta[{l}] = dl/dz[{l}] ({net.output} output, {net.loss} loss)"
        else:
            g = getattr(net.activation[l - 1], "name", net.activation[l - 1])
            equation = f"delta[{l}] = {B}[{l + 1}]^T delta[{l + 1}] * g'(z[{l}]) (g = {g})"
        checks.append(Check(l, equation, "jax.grad", _error(deltas[l - 1], n * dz[l - 1]),
                            tolerance))
        checks.append(Check(l, f"dW[{l}] = mean_i delta_i[{l}] a_i[{l - 1}]^T",
                            "jax.grad(fnn.loss_autodiff)",
                            _error(grads[l - 1]["W"], ref_grads[l - 1]["W"]), tolerance))
        checks.append(Check(l, f"db[{l}] = mean_i delta_i[{l}]", "jax.grad(fnn.loss_autodiff)",
                            _error(grads[l - 1]["b"], ref_grads[l - 1]["b"]), tolerance))
    return checks


def _finite_difference_checks(net, params, x, y, grads, directions, seed, tolerance
                              ) -> list[Check]:
    """<grad, v> against the central difference, on the host in NumPy (float64)."""
    loss_fn = jax.jit(lambda p: loss_autodiff(net, p, x, y))
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(jax.tree.map(np.asarray, params))
    grad_leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    grad_norm = math.sqrt(sum(float(np.sum(g * g)) for g in grad_leaves))
    h = 1e-6 * max(1.0, math.sqrt(sum(float(np.sum(p * p)) for p in leaves)))
    checks = []
    for k in range(directions):
        v = [rng.normal(size=p.shape) for p in leaves]
        norm = math.sqrt(sum(float(np.sum(u * u)) for u in v))
        v = [u / norm for u in v]
        shift = lambda s, v=v: jax.tree.unflatten(  # noqa: E731
            treedef, [p + s * u for p, u in zip(leaves, v, strict=True)])
        fd = (float(loss_fn(shift(h))) - float(loss_fn(shift(-h)))) / (2 * h)
        directional = sum(float(np.sum(g * u)) for g, u in zip(grad_leaves, v, strict=True))
        err = abs(fd - directional) / grad_norm if grad_norm > 0 else abs(fd - directional)
        checks.append(Check(None, f"<grad, v{k}> = (L(theta + h v{k}) - L(theta - h v{k})) / 2h",
                            "float64 finite differences", err, tolerance))
    return checks
