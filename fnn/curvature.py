r"""More out of one backward pass: BackPACK's first- and second-order quantities.

One forward pass and one delta recursion hand over two factors per sample and layer: the
input $a_n^{[l-1]}$ and the delta $\delta_n^{[l]} = \partial \ell_n / \partial z_n^{[l]}$.
Sample $n$'s own weight gradient is their outer product $\delta_n^{[l]} a_n^{[l-1]T}$, and
everything BackPACK (Dangel, Kunstner and Hennig 2020) computes for a dense layer is a
contraction of the two factors over the batch, with the recursion run on more than one
column where the quantity is second order:

| fnn | BackPACK | from |
| --- | --- | --- |
| ``batch_grad`` | ``BatchGrad`` | $\frac1N \delta_n a_n^T$ (per sample) |
| ``batch_l2_grad`` | ``BatchL2Grad`` | $\frac1{N^2}\lVert\delta_n\rVert^2\lVert a_n\rVert^2$ |
| ``sum_grad_squared`` | ``SumGradSquared`` | $\frac1{N^2} (D \odot D)^T (A \odot A)$ |
| ``grad_variance`` | ``Variance`` | from the two above |
| ``diag_ggn`` | ``DiagGGNExact`` / ``DiagGGNMC`` | the recursion run on the columns of $S_n$ |
| ``batch_diag_ggn`` | ``BatchDiagGGNExact`` / ``BatchDiagGGNMC`` | per sample |
| ``kfac``, ``kflr`` | ``KFAC``, ``KFLR`` | $\frac1N\sum a a^T$ and $\frac1N\sum s s^T$ |
| ``diag_hessian`` | ``DiagHessian`` | the GGN diagonal plus the residual terms |
| ``batch_diag_hessian`` | ``BatchDiagHessian`` | per sample |

**Second order.** The generalized Gauss-Newton matrix (GGN) of the mean loss is
$G = \frac1N \sum_n J_n^T \Lambda_n J_n$, with $J_n$ the Jacobian of the network's output
with respect to the parameters and $\Lambda_n$ the Hessian of the loss with respect to that
output. With a square root $\Lambda_n = S_n S_n^T$ ($S_n$ of shape ``(k, C)``), column $c$ of
$J_n^T S_n$ for layer $l$ is $s_{n,c}^{[l]} a_n^{[l-1]T}$, where $s_{n,c}^{[l]}$ is the delta
recursion started from $s_{n,c}^{[L]} = S_n[:, c]$ instead of $\delta_n^{[L]}$:
$s^{[l]} = (W^{[l+1]T} s^{[l+1]}) \odot g'^{[l]}(z^{[l]})$. All columns of all samples go
down in one recursion (beside the gradient's own column when a first-order quantity or
the Hessian needs it).

Where the network is split into "model" and "loss" follows BackPACK and the loss's
convexity: for softmax + cross-entropy and sigmoid + binary cross-entropy the output
function belongs to the loss (as in ``torch.nn.CrossEntropyLoss`` and ``BCEWithLogitsLoss``)
and $\Lambda_n = \partial^2 \ell_n / \partial z^{[L]2}$ (``output_hessian_sqrt``); for
squared error it belongs to the model (a ``Softmax`` / ``Sigmoid`` module before
``MSELoss``) and $\Lambda_n = 2 J_O^T J_O$. The Monte Carlo variants replace $S_n$ by
gradients at labels drawn from the model's predictive distribution
(``sampled_output_sqrt``), whose outer products have expectation $\Lambda_n$.

**Scaling.** fnn's loss is the mean over the batch; every quantity here is exactly BackPACK's
for a mean-reduced loss (``reduction="mean"``) on the same weights and data: the per-sample
gradients are $\frac1N \nabla \ell_n$ and sum to the gradient, the curvatures are those of
the mean. Where fnn's loss sums over the ``k`` outputs and PyTorch's averages over them
(``MSELoss``, ``BCEWithLogitsLoss`` with ``reduction="mean"`` divide by $Nk$), fnn's loss is
$k$ times PyTorch's: the gradient-like quantities (gradients, GGN, Hessian, $G$) are $k$
times BackPACK's and the squared ones (``batch_l2_grad``, ``sum_grad_squared``,
``grad_variance``) $k^2$ times. Softmax + squared error has no BackPACK counterpart (it has
no ``Softmax`` module); it is defined by the same formulas.

The deltas are those of ``fnn.delta_recursion``: with ``feedback="random"`` or
``"sign"`` the first-order quantities are statistics of that rule's updates, and the
second-order ones are refused (they are derivatives of the loss, which those rules are not).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fnn import _validation, activations, losses
from fnn.backpropagation import _cast_like, batch_gradients, feedback_matrix
from fnn.network import MLP, Params, forward_trace

Array = jax.Array

FIRST_ORDER = ("batch_grad", "batch_l2_grad", "sum_grad_squared", "grad_variance")
"""Statistics of the per-sample gradients, from the gradient's own deltas."""
EXACT = ("diag_ggn", "batch_diag_ggn", "kflr", "diag_hessian", "batch_diag_hessian")
"""Curvature from the exact square root of the output Hessian (``C = k`` columns a sample)."""
MONTE_CARLO = ("diag_ggn_mc", "batch_diag_ggn_mc", "kfac")
"""Curvature from ``mc_samples`` sampled columns a sample (need ``key``)."""
QUANTITIES = ("loss", "grad", *FIRST_ORDER, *EXACT, *MONTE_CARLO)
"""Every name ``backpack`` computes."""


# ----------------------------------------------------------------------------------------------
# The output layer: square roots of the loss Hessian and the output function's residual


def output_hessian_sqrt(output: str, loss: str, yhat: ArrayLike) -> Array:
    r"""$S^T$ for one sample: the rows of $S$ with $S S^T = \Lambda$, the GGN's output Hessian.

    - softmax + cce: $\Lambda = \operatorname{diag}(p) - p p^T$; column $c$ of $S$ is
      $\sqrt{p_c}\,(e_c - p)$ (BackPACK's choice);
    - sigmoid + bce: $\Lambda = \operatorname{diag}(p (1 - p))$, $S = \operatorname{diag}
      (\sqrt{p(1-p)})$;
    - squared error $\sum_j (\hat y_j - y_j)^2$: $\Lambda = 2 J_O^T J_O$, $S = \sqrt 2 J_O^T$
      ($J_O = I$ for identity; symmetric for softmax and sigmoid).

    Args:
      yhat: the output $\hat y = O(z^{[L]})$ of one sample, shape ``(k,)``.

    Returns:
      Shape ``(k, k)``: row ``c`` is column ``c`` of $S$ (so ``S_T.T @ S_T`` is $\Lambda$).
    """
    yhat = jnp.asarray(yhat)
    k = yhat.shape[-1]
    if loss == "cce":
        return jnp.sqrt(yhat)[:, None] * (jnp.eye(k, dtype=yhat.dtype) - yhat[None, :])
    if loss == "bce":
        return jnp.diag(jnp.sqrt(yhat * (1 - yhat)))
    return math.sqrt(2) * losses.output_jacobian(output, yhat)


def sampled_output_sqrt(
    output: str, loss: str, z: ArrayLike, yhat: ArrayLike, key: ArrayLike, mc_samples: int
) -> Array:
    r"""$\tilde S^T$ for one sample: ``mc_samples`` sampled rows with $E[\tilde S \tilde S^T]
    = \Lambda$.

    Row $m$ is $\frac{1}{\sqrt M} \partial \ell(z^{[L]}, \tilde y_m) / \partial z^{[L]}$, the
    gradient at a label drawn from the model's own predictive distribution: $\tilde y \sim
    \mathrm{Categorical}(p)$ for softmax + cce ($p - e_{\tilde y}$), $\tilde y_j \sim
    \mathrm{Bernoulli}(p_j)$ for sigmoid + bce ($p - \tilde y$), and $\tilde y \sim
    \mathcal N(\hat y, \frac12 I)$ for squared error ($-\sqrt 2 J_O^T \varepsilon$,
    $\varepsilon \sim \mathcal N(0, I)$), as BackPACK samples them.

    Args:
      z: the logits $z^{[L]}$, shape ``(k,)``; ``yhat``: $O(z^{[L]})$, shape ``(k,)``.
      key: a ``jax.random`` key for this sample.
      mc_samples: $M$.

    Returns:
      Shape ``(M, k)``.
    """
    yhat = jnp.asarray(yhat)
    k, dtype = yhat.shape[-1], yhat.dtype
    if loss == "cce":
        labels = jax.random.categorical(key, jnp.asarray(z), shape=(mc_samples,))
        rows = yhat[None, :] - jax.nn.one_hot(labels, k, dtype=dtype)
    elif loss == "bce":
        draws = jax.random.bernoulli(key, jnp.broadcast_to(yhat, (mc_samples, k)))
        rows = yhat[None, :] - draws.astype(dtype)
    else:
        eps = jax.random.normal(key, (mc_samples, k), dtype)
        rows = -math.sqrt(2) * eps @ losses.output_jacobian(output, yhat)
    return rows / math.sqrt(mc_samples)


def output_residual(output: str, loss: str, yhat: ArrayLike, y: ArrayLike):
    r"""The output function's curvature term $\sum_j \frac{\partial \ell}{\partial \hat y_j}
    \nabla^2 O_j(z^{[L]})$ that the GGN leaves out, for squared error on softmax or sigmoid.

    With $g = 2(\hat y - y)$: sigmoid: $\operatorname{diag}(g \odot \sigma'')$ with $\sigma'' =
    \hat y (1 - \hat y)(1 - 2 \hat y)$; softmax ($u = g \odot p$, $s = g^T p$):
    $\operatorname{diag}(u - s p) - u p^T - p u^T + 2 s\, p p^T$. Zero (``None``) where the
    GGN's output Hessian is the whole Hessian: the canonical pairs and identity + mse.

    Returns:
      ``None``, ``("diag", v)`` with ``v`` of shape ``(k,)``, or ``("full", M)`` with ``M`` of
      shape ``(k, k)``.
    """
    if loss != "mse" or output == "identity":
        return None
    yhat = jnp.asarray(yhat)
    g = 2 * (yhat - losses.one_hot_target(y, yhat.shape[-1], yhat.dtype))
    if output == "sigmoid":
        return "diag", g * yhat * (1 - yhat) * (1 - 2 * yhat)
    u = g * yhat
    s = jnp.sum(u)
    outer = jnp.outer(u, yhat)
    return "full", jnp.diag(u - s * yhat) - outer - outer.T + 2 * s * jnp.outer(yhat, yhat)


# ----------------------------------------------------------------------------------------------
# The recursion, run on several columns at once, and the Hessian's residual terms


def backward_rows(net: MLP, params: Params, a: tuple[Array, ...], top: Array) -> tuple:
    r"""The delta recursion of **one sample** on several columns at once, stacked as rows.

    $s^{[l]} = (W^{[l+1]T} s^{[l+1]}) \odot g'^{[l]}(z^{[l]})$, written for the rows
    $s^T$: ``rows[l-1] = (rows[l] @ W[l+1]) * g'(a[l])``. Row 0 started from $\delta^{[L]}$
    is the gradient's own delta (``fnn.delta_recursion``); rows started from the columns
    of $S$ give the GGN's factors.

    Args:
      a: the sample's activations $a^{[0]}, \dots, a^{[L]}$ (``fnn.forward_trace``).
      top: shape ``(V, n[L])``: ``V`` start vectors at the output layer.

    Returns:
      ``rows[l-1]`` of shape ``(V, n[l])`` for ``l = 1 .. L``.
    """
    rows = [top]
    for l in range(net.depth - 1, 0, -1):
        g_prime = activations.derivative_from_output(net.activation[l - 1], a[l], net.leaky_slope)
        top = (top @ feedback_matrix(net, params, l + 1)) * g_prime[None, :]
        rows.append(top)
    return tuple(reversed(rows))


def _residual_down(R, W: Array, d: Array, keep: bool):
    """Carry a residual $R^{[l+1]}$ to layer ``l``: ``diag(D W^T R W D)`` and, if ``keep``, the
    whole matrix (needed only when a layer below is left)."""
    if R is None:
        return None, None
    kind, v = R
    if kind == "diag":  # W^T diag(v) W
        diagonal = d * d * (v @ (W * W))
        full = (W.T * v[None, :]) @ W if keep else None
    else:
        MW = v @ W
        diagonal = d * d * jnp.sum(W * MW, axis=0)
        full = W.T @ MW if keep else None
    return diagonal, None if full is None else ("full", d[:, None] * full * d[None, :])


def _with_diag(R, r: Array):
    if R is None:
        return "diag", r
    return R[0], (R[1] + r if R[0] == "diag" else R[1] + jnp.diag(r))


def hessian_diagonals(
    net: MLP, params: Params, a: tuple[Array, ...], y: Array, deltas: tuple, ggn: tuple
) -> tuple[Array, ...]:
    r"""$\operatorname{diag}(\partial^2 \ell / \partial z^{[l]2})$ of **one sample**, per layer.

    The Hessian with respect to $z^{[l]}$ is the GGN part $S^{[l]} S^{[l]T}$ plus a residual
    $R^{[l]}$ from the curved functions above layer ``l``:
    $R^{[L]}$ = ``output_residual``, and

    $$R^{[l]} = D^{[l]} W^{[l+1]T} R^{[l+1]} W^{[l+1]} D^{[l]}
    + \operatorname{diag}\big(g''^{[l]}(z^{[l]}) \odot W^{[l+1]T} \delta^{[l+1]}\big),
    \quad D^{[l]} = \operatorname{diag}(g'^{[l]}(z^{[l]})).$$

    Only diagonals are kept while they suffice: $\operatorname{diag}(D W^T \operatorname{diag}
    (v) W D) = g'^2 \odot (W \odot W)^T v$; a full ``(n[l], n[l])`` matrix is formed only when
    it has to go down another layer (networks with three or more curved layers above layer 1).
    ReLU and leaky ReLU add nothing ($g'' = 0$).

    Args:
      deltas: the sample's $\delta^{[l]}$, shapes ``(n[l],)``.
      ggn: $\operatorname{diag}(S^{[l]} S^{[l]T})$, shapes ``(n[l],)``.

    Returns:
      Shape ``(n[l],)`` for ``l = 1 .. L``.
    """
    R = output_residual(net.output, net.loss, a[-1], y)
    top = ggn[-1] if R is None else ggn[-1] + (R[1] if R[0] == "diag" else jnp.diagonal(R[1]))
    diagonals = [top]
    for l in range(net.depth - 1, 0, -1):
        W = params[l]["W"]  # W^{[l+1]}
        d = activations.derivative_from_output(net.activation[l - 1], a[l], net.leaky_slope)
        diagonal, R = _residual_down(R, W, d, keep=l > 1)
        g2 = activations.second_derivative_from_output(net.activation[l - 1], a[l])
        if g2 is not None:
            r = g2 * (deltas[l] @ W)
            diagonal = r if diagonal is None else diagonal + r
            R = _with_diag(R, r) if l > 1 else None
        diagonals.append(ggn[l - 1] if diagonal is None else ggn[l - 1] + diagonal)
    return tuple(reversed(diagonals))


# ----------------------------------------------------------------------------------------------
# Contractions over the batch


def _contract(rows: tuple[Array, ...], A: tuple[Array, ...], scale) -> Params:
    r"""$s R^T A$ and $s R^T \mathbf 1$ per layer: ``fnn.batch_gradients``, with $s$ applied
    to the ``(N, n[l])`` rows instead of the ``(n[l], n[l-1])`` result, so that the product
    is written straight into the output (one kernel and one buffer fewer per layer)."""
    return batch_gradients(tuple(R * scale for R in rows), A)


def _per_sample(rows: tuple[Array, ...], A: tuple[Array, ...], scale) -> Params:
    """``{"W": scale r_n a_n^T, "b": scale r_n}`` per sample, shapes ``(N, n[l], n[l-1])``."""
    return tuple({"W": scale * R[:, :, None] * X[:, None, :], "b": scale * R}
                 for R, X in zip(rows, A, strict=True))


def _square(tree):
    return tuple(t * t for t in tree)


def _l2(deltas, A, scale) -> Params:
    norms = [jnp.sum(D * D, axis=1) for D in deltas]
    return tuple({"W": scale * n * jnp.sum(X * X, axis=1), "b": scale * n}
                 for n, X in zip(norms, A, strict=True))


def _kronecker(rows: tuple[Array, ...], A: tuple[Array, ...], n: int) -> tuple[dict, ...]:
    factors = []
    for R, X in zip(rows, A, strict=True):
        # one (N V, n[l]) matrix product: XLA:CPU ran the einsum over two contracted axes
        # (n and v) 2.6x slower (24 against 9 ms for b256, 10 columns, 256 units)
        S = R.reshape(-1, R.shape[-1])
        factors.append({"G": (S * (1.0 / n)).T @ S, "A": (X * (1.0 / n)).T @ X})
    return tuple(factors)


def _variance(grad: Params, sgs: Params, n: int) -> Params:
    # BackPACK's Variance: sgs / N - (grad / N)^2, the variance over the batch of the per-sample
    # gradients g_n = grad l_n / N. It cannot be negative; rounding can make it so by a hair.
    return jax.tree.map(lambda g, s: jnp.maximum(s / n - (g / n) ** 2, 0), grad, sgs)


def _columns(net, params, a, y, names, mc_rows):
    """One recursion on every column the quantities in ``names`` need, stacked as rows: the
    gradient's delta (first order, Hessian), the exact square root's ``k`` (exact second
    order), the ``M`` sampled ones (Monte Carlo). Returns ``(D, E, mc)``, per layer
    ``(N, n[l])``, ``(N, k, n[l])`` and ``(N, M, n[l])``, ``None`` where not needed."""
    yhat = a[-1]
    blocks = {}
    if any(q in FIRST_ORDER or q in ("grad", "diag_hessian", "batch_diag_hessian")
           for q in names):
        blocks["D"] = jax.vmap(lambda p, t: losses.output_delta(net.output, net.loss, p, t))(
            yhat, y)[:, None, :]
    if any(q in EXACT for q in names):
        blocks["E"] = jax.vmap(lambda p: output_hessian_sqrt(net.output, net.loss, p))(yhat)
    if mc_rows is not None:
        blocks["mc"] = mc_rows.astype(yhat.dtype)
    top = jnp.concatenate(list(blocks.values()), axis=1) if len(blocks) > 1 else next(
        iter(blocks.values()))
    rows = jax.vmap(lambda a, t: backward_rows(net, params, a, t))(a, top)
    out, start = {"D": None, "E": None, "mc": None}, 0
    for name, block in blocks.items():
        width = block.shape[1]
        # slice only when the recursion carried more than this block
        out[name] = rows if len(blocks) == 1 else tuple(r[:, start:start + width] for r in rows)
        start += width
    if out["D"] is not None:
        out["D"] = tuple(r[:, 0] for r in out["D"])
    return out["D"], out["E"], out["mc"]


def _from_rows(net, params, z, a, y, names, mc_rows) -> dict:
    """Every quantity in ``names`` from the forward trace and one recursion on all columns."""
    n = a[0].shape[0]
    A = a[:-1]
    D, E, mc = _columns(net, params, a, y, names, mc_rows)
    A2 = _square(A)
    out = {}
    for q in names:
        if q == "loss":
            out[q] = losses.batch_loss(net.output, net.loss, z[-1], y)
        elif q == "grad":
            out[q] = _contract(D, A, 1.0 / n)
        elif q == "batch_grad":
            out[q] = _per_sample(D, A, 1.0 / n)
        elif q == "batch_l2_grad":
            out[q] = _l2(D, A, 1.0 / n**2)
        elif q == "sum_grad_squared":
            out[q] = _contract(_square(D), A2, 1.0 / n**2)
        elif q == "grad_variance":
            out[q] = _variance(_contract(D, A, 1.0 / n), _contract(_square(D), A2, 1.0 / n**2), n)
        elif q in ("kflr", "kfac"):
            out[q] = _kronecker(E if q == "kflr" else mc, A, n)
        else:
            out[q] = _second_order(net, params, a, y, q, D, E, mc, A2, n)
    return out


def _second_order(net, params, a, y, q, D, E, mc, A2, n):
    """The diagonals: GGN (exact or Monte Carlo) or Hessian, summed or per sample."""
    ggn = tuple(jnp.sum(R * R, axis=1) for R in (mc if q.endswith("_mc") else E))
    if q.endswith("hessian"):
        ggn = jax.vmap(lambda a, y, d, g: hessian_diagonals(net, params, a, y, d, g))(
            a, y, D, ggn)
    if q.startswith("batch_"):
        return _per_sample(ggn, A2, 1.0 / n)
    return _contract(ggn, A2, 1.0 / n)


# ----------------------------------------------------------------------------------------------
# The public functions


def _check_request(net: MLP, quantities, mc_samples, key) -> tuple[str, ...]:
    names = (quantities,) if isinstance(quantities, str) else tuple(quantities)
    if not names:
        raise ValueError(f"quantities is empty: name at least one of {list(QUANTITIES)}")
    for q in names:
        _validation.one_of("quantity", q, QUANTITIES)
    second = [q for q in names if q in EXACT or q in MONTE_CARLO]
    if second and net.feedback != "backprop":
        raise ValueError(
            f"{second[0]} is a derivative of the loss; net.feedback={net.feedback!r} gives "
            "updates that are not its gradient. Use feedback='backprop'.")
    if any(q in MONTE_CARLO for q in names):
        try:
            count = None if isinstance(mc_samples, bool) else operator.index(mc_samples)
        except TypeError:
            count = None
        if count is None or count < 1:
            raise ValueError(f"mc_samples must be a positive integer, got {mc_samples!r}")
        if key is None:
            mc = [q for q in names if q in MONTE_CARLO]
            raise ValueError(f"{mc[0]} samples labels: pass key=jax.random.key(...)")
    return names


def backpack(
    net: MLP,
    params: Params,
    x: ArrayLike,
    y: ArrayLike,
    quantities: str | Sequence[str],
    *,
    mc_samples: int = 1,
    key: ArrayLike | None = None,
) -> dict[str, object]:
    r"""Several quantities at once, from one forward pass and one delta recursion.

    fnn's ``with backpack(ext1, ext2):``. The gradient's deltas, the exact square root's
    ``k`` columns (if an exact second-order quantity is asked for) and the ``mc_samples``
    sampled columns (if a Monte Carlo one is) go down the network together in one recursion,
    and each quantity is a contraction of them with the activations, so a training
    instrument that logs several pays for one pass. The Monte Carlo quantities asked for
    together share their samples.

    Args:
      net, params, x, y: as for ``fnn.loss``.
      quantities: names from ``QUANTITIES``: ``"loss"``, ``"grad"``, and the names of the
        functions in this module (``"diag_ggn_mc"`` and ``"batch_diag_ggn_mc"`` for the Monte
        Carlo diagonals). A tuple, so that it can be static under ``jax.jit``.
      mc_samples: Monte Carlo samples per data point (``diag_ggn_mc``, ``batch_diag_ggn_mc``,
        ``kfac``); static under ``jit``.
      key: a ``jax.random`` key, required by the Monte Carlo quantities.

    Returns:
      A dict from each name to its value, as the function of that name returns it.

    >>> import fnn
    >>> net = fnn.MLP((4, 6, 3), "tanh")
    >>> params = fnn.init(jax.random.key(0), net)
    >>> x, y = jnp.ones((5, 4)), jnp.array([0, 1, 2, 0, 1])
    >>> q = jax.jit(backpack, static_argnames="quantities")(
    ...     net, params, x, y, quantities=("grad", "grad_variance", "diag_ggn"))
    >>> q["diag_ggn"][0]["W"].shape, q["grad_variance"][1]["b"].shape
    ((6, 4), (3,))
    """
    names = _check_request(net, quantities, mc_samples, key)
    params, x, y = _validation.inputs(net, params, x, y)
    z, a = jax.vmap(lambda x: forward_trace(net, params, x))(x)
    mc_rows = None
    if any(q in MONTE_CARLO for q in names):
        keys = jax.random.split(key, x.shape[0])
        mc_rows = jax.vmap(lambda z, p, k: sampled_output_sqrt(
            net.output, net.loss, z, p, k, mc_samples))(z[-1], a[-1], keys)
    out = _from_rows(net, params, z, a, y, names, mc_rows)
    for q in names:
        if q in ("kfac", "kflr"):
            out[q] = tuple({f: v.astype(p["W"].dtype) for f, v in layer.items()}
                           for layer, p in zip(out[q], params, strict=True))
        elif q != "loss":
            out[q] = _cast_like(out[q], params)
    return out


def batch_grad(net: MLP, params: Params, x: ArrayLike, y: ArrayLike) -> Params:
    r"""Each sample's gradient, BackPACK's ``BatchGrad``: $\frac1N \delta_n^{[l]}
    a_n^{[l-1]T}$ and $\frac1N \delta_n^{[l]}$.

    Scaled for the mean loss as BackPACK scales them: the per-sample gradients sum to
    ``jax.grad(fnn.loss)``. This is the one quantity that forms an ``(N, n[l], n[l-1])`` array
    per layer: it is the output.

    Args:
      net, params, x, y: as for ``fnn.loss``.

    Returns:
      Like ``params`` with a leading batch axis on every leaf.
    """
    return backpack(net, params, x, y, ("batch_grad",))["batch_grad"]


def batch_l2_grad(net: MLP, params: Params, x: ArrayLike, y: ArrayLike) -> Params:
    r"""Each sample's squared gradient norm per parameter, BackPACK's ``BatchL2Grad``.

    $\lVert \frac1N \delta_n a_n^T \rVert_F^2 = \frac1{N^2} \lVert \delta_n \rVert^2
    \lVert a_n \rVert^2$ for ``W`` and $\frac1{N^2} \lVert \delta_n \rVert^2$ for ``b``: no
    per-sample gradient is formed. Scaled as BackPACK's for a mean-reduced loss (the
    $1/N$ of each per-sample gradient, squared); ``fnn.per_example_grad_norms`` gives the
    unscaled norm of the whole $\nabla \ell_n$.

    Returns:
      Like ``params``, every leaf of shape ``(N,)``.
    """
    return backpack(net, params, x, y, ("batch_l2_grad",))["batch_l2_grad"]


def sum_grad_squared(net: MLP, params: Params, x: ArrayLike, y: ArrayLike) -> Params:
    r"""The sum over the batch of the squared per-sample gradients, BackPACK's
    ``SumGradSquared``.

    $\sum_n (\frac1N \delta_n a_n^T)^{\odot 2} = \frac1{N^2} (D \odot D)^T (A \odot A)$ and
    $\frac1{N^2} \mathbf 1^T (D \odot D)$: one more contraction of the size of the gradient's,
    on squared factors. Scaled as BackPACK's for a mean-reduced loss.

    Returns:
      Like ``params``.
    """
    return backpack(net, params, x, y, ("sum_grad_squared",))["sum_grad_squared"]


def grad_variance(net: MLP, params: Params, x: ArrayLike, y: ArrayLike) -> Params:
    r"""The variance over the batch of the per-sample gradients, BackPACK's ``Variance``.

    With $g_n = \frac1N \nabla \ell_n$ (BackPACK's scaling for a mean-reduced loss) and
    $\bar g = \sum_n g_n$ the gradient: $\frac1N \sum_n g_n^{\odot 2} - (\bar g / N)^{\odot 2}$,
    i.e. ``sum_grad_squared / N - (grad / N)**2``, elementwise (clamped at 0 against
    rounding). The variance of the unscaled $\nabla \ell_n$ is $N^2$ times this.

    Returns:
      Like ``params``.
    """
    return backpack(net, params, x, y, ("grad_variance",))["grad_variance"]


def _ggn_name(base: str, mc_samples, key) -> str:
    if mc_samples is None:
        if key is not None:
            raise ValueError(f"{base}: key is used only with mc_samples (the Monte Carlo "
                             "variant); pass mc_samples=1 or more, or no key")
        return base
    return base + "_mc"


def diag_ggn(
    net: MLP, params: Params, x: ArrayLike, y: ArrayLike, mc_samples: int | None = None,
    key: ArrayLike | None = None,
) -> Params:
    r"""The diagonal of the generalized Gauss-Newton matrix, BackPACK's ``DiagGGNExact`` /
    ``DiagGGNMC``.

    $\operatorname{diag} G$ for $W^{[l]}$: $\frac1N \sum_n \big(\sum_c s_{n,c}^{[l]\odot 2}
    \big) a_n^{[l-1]\odot 2\,T}$, with $s_{n,c}^{[l]}$ the delta recursion run on column $c$
    of the output Hessian's square root (``output_hessian_sqrt``; ``k`` columns); for
    $b^{[l]}$ the same without the activations. Costs one forward pass, one recursion on
    $k$ columns and one contraction per layer. With ``mc_samples`` and ``key``: the Monte
    Carlo estimate from sampled labels (``sampled_output_sqrt``), unbiased. Scaled as
    BackPACK's for a mean-reduced loss (the GGN of the mean loss).

    Args:
      net, params, x, y: as for ``fnn.loss``.
      mc_samples: ``None`` for the exact diagonal, or the number of sampled labels per data
        point (static under ``jit``).
      key: a ``jax.random`` key, with ``mc_samples``.

    Returns:
      Like ``params``.
    """
    name = _ggn_name("diag_ggn", mc_samples, key)
    return backpack(net, params, x, y, (name,), mc_samples=mc_samples or 1, key=key)[name]


def batch_diag_ggn(
    net: MLP, params: Params, x: ArrayLike, y: ArrayLike, mc_samples: int | None = None,
    key: ArrayLike | None = None,
) -> Params:
    r"""Each sample's GGN diagonal, BackPACK's ``BatchDiagGGNExact`` / ``BatchDiagGGNMC``.

    $\frac1N \big(\sum_c s_{n,c}^{[l]\odot 2}\big) a_n^{[l-1]\odot 2\,T}$ per sample $n$:
    the terms of ``diag_ggn``, which they sum to (scaled as BackPACK's for a mean-reduced
    loss). Arguments as for ``diag_ggn``.

    Returns:
      Like ``params`` with a leading batch axis on every leaf.
    """
    name = _ggn_name("batch_diag_ggn", mc_samples, key)
    return backpack(net, params, x, y, (name,), mc_samples=mc_samples or 1, key=key)[name]


def kflr(net: MLP, params: Params, x: ArrayLike, y: ArrayLike) -> tuple[dict, ...]:
    r"""Kronecker factors of the GGN from the exact square root, BackPACK's ``KFLR``.

    Per layer $A^{[l]} = \frac1N \sum_n a_n^{[l-1]} a_n^{[l-1]T}$ and $G^{[l]} = \frac1N
    \sum_n \sum_c s_{n,c}^{[l]} s_{n,c}^{[l]T}$: the GGN block of $W^{[l]}$ (row-major) is
    approximated by $G^{[l]} \otimes A^{[l]}$, that of $b^{[l]}$ is exactly $G^{[l]}$. Scaled
    as BackPACK's for a mean-reduced loss.

    Returns:
      One ``{"G": (n[l], n[l]), "A": (n[l-1], n[l-1])}`` per layer.
    """
    return backpack(net, params, x, y, ("kflr",))["kflr"]


def kfac(
    net: MLP, params: Params, x: ArrayLike, y: ArrayLike, key: ArrayLike, mc_samples: int = 1
) -> tuple[dict, ...]:
    r"""Kronecker factors of the GGN from sampled labels, BackPACK's ``KFAC``.

    As ``kflr``, with $G^{[l]}$ from ``mc_samples`` sampled columns per data point
    (``sampled_output_sqrt``) instead of the ``k`` exact ones: an unbiased estimate of
    ``kflr``'s $G$, cheaper when $k$ is large.

    Returns:
      One ``{"G": (n[l], n[l]), "A": (n[l-1], n[l-1])}`` per layer.
    """
    return backpack(net, params, x, y, ("kfac",), mc_samples=mc_samples, key=key)["kfac"]


def diag_hessian(net: MLP, params: Params, x: ArrayLike, y: ArrayLike) -> Params:
    r"""The diagonal of the Hessian of the mean loss, BackPACK's ``DiagHessian``.

    $\partial^2 L / \partial W^{[l]2}_{ij} = \frac1N \sum_n h^{[l]}_{n,i}\, a^{[l-1]2}_{n,j}$
    with $h^{[l]}_n = \operatorname{diag}(\partial^2 \ell_n / \partial z^{[l]2})$: the GGN's
    $\sum_c s^{[l]\odot 2}_{n,c}$ plus the residual terms of curved activations (sigmoid,
    tanh: $g'' \ne 0$) and of a curved output function under squared error
    (``hessian_diagonals``). For ReLU networks with a canonical output it equals
    ``diag_ggn``. Scaled as BackPACK's for a mean-reduced loss.

    Returns:
      Like ``params``.
    """
    return backpack(net, params, x, y, ("diag_hessian",))["diag_hessian"]


def batch_diag_hessian(net: MLP, params: Params, x: ArrayLike, y: ArrayLike) -> Params:
    r"""Each sample's Hessian diagonal, BackPACK's ``BatchDiagHessian``: the terms of
    ``diag_hessian`` (scaled as BackPACK's for a mean-reduced loss), which they sum to.

    Returns:
      Like ``params`` with a leading batch axis on every leaf.
    """
    return backpack(net, params, x, y, ("batch_diag_hessian",))["batch_diag_hessian"]
