r"""Training: gradient descent on minibatches, epochs and the lecture's stopping rules.

The lecture's algorithm (001, 003, 004): start from random weights, then repeat
$\theta \leftarrow \theta - \eta \nabla_\theta L$, with the gradient of the mean loss on the
whole training set (full-batch gradient descent) or on minibatches of a shuffled epoch, until
$|L_{k+1} - L_k| < \varepsilon_1$, or $\lVert \nabla L \rVert < \varepsilon_2$, or a maximum
number of iterations. L2 regularisation (004) adds $\lambda W^{[l]}$ to the gradient of each
weight matrix and nothing to the biases, i.e. it minimises
$L + \frac\lambda2 \sum_l \lVert W^{[l]} \rVert_F^2$.

Every gradient here is ``jax.grad(fnn.loss)``: the hand-written delta recursion. The update
rule is any ``optax.GradientTransformation``: ``optax.sgd(eta)`` is the lecture's plain rule,
momentum and Adam are drop-in replacements.

Layers of this module:

* :func:`train_step`: one update on one batch (jitted).
* :func:`train_epoch`: one epoch over the minibatches of a shuffled permutation of the
  training set, one jitted ``lax.scan`` (the last step, which also reports its gradient
  norm, runs after it).
* :func:`evaluate`: full-batch loss, accuracy and gradient norm (jitted).
* :func:`fit`: the Python loop over epochs, the stopping rules, early stopping and history.

Data parallelism: :func:`train_step`, :func:`train_epoch` and :func:`fit` take ``mesh=``, a
1-D device mesh from :func:`fnn.parallel.data_mesh`. Each minibatch is then constrained to
be sharded along the mesh's ``"data"`` axis, params and optimizer state are replicated, and
XLA turns the gradient's mean over the batch into one all-reduce per step (see
:mod:`fnn.parallel`). ``mesh=None`` (the default) is the single-device code, unchanged.

Static arguments: an :class:`fnn.MLP` is a pytree without leaves, so it passes through
``jit`` as an ordinary argument. An optax ``GradientTransformation`` is a NamedTuple of
functions, which ``jit`` cannot take as data; it is a **static** argument
(``static_argnames=("optimizer",)``), hashed by the identity of its functions. Make the
optimizer once and reuse it: each call to ``optax.adam(...)`` makes new functions, so a new
optimizer object compiles the step anew. The regularisation strength ``l2`` is traced (a
new value does not recompile).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike

from fnn import diagnostics, per_example
from fnn import metrics as _metrics
from fnn.backpropagation import loss as _loss
from fnn.network import MLP, Params

Array = jax.Array
Batch = tuple[ArrayLike, ArrayLike]

__all__ = [
    "OPTIMIZERS",
    "FitResult",
    "evaluate",
    "fit",
    "l2_gradient",
    "make_optimizer",
    "train_epoch",
    "train_step",
]

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    "adagrad": lambda lr: optax.adagrad(lr),
    "rmsprop": lambda lr: optax.rmsprop(lr),
    "adam": lambda lr: optax.adam(lr),
}
"""Optimizer name -> factory of the optax transformation for a learning rate $\\eta$.
``"sgd"`` is the lecture's $\\theta \\leftarrow \\theta - \\eta \\nabla L$; ``"momentum"`` and
``"nesterov"`` use momentum 0.9; the others use optax's defaults."""

STOP_REASONS = ("epochs", "eps_loss", "eps_grad", "patience", "nonfinite")
"""Values of :attr:`FitResult.stopped_because`."""


def make_optimizer(name: str, learning_rate: float | optax.Schedule
                   ) -> optax.GradientTransformation:
    """The optax transformation for an optimizer name of :data:`OPTIMIZERS`.

    Args:
      name: a key of :data:`OPTIMIZERS`.
      learning_rate: $\\eta > 0$, or an optax schedule (a function of the step count).

    >>> make_optimizer("sgd", 0.1).update  # doctest: +ELLIPSIS
    <function ...>
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    if callable(learning_rate):
        return OPTIMIZERS[name](learning_rate)
    if not (isinstance(learning_rate, int | float) and not isinstance(learning_rate, bool)
            and learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
    return OPTIMIZERS[name](float(learning_rate))


def _is_weight(path, _) -> bool:
    last = path[-1]
    return isinstance(last, jax.tree_util.DictKey) and last.key == "W"


def _weights_mask(tree: Any) -> Any:
    return jax.tree_util.tree_map_with_path(_is_weight, tree)


def l2_gradient(grads: Params, params: Params, l2: ArrayLike) -> Params:
    r"""Add $\lambda W^{[l]}$ to the gradient of every weight matrix, nothing to the biases.

    The lecture's L2 rule (004): $\partial W^{[l]} \mathrel{+}= \lambda W^{[l]}$, the bias
    (the column $j = 0$ of $W_B$) skipped. It is ``optax.add_decayed_weights(l2, mask=...)``
    with the mask selecting the ``"W"`` leaves; being stateless, it is applied here to the
    gradient directly rather than chained into the optimizer, so the optimizer's state stays
    ``optimizer.init(params)``, whatever ``l2``.

    Args:
      grads: like ``params``.
      params: one ``{"W": (n[l], n[l-1]), "b": (n[l],)}`` per layer.
      l2: $\lambda \ge 0$, a scalar (may be traced).

    Returns:
      The regularised gradient, like ``params``.

    >>> params = ({"W": jnp.ones((2, 3)), "b": jnp.ones(2)},)
    >>> zeros = jax.tree.map(jnp.zeros_like, params)
    >>> g = l2_gradient(zeros, params, 0.5)
    >>> float(g[0]["W"][0, 0]), float(g[0]["b"][0])
    (0.5, 0.0)
    """
    decay = optax.add_decayed_weights(l2, mask=_weights_mask)
    grads, _ = decay.update(grads, decay.init(params), params)
    return grads


def _shard(mesh: Mesh, x: Array) -> Array:
    """``x`` of shape ``(B, ...)`` constrained to be split along ``"data"`` (axis 0)."""
    from fnn import parallel

    return jax.lax.with_sharding_constraint(x, parallel.batch_sharding(mesh, x.ndim))


def _replicated(mesh: Mesh, tree: Any) -> Any:
    return jax.lax.with_sharding_constraint(tree, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))


def _check_mesh_batch(mesh: Mesh | None, batch: int, what: str = "batch_size") -> None:
    if mesh is not None:
        from fnn import parallel

        parallel.check_divisible(batch, mesh, what)


class DP(NamedTuple):
    """DP-SGD settings: clip each example's gradient to ``clip_norm``, add Gaussian noise of
    standard deviation ``noise_multiplier * clip_norm / B`` (:func:`fnn.dp_gradient`)."""

    clip_norm: float
    noise_multiplier: float = 0.0


def _step(net: MLP, optimizer: optax.GradientTransformation, params: Params, opt_state: Any,
          x: Array, y: Array, l2: ArrayLike, mesh: Mesh | None = None,
          dp: DP | None = None, key: ArrayLike | None = None):
    if mesh is not None:
        x, y = _shard(mesh, x), _shard(mesh, y)
    if dp is None:
        loss, grads = jax.value_and_grad(_loss, argnums=1)(net, params, x, y)
    else:
        loss = _loss(net, params, x, y)
        grads = per_example.dp_gradient(net, params, x, y, dp.clip_norm, dp.noise_multiplier,
                                        key)
    grads = l2_gradient(grads, params, l2)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if mesh is not None:
        params, opt_state = _replicated(mesh, (params, opt_state))
    return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


@functools.partial(jax.jit, static_argnames=("optimizer", "mesh", "dp"))
def train_step(net: MLP, optimizer: optax.GradientTransformation, params: Params,
               opt_state: Any, batch: Batch, l2: ArrayLike = 0.0, *, mesh: Mesh | None = None,
               dp: DP | None = None, key: ArrayLike | None = None):
    r"""One update on one batch: $g = \nabla_\theta L(\theta; B) + \lambda W$, then the optimizer.

    With ``optax.sgd(eta)`` this is the lecture's
    $W \leftarrow W - \eta (\partial L / \partial W + \lambda W)$,
    $b \leftarrow b - \eta \, \partial L / \partial b$. The gradient is ``jax.grad(fnn.loss)``,
    i.e. the hand-written delta recursion.

    Args:
      net: the architecture.
      optimizer: any ``optax.GradientTransformation`` (static: see the module docstring).
      params: one ``{"W": (n[l], n[l-1]), "b": (n[l],)}`` per layer.
      opt_state: ``optimizer.init(params)`` or the state a previous step returned.
      batch: ``(x, y)``, ``x`` of shape ``(B, n[0])``, ``y`` targets as :func:`fnn.loss`
        takes them.
      l2: $\lambda$ of L2 regularisation (default 0).
      mesh: ``None`` (one device), or a :func:`fnn.parallel.data_mesh` (static): the batch
        is split along its ``"data"`` axis, ``B`` must be divisible by its device count
        (``ValueError`` otherwise), params and ``opt_state`` are replicated.
      dp: ``None``, or :class:`DP` (static): the gradient is then
        :func:`fnn.dp_gradient`'s (per-example clipping in the one backward pass, plus
        noise drawn with ``key``) instead of ``jax.grad(fnn.loss)``. One device only.
      key: the noise key of this step (needed with ``dp``).

    Returns:
      ``(params, opt_state, metrics)``; ``metrics["loss"]`` is the data loss $L(\theta; B)$ at
      the parameters *before* the update, without the $\frac\lambda2 \lVert W \rVert^2$ term;
      ``metrics["grad_norm"]`` the global 2-norm of the gradient the optimizer received
      (the L2 term included).

    >>> import fnn, optax
    >>> net = fnn.MLP((2, 2))
    >>> params = fnn.init(jax.random.key(0), net)
    >>> sgd = optax.sgd(0.1)
    >>> batch = (jnp.ones((4, 2)), jnp.array([0, 1, 1, 1]))
    >>> params, state, m = train_step(net, sgd, params, sgd.init(params), batch)
    >>> sorted(m)
    ['grad_norm', 'loss']
    """
    x, y = batch
    x, y = jnp.asarray(x), jnp.asarray(y)
    _check_mesh_batch(mesh, x.shape[0])
    _check_dp(dp, mesh, key, needs_key=True)
    return _step(net, optimizer, params, opt_state, x, y, l2, mesh, dp, key)


def _check_dp(dp: DP | None, mesh: Mesh | None, key: Any = None, needs_key: bool = False):
    if dp is None:
        return
    if not isinstance(dp, DP):
        raise TypeError(f"dp must be a fnn.training.DP or None, got {type(dp).__name__}")
    if not (dp.clip_norm > 0 and math.isfinite(dp.clip_norm)):
        raise ValueError(f"dp.clip_norm must be positive, got {dp.clip_norm!r}")
    if not (dp.noise_multiplier >= 0 and math.isfinite(dp.noise_multiplier)):
        raise ValueError(f"dp.noise_multiplier must be >= 0, got {dp.noise_multiplier!r}")
    if mesh is not None:
        raise ValueError("dp (DP-SGD) runs on one device: pass mesh=None")
    if needs_key and key is None:
        raise ValueError("dp (DP-SGD) needs key=, the noise key of this step")


def _check_batch_size(batch_size: int | None, n: int) -> None:
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None (full batch), "
                         f"got {batch_size!r}")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training samples; "
                         "use batch_size=None for full-batch gradient descent")


@functools.partial(jax.jit, static_argnames=("optimizer", "batch_size", "mesh", "dp"))
def train_epoch(net: MLP, optimizer: optax.GradientTransformation, params: Params,
                opt_state: Any, x: ArrayLike, y: ArrayLike, key: ArrayLike, *,
                batch_size: int | None, l2: ArrayLike = 0.0, mesh: Mesh | None = None,
                dp: DP | None = None):
    r"""One epoch: one pass over the training set in minibatches, as one ``lax.scan``.

    The samples are put in the order of ``jax.random.permutation(key, N)`` and cut into
    $\lfloor N / B \rfloor$ minibatches of ``batch_size`` $B$; the last $N \bmod B$ samples of
    the permutation are **dropped** for this epoch (every step then has the same shape, so
    one compiled scan body serves all steps; a different permutation next epoch drops
    different samples). The scan runs all steps but the last, keeping only each step's
    loss; the last step runs after it and also reports its gradient norm (a norm inside the
    scan body would cost a pass over every weight gradient each step). ``batch_size=None``
    is full-batch gradient descent, the lecture's plain algorithm: exactly one step on all
    $N$ samples, in their given order (``key`` is unused).

    Args:
      net, optimizer, params, opt_state, l2: as for :func:`train_step`.
      x: training inputs ``(N, n[0])``.
      y: training targets for the ``N`` samples.
      key: ``jax.random`` key of this epoch's shuffle.
      batch_size: $B$, ``1 <= B <= N`` (static), or ``None`` for full batch.
      mesh: ``None``, or a :func:`fnn.parallel.data_mesh` (static, one process): each
        minibatch ``x[idx]`` is constrained to be split along ``"data"``, and so are the
        permutation's indices, so each device gathers only its own ``B / D`` rows from the
        data set (pass ``x``, ``y`` replicated: :func:`fnn.parallel.replicate`). ``B`` (``N``
        for full batch) must be divisible by the device count. Several processes: use
        :func:`fit`, which feeds each process's slice of the batches.
      dp: ``None`` or :class:`DP` (static): DP-SGD steps, step ``s`` drawing its noise with
        ``jax.random.split(jax.random.fold_in(key, 1), steps)[s]`` (the shuffle keeps
        ``key``, so it is the same with and without DP).

    Returns:
      ``(params, opt_state, metrics)``: ``metrics["loss"]`` is the mean over the epoch's
      steps of each step's minibatch data loss (at the parameters before that step),
      ``metrics["grad_norm"]`` the gradient norm of the epoch's last step, ``metrics["steps"]``
      the number of steps.

    >>> import fnn, optax
    >>> net = fnn.MLP((2, 2))
    >>> params = fnn.init(jax.random.key(0), net)
    >>> sgd = optax.sgd(0.1)
    >>> x, y = jnp.ones((10, 2)), jnp.zeros(10, jnp.int32)
    >>> _, _, m = train_epoch(net, sgd, params, sgd.init(params), x, y, jax.random.key(1),
    ...                       batch_size=4)
    >>> int(m["steps"])
    2
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    n = x.shape[0]
    _check_batch_size(batch_size, n)
    _check_mesh_batch(mesh, n if batch_size is None else batch_size,
                      "full batch of N =" if batch_size is None else "batch_size")
    _check_dp(dp, mesh)
    noise_key = jax.random.fold_in(key, 1)
    if batch_size is None:
        params, opt_state, m = _step(net, optimizer, params, opt_state, x, y, l2, mesh, dp,
                                     noise_key)
        return params, opt_state, {**m, "steps": jnp.asarray(1, jnp.int32)}
    steps = n // batch_size
    order = jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)
    if dp is not None:
        def step(params, opt_state, batch):
            idx, step_key = batch
            return _step(net, optimizer, params, opt_state, x[idx], y[idx], l2, None, dp,
                         step_key)

        order = (order, jax.random.split(noise_key, steps))
    elif mesh is None:
        def step(params, opt_state, idx):
            return _step(net, optimizer, params, opt_state, x[idx], y[idx], l2)
    else:
        order = jax.lax.with_sharding_constraint(order, jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec(None, "data")))

        def step(params, opt_state, idx):
            idx = _shard(mesh, idx)
            return _step(net, optimizer, params, opt_state, x[idx], y[idx], l2, mesh)

    return _scan_steps(step, params, opt_state, order)


def _scan_steps(step: Callable, params: Params, opt_state: Any, batches: Any):
    """Run ``step(params, opt_state, batch)`` over the leading axis of ``batches``.

    All steps but the last run in one ``lax.scan`` whose body keeps only the loss, so XLA
    drops the gradient norm there (measured: on the MNIST-5k epoch at batch 64 it cost an
    extra pass writing $g^2$ of every weight matrix and a reduction per leaf, each step,
    because $g^2$ then has two consumers, the norm and Adam's second moment); the last step
    runs after the scan and reports its gradient norm.

    Returns:
      ``(params, opt_state, {"loss": mean over the steps, "grad_norm": the last step's,
      "steps"})``.
    """
    def body(carry, batch):
        params, opt_state, m = step(*carry, batch)
        return (params, opt_state), m["loss"]

    head, last = jax.tree.map(lambda b: b[:-1], batches), jax.tree.map(lambda b: b[-1], batches)
    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), head)
    params, opt_state, m = step(params, opt_state, last)
    steps = jax.tree.leaves(batches)[0].shape[0]
    return params, opt_state, {
        "loss": (jnp.sum(losses) + m["loss"]) / steps,
        "grad_norm": m["grad_norm"],
        "steps": jnp.asarray(steps, jnp.int32),
    }


@functools.partial(jax.jit, static_argnames=("optimizer", "mesh"))
def _train_batches(net: MLP, optimizer: optax.GradientTransformation, params: Params,
                   opt_state: Any, xb: Array, yb: Array, l2: ArrayLike, *, mesh: Mesh):
    """One epoch over minibatches laid out as ``(steps, B, ...)``, sharded on axis 1."""

    def step(params, opt_state, batch):
        return _step(net, optimizer, params, opt_state, *batch, l2, mesh)

    return _scan_steps(step, params, opt_state, (xb, yb))


def _multiprocess_epoch(net, optimizer, params, opt_state, x_host, y_host, key, batch_size,
                        l2, mesh):
    """:func:`train_epoch` across processes: same shuffle, each process feeds its own rows."""
    from fnn import parallel

    n = x_host.shape[0]
    if batch_size is None:
        order = np.arange(n).reshape(1, n)
    else:
        steps = n // batch_size
        order = np.asarray(jax.random.permutation(key, n))[: steps * batch_size]
        order = order.reshape(steps, batch_size)
    xb, yb = parallel.epoch_batches(x_host, y_host, order, mesh)
    return _train_batches(net, optimizer, params, opt_state, xb, yb, l2, mesh=mesh)


@functools.partial(jax.jit, static_argnames=("with_grad",))
def evaluate(net: MLP, params: Params, x: ArrayLike, y: ArrayLike, *, l2: ArrayLike = 0.0,
             with_grad: bool = False) -> dict[str, Array]:
    r"""Full-batch loss, accuracy and (optionally) gradient norm on a data set.

    Args:
      net, params: the network.
      x: ``(N, n[0])``; y: the ``N`` targets.
      l2: $\lambda$, only used for the gradient norm.
      with_grad: also return ``grad_norm``, the global 2-norm of the full-batch gradient
        $\nabla_\theta L + \lambda W$ (``jax.grad(fnn.loss)``, the hand-written backward):
        the quantity of the lecture's stopping rule $\lVert \nabla L \rVert < \varepsilon_2$.

    Returns:
      ``{"loss", "accuracy"}`` (``accuracy`` only for softmax and sigmoid outputs), plus
      ``"grad_norm"`` with ``with_grad``. ``loss`` is the data loss, without the L2 term.

    >>> import fnn
    >>> net = fnn.MLP((2, 2))
    >>> out = evaluate(net, fnn.init(jax.random.key(0), net), jnp.ones((3, 2)),
    ...                jnp.array([0, 1, 1]), with_grad=True)
    >>> sorted(out)
    ['accuracy', 'grad_norm', 'loss']
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    out = {}
    if with_grad:
        out["loss"], grads = jax.value_and_grad(_loss, argnums=1)(net, params, x, y)
        out["grad_norm"] = optax.tree.norm(l2_gradient(grads, params, l2))
    else:
        out["loss"] = _loss(net, params, x, y)
    if net.output != "identity":
        out["accuracy"] = _metrics.accuracy(net, params, x, y)
    return out


DIAGNOSTIC_SAMPLES = 1024
"""How many training samples (the first ones) :func:`fit`'s per-layer diagnostics look at."""
DIAGNOSTIC_KEYS = ("delta_norm", "grad_norm", "dead_fraction", "saturated_fraction")
"""The per-layer diagnostics of :func:`fnn.diagnostics.layer_diagnostics` that :func:`fit`
records in every epoch's ``history[i]["layers"]``."""
_layer_diagnostics = jax.jit(diagnostics.layer_diagnostics)


class FitResult(NamedTuple):
    """What :func:`fit` returns."""

    params: Params
    """The final parameters; with ``patience``, those of the best validation epoch."""
    opt_state: Any
    """The optimizer state after the last epoch run (not rolled back by early stopping)."""
    history: list[dict[str, Any]]
    """One dict per epoch (see :func:`fit`), earlier epochs of a resumed run included."""
    stopped_because: str
    """One of :data:`STOP_REASONS`."""
    best_epoch: int | None
    """The epoch (1-based) of the lowest validation loss, ``None`` without validation data."""
    epoch: int
    """The number of epochs completed."""
    key: Array
    """The run's base key (epoch ``k`` shuffles with ``jax.random.fold_in(key, k)``)."""


def _float(x: Any) -> float:
    return float(jax.device_get(x))


def _best_from_history(history: Sequence[Mapping[str, Any]]) -> tuple[int | None, float]:
    best_epoch, best_loss = None, math.inf
    for record in history:
        v = record.get("val_loss")
        if v is not None and math.isfinite(v) and v < best_loss:
            best_epoch, best_loss = int(record["epoch"]), float(v)
    return best_epoch, best_loss


def _as_float(name: str, value: Any) -> float:
    try:
        if isinstance(value, bool) or jnp.ndim(value) != 0:
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _check_positive(name: str, value: Any) -> None:
    if value is not None and not _as_float(name, value) > 0:
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")


def fit(net: MLP, params: Params, optimizer: optax.GradientTransformation, train: Batch,
        val: Batch | None = None, *, epochs: int, batch_size: int | None, key: ArrayLike,
        l2: float = 0.0, eps_loss: float | None = None, eps_grad: float | None = None,
        patience: int | None = None,
        callback: Callable[[int, dict[str, Any]], None] | None = None,
        start_epoch: int = 0, history: Sequence[Mapping[str, Any]] | None = None,
        opt_state: Any = None, best_params: Params | None = None,
        mesh: Mesh | None = None, dp: DP | None = None) -> FitResult:
    r"""Train for up to ``epochs`` epochs with the lecture's stopping rules.

    Epoch ``k`` (1-based) runs :func:`train_epoch` with the key ``jax.random.fold_in(key, k)``,
    so the shuffles depend only on ``key`` and ``k``: a run resumed from epoch ``k`` (pass
    ``start_epoch=k`` with the saved ``params``, ``opt_state``, ``history`` and, with
    ``patience``, ``best_params``) repeats exactly the shuffles of an uninterrupted run and
    ends with bitwise the same parameters on the same machine.

    After each epoch, in this order, training stops when:

    * ``"nonfinite"``: the epoch's train loss is NaN or infinite (diverged);
    * ``"eps_grad"``: $\lVert \nabla L(\theta) \rVert < \varepsilon_2$, the full-batch
      gradient (L2 term included) of the training loss at the epoch's end;
    * ``"eps_loss"``: $|L_{k} - L_{k-1}| < \varepsilon_1$ with $L_k$ = ``train_loss`` of epoch
      ``k`` (the mean minibatch loss; for full batch exactly $L(\theta_{k-1})$);
    * ``"patience"``: the validation loss has not improved (strictly) for ``patience``
      epochs (early stopping);
    * ``"epochs"``: ``epochs`` epochs are done (the maximum number of iterations).

    With ``patience``, the returned ``params`` are those of the best validation epoch,
    whatever the reason for stopping.

    Args:
      net: the architecture.
      params: initial parameters (or those saved after epoch ``start_epoch``).
      optimizer: an ``optax.GradientTransformation`` (static, see the module docstring).
      train: ``(x, y)``, the training set, ``x`` of shape ``(N, n[0])``.
      val: optional ``(x, y)`` validation set, for ``val_loss``, ``val_accuracy``,
        ``best_epoch`` and early stopping.
      epochs: the maximum number of epochs of the whole run, those before ``start_epoch``
        included (a run resumed after epoch 3 with ``epochs=10`` runs epochs 4 to 10).
      batch_size: minibatch size, or ``None`` for full-batch gradient descent.
      key: the run's base ``jax.random`` key.
      l2: $\lambda$ of L2 regularisation on the weights.
      eps_loss, eps_grad: the thresholds $\varepsilon_1$, $\varepsilon_2$ (``None``: unused).
      patience: early-stopping patience in epochs (``None``: no early stopping; needs ``val``).
      callback: ``callback(epoch, state)`` after every epoch; ``state`` has ``params`` and
        ``opt_state`` (after this epoch), ``epoch``, ``key``, ``history``, ``best_params``
        (``None`` without ``patience``), ``best_epoch`` and ``stopped_because`` (``None``
        while training goes on).
      start_epoch: the number of epochs already done (to resume a run).
      history: the history of those epochs (to resume); not modified.
      opt_state: the optimizer state to start from (default ``optimizer.init(params)``).
      best_params: to resume with ``patience``: the best parameters so far.
      mesh: ``None`` (one device) or a :func:`fnn.parallel.data_mesh`: data-parallel
        training. The data sets, params and optimizer state are replicated over the mesh,
        every minibatch is split along ``"data"`` (``batch_size``, or ``N`` for full batch,
        must be divisible by the device count). With several processes
        (``jax.distributed``), each process must pass the same ``train`` and ``key``; it
        feeds only its own devices' rows of every minibatch, and all processes end with the
        same replicated ``params``.
      dp: ``None`` or :class:`DP`: DP-SGD (see :func:`train_epoch`); one device only. No
        privacy accounting: fnn does not compute epsilon.

    Returns:
      :class:`FitResult`. ``history[i]`` is a dict with ``epoch``, ``train_loss`` (mean of the
      epoch's minibatch losses), ``train_accuracy`` (full-batch, at the epoch's end),
      ``grad_norm`` (full-batch, at the epoch's end), ``step_grad_norm`` (of the last step),
      ``steps``, ``val_loss`` and ``val_accuracy`` (``None`` without ``val``), ``layers``
      (per-layer lists from :func:`fnn.diagnostics.layer_diagnostics` on the first
      :data:`DIAGNOSTIC_SAMPLES` training samples at the epoch's end: ``delta_norm``,
      ``grad_norm``, ``dead_fraction``, ``saturated_fraction``) and ``time`` (wall seconds of
      the epoch, evaluation included). Accuracies are ``None`` for an identity output.

    >>> import fnn, optax
    >>> net = fnn.MLP((2, 8, 2))
    >>> x = jax.random.normal(jax.random.key(0), (64, 2))
    >>> y = (x[:, 0] > 0).astype(jnp.int32)
    >>> res = fit(net, fnn.init(jax.random.key(1), net), optax.adam(0.05), (x, y), epochs=20,
    ...           batch_size=16, key=jax.random.key(2))
    >>> res.stopped_because, res.epoch, res.history[-1]["train_accuracy"] > 0.9
    ('epochs', 20, True)
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
        raise ValueError(f"start_epoch must be a non-negative int, got {start_epoch!r}")
    for name, value in (("eps_loss", eps_loss), ("eps_grad", eps_grad)):
        _check_positive(name, value)
    if patience is not None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive int or None, got {patience!r}")
        if val is None:
            raise ValueError("patience (early stopping) needs validation data val=(x, y)")
    if not _as_float("l2", l2) >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2!r}")
    _check_dp(dp, mesh)
    x, y = jnp.asarray(train[0]), jnp.asarray(train[1])
    _check_batch_size(batch_size, x.shape[0])
    if val is not None:
        xv, yv = jnp.asarray(val[0]), jnp.asarray(val[1])
    history = [dict(r) for r in history or ()]
    if len(history) != start_epoch:
        raise ValueError(f"history has {len(history)} epochs but start_epoch is {start_epoch}")
    if opt_state is None:
        opt_state = optimizer.init(params)
    best_epoch, best_loss = _best_from_history(history)
    if patience is not None:
        if best_epoch is None:
            best_params = params
        elif best_params is None:
            raise ValueError("resuming with patience needs the best_params saved so far")
    else:
        best_params = None
    l2 = jnp.asarray(l2, dtype=jax.tree.leaves(params)[0].dtype)
    multiprocess, mesh_kw = False, {}
    if mesh is not None:
        mesh_kw = {"mesh": mesh}
        from fnn import parallel

        _check_mesh_batch(mesh, x.shape[0] if batch_size is None else batch_size,
                          "full batch of N =" if batch_size is None else "batch_size")
        multiprocess = jax.process_count() > 1
        if multiprocess:
            x_host, y_host = np.asarray(train[0]), np.asarray(train[1])
        x, y, params, opt_state, best_params, l2 = parallel.replicate(
            (x, y, params, opt_state, best_params, l2), mesh)
        if val is not None:
            xv, yv = parallel.replicate((xv, yv), mesh)

    stopped = "epochs"
    epoch = start_epoch
    for epoch in range(start_epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        if multiprocess:
            params, opt_state, m = _multiprocess_epoch(
                net, optimizer, params, opt_state, x_host, y_host,
                jax.random.fold_in(key, epoch), batch_size, l2, mesh)
        else:  # mesh=None is not passed, so the default path is exactly the old call
            dp_kw = {} if dp is None else {"dp": dp}
            params, opt_state, m = train_epoch(net, optimizer, params, opt_state, x, y,
                                               jax.random.fold_in(key, epoch),
                                               batch_size=batch_size, l2=l2, **mesh_kw, **dp_kw)
        ev = evaluate(net, params, x, y, l2=l2, with_grad=True)
        layers = _layer_diagnostics(net, params, x[:DIAGNOSTIC_SAMPLES], y[:DIAGNOSTIC_SAMPLES])
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": _float(m["loss"]),
            "train_accuracy": _float(ev["accuracy"]) if "accuracy" in ev else None,
            "grad_norm": _float(ev["grad_norm"]),
            "step_grad_norm": _float(m["grad_norm"]),
            "steps": int(m["steps"]),
            "val_loss": None,
            "val_accuracy": None,
            "layers": {k: [_float(v) for v in layers[k]] for k in DIAGNOSTIC_KEYS},
        }
        if val is not None:
            ev_val = evaluate(net, params, xv, yv)
            record["val_loss"] = _float(ev_val["loss"])
            if "accuracy" in ev_val:
                record["val_accuracy"] = _float(ev_val["accuracy"])
            if math.isfinite(record["val_loss"]) and record["val_loss"] < best_loss:
                best_epoch, best_loss = epoch, record["val_loss"]
                if patience is not None:
                    best_params = params
        record["time"] = time.perf_counter() - t0
        history.append(record)

        reason = None
        if not math.isfinite(record["train_loss"]):
            reason = "nonfinite"
        elif eps_grad is not None and record["grad_norm"] < eps_grad:
            reason = "eps_grad"
        elif (eps_loss is not None and len(history) >= 2
              and abs(record["train_loss"] - history[-2]["train_loss"]) < eps_loss):
            reason = "eps_loss"
        elif patience is not None and epoch - (best_epoch or start_epoch) >= patience:
            reason = "patience"
        if reason is None and epoch == epochs:
            reason = "epochs"
        if callback is not None:
            callback(epoch, {
                "params": params, "opt_state": opt_state, "epoch": epoch, "key": key,
                "history": history, "best_params": best_params, "best_epoch": best_epoch,
                "stopped_because": reason,
            })
        if reason is not None:
            stopped = reason
            break

    final = best_params if patience is not None and best_params is not None else params
    return FitResult(final, opt_state, history, stopped, best_epoch, epoch, key)
