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

Two levels:

* [`train_step`][fnn.training.train_step] (one update on one batch),
  [`train_epoch`][fnn.training.train_epoch] (one jitted ``lax.scan`` over a shuffled epoch)
  and [`evaluate`][fnn.training.evaluate] work on ``params`` and ``opt_state``.
* [`fit`][fnn.training.fit] runs a whole training: it takes a
  [`TrainState`][fnn.training.TrainState], everything a run needs to go on, and returns
  one. A state saved with [`fnn.save_checkpoint`][fnn.checkpoint.save_checkpoint] and
  passed to ``fit`` again continues the run exactly: epoch ``k`` shuffles with
  ``jax.random.fold_in(state.key, k)``, so a resumed run repeats the epochs of an
  uninterrupted one bitwise (same machine). Each epoch is one compiled program (the scan,
  then the evaluation), compiled ahead of the first epoch.

Static arguments: an [`fnn.MLP`][fnn.network.MLP] is a pytree without leaves and passes
through ``jit`` as an ordinary argument. An optax ``GradientTransformation`` is a NamedTuple
of functions, hashed by the identity of its functions: it is a **static** argument. Make the
optimizer once and reuse it (each call to ``optax.adam(...)`` makes new functions, which
compile anew). ``l2`` is traced.

Data parallelism: ``mesh=`` (a [`fnn.parallel.data_mesh`][fnn.parallel.data_mesh])
constrains each minibatch to be sharded along the mesh's ``"data"`` axis; params and
optimizer state are replicated and XLA turns the gradient's mean into one all-reduce per step.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

from fnn import _validation, diagnostics, per_example, privacy
from fnn import metrics as _metrics
from fnn.backpropagation import loss as _loss
from fnn.network import MLP, Params, init

Array = jax.Array
Batch = tuple[ArrayLike, ArrayLike]

__all__ = ["DP", "OPTIMIZERS", "STOP_REASONS", "FitResult", "TrainState", "check_batch_size",
           "evaluate", "fit", "init_state", "l2_gradient", "make_optimizer", "train_epoch",
           "train_step"]

OPTIMIZERS: dict[str, Callable[[Any], optax.GradientTransformation]] = {
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
"""Values of [`FitResult.stopped_because`][fnn.training.FitResult.stopped_because]."""

DIAGNOSTIC_SAMPLES = 1024
"""How many training samples (the first ones) ``fit``'s per-layer diagnostics look at."""


def make_optimizer(name: str, learning_rate: float | optax.Schedule
                   ) -> optax.GradientTransformation:
    """The optax transformation for an optimizer name of ``OPTIMIZERS``.

    Args:
      name: a key of ``OPTIMIZERS``.
      learning_rate: $\\eta > 0$, or an optax schedule (a function of the step count).

    >>> make_optimizer("sgd", 0.1).update  # doctest: +ELLIPSIS
    <function ...>
    """
    _validation.one_of("optimizer", name, OPTIMIZERS)
    if not callable(learning_rate):
        learning_rate = _validation.parameter("learning_rate", learning_rate)
    return OPTIMIZERS[name](learning_rate)


def _is_weight(path, _) -> bool:
    return isinstance(path[-1], jax.tree_util.DictKey) and path[-1].key == "W"


def l2_gradient(grads: Params, params: Params, l2: ArrayLike) -> Params:
    r"""Add $\lambda W^{[l]}$ to the gradient of every weight matrix, nothing to the biases.

    ``optax.add_decayed_weights(l2, mask=...)`` with the mask selecting the ``"W"`` leaves,
    applied to the gradient directly (it is stateless), so the optimizer's state stays
    ``optimizer.init(params)`` whatever ``l2``.

    Args:
      grads: like ``params``; params: one ``{"W", "b"}`` per layer; l2: $\lambda \ge 0$.

    >>> params = ({"W": jnp.ones((2, 3)), "b": jnp.ones(2)},)
    >>> g = l2_gradient(jax.tree.map(jnp.zeros_like, params), params, 0.5)
    >>> float(g[0]["W"][0, 0]), float(g[0]["b"][0])
    (0.5, 0.0)
    """
    decay = optax.add_decayed_weights(
        l2, mask=lambda tree: jax.tree_util.tree_map_with_path(_is_weight, tree))
    return decay.update(grads, decay.init(params), params)[0]


class DP(NamedTuple):
    """DP-SGD settings: clip each example's gradient to ``clip_norm``, add Gaussian noise of
    standard deviation ``noise_multiplier * clip_norm`` to the clipped sum
    ([`fnn.dp_gradient`][fnn.per_example.dp_gradient]).

    In [`train_epoch`][fnn.training.train_epoch] and [`fit`][fnn.training.fit] the batches
    are then Poisson samples at rate $q = B / N$, and a run of $k$ epochs spends
    ``fnn.privacy.epsilon(noise_multiplier, *fnn.privacy.sampling_plan(N, B, k), delta)``."""

    clip_norm: float
    noise_multiplier: float = 0.0


def _check_dp(dp: DP | None, mesh: Mesh | None) -> None:
    if dp is None:
        return
    if not isinstance(dp, DP):
        raise TypeError(f"dp must be a fnn.training.DP or None, got {type(dp).__name__}")
    _validation.parameter("clip_norm", dp.clip_norm)
    _validation.parameter("noise_multiplier", dp.noise_multiplier)
    if mesh is not None:
        raise ValueError("dp (DP-SGD) runs on one device: pass mesh=None")


def check_batch_size(batch_size: int | None, n: int, mesh: Mesh | None = None) -> None:
    """Raise ``ValueError`` unless ``batch_size`` (``None``: full batch) fits ``n`` samples
    and, with a data mesh, splits evenly over its devices."""
    if _validation.parameter("batch_size", batch_size) is not None and batch_size > n:
        raise _validation.ParameterError("batch_size", f"{batch_size} exceeds the {n} training "
                                         "samples")
    if mesh is not None:
        from fnn import parallel

        parallel.check_divisible(n if batch_size is None else batch_size, mesh,
                                 None if batch_size else f"full (the {n} training samples)")


def _shard(mesh: Mesh | None, tree: Any, spec: PartitionSpec) -> Any:
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, spec))


def _step(net, optimizer, params, opt_state, x, y, l2, mesh=None, dp=None, key=None,
          mask=None, expected_batch=None):
    x, y = _shard(mesh, (x, y), PartitionSpec("data"))
    if dp is None:
        loss, grads = jax.value_and_grad(_loss, argnums=1)(net, params, x, y)
    else:
        grads, loss = per_example._dp_gradient_and_loss(
            net, params, x, y, dp.clip_norm, dp.noise_multiplier, key, mask, expected_batch)
    grads = l2_gradient(grads, params, l2)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    params, opt_state = _shard(mesh, (params, opt_state), PartitionSpec())
    return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def _poisson_step(net, optimizer, params, opt_state, keys, *, x, y, l2, dp, batch_size):
    """One DP-SGD step of ``train_epoch`` on a Poisson sample of ``(x, y)`` at rate ``B / N``,
    ``keys`` = (noise key, sample key); the sum is divided by ``B``, the expected batch."""
    n = x.shape[0]
    rate, rows = batch_size / n, privacy.max_batch(n, batch_size / n)
    s = privacy.poisson_sample(keys[1], n, rate, rows)
    params, opt_state, m = _step(net, optimizer, params, opt_state, x[s.indices], y[s.indices],
                                 l2, None, dp, keys[0], s.mask, batch_size)
    return params, opt_state, {**m, "sampled": s.count,
                               "overflows": (s.count > rows).astype(jnp.int32)}


@functools.partial(jax.jit, static_argnames=("optimizer", "mesh", "dp"))
def train_step(net: MLP, optimizer: optax.GradientTransformation, params: Params,
               opt_state: Any, batch: Batch, l2: ArrayLike = 0.0, *, mesh: Mesh | None = None,
               dp: DP | None = None, key: ArrayLike | None = None):
    r"""One update on one batch: $g = \nabla_\theta L(\theta; B) + \lambda W$, then the optimizer.

    With ``optax.sgd(eta)`` this is the lecture's
    $W \leftarrow W - \eta (\partial L / \partial W + \lambda W)$,
    $b \leftarrow b - \eta \, \partial L / \partial b$; the gradient is
    ``jax.grad(fnn.loss)``, the hand-written delta recursion.

    Args:
      net: the architecture; optimizer: any ``optax.GradientTransformation`` (static).
      params: one ``{"W": (n[l], n[l-1]), "b": (n[l],)}`` per layer.
      opt_state: ``optimizer.init(params)`` or the state a previous step returned.
      batch: ``(x, y)``, ``x`` of shape ``(B, n[0])``, ``y`` targets as ``fnn.loss`` takes them.
      l2: $\lambda$ of L2 regularisation (default 0).
      mesh: ``None``, or a data mesh (static): the batch is split along ``"data"`` (``B``
        divisible by its device count), params and ``opt_state`` replicated.
      dp: ``None``, or [`DP`][fnn.training.DP] (static): the gradient is then
        ``fnn.dp_gradient``'s (one-pass per-example clipping plus noise drawn with ``key``).

    Returns:
      ``(params, opt_state, metrics)``: ``metrics["loss"]`` is the data loss at the params
      *before* the update (no L2 term), ``metrics["grad_norm"]`` the 2-norm of the gradient
      the optimizer received (L2 term included).

    >>> import fnn, optax
    >>> net = fnn.MLP((2, 2))
    >>> params = fnn.init(jax.random.key(0), net)
    >>> sgd = optax.sgd(0.1)
    >>> batch = (jnp.ones((4, 2)), jnp.array([0, 1, 1, 1]))
    >>> params, state, m = train_step(net, sgd, params, sgd.init(params), batch)
    >>> sorted(m)
    ['grad_norm', 'loss']
    """
    x, y = jnp.asarray(batch[0]), jnp.asarray(batch[1])
    check_batch_size(x.shape[0], x.shape[0], mesh)
    _check_dp(dp, mesh)
    if dp is not None and key is None:
        raise ValueError("dp (DP-SGD) needs key=, the noise key of this step")
    return _step(net, optimizer, params, opt_state, x, y, l2, mesh, dp, key)


def _scan_steps(step: Callable, params: Params, opt_state: Any, batches: Any):
    """``step(params, opt_state, batch)`` over the leading axis of ``batches``.

    All steps but the last run in one ``lax.scan`` that keeps only the loss (a gradient norm
    in the scan body costs a pass over every weight gradient each step: measured 0.82x the
    epoch's time without it); the last step runs after the scan and reports its norm.
    """
    def body(carry, batch):
        params, opt_state, m = step(*carry, batch)
        return (params, opt_state), {k: v for k, v in m.items() if k != "grad_norm"}

    head, last = jax.tree.map(lambda b: b[:-1], batches), jax.tree.map(lambda b: b[-1], batches)
    (params, opt_state), ms = jax.lax.scan(body, (params, opt_state), head)
    params, opt_state, m = step(params, opt_state, last)
    steps = jax.tree.leaves(batches)[0].shape[0]
    totals = {k: jnp.sum(v) + m[k] for k, v in ms.items()}  # loss, and the DP counts
    return params, opt_state, {**totals, "loss": totals["loss"] / steps,
                               "grad_norm": m["grad_norm"],
                               "steps": jnp.asarray(steps, jnp.int32)}


@functools.partial(jax.jit, static_argnames=("optimizer", "batch_size", "mesh", "dp"))
def train_epoch(net: MLP, optimizer: optax.GradientTransformation, params: Params,
                opt_state: Any, x: ArrayLike, y: ArrayLike, key: ArrayLike, *,
                batch_size: int | None, l2: ArrayLike = 0.0, mesh: Mesh | None = None,
                dp: DP | None = None):
    r"""One epoch: one pass over the training set in minibatches, as one ``lax.scan``.

    The samples are put in the order of ``jax.random.permutation(key, N)`` and cut into
    $\lfloor N / B \rfloor$ minibatches of ``batch_size`` $B$; the last $N \bmod B$ samples of
    the permutation are **dropped** for this epoch (every step has the same shape, so one
    compiled body serves all; the next permutation drops others). ``batch_size=None`` is
    full-batch gradient descent, the lecture's plain algorithm: one step on all $N$ samples.

    With ``dp`` (and a ``batch_size``) each of the $\lfloor N / B \rfloor$ steps takes a
    **Poisson sample** instead: each example joins with probability $q = B / N$
    ([`fnn.privacy.poisson_sample`][fnn.privacy.poisson_sample], key
    ``jax.random.split(jax.random.fold_in(key, 2), steps)[s]``), padded to
    [`fnn.privacy.max_batch`][fnn.privacy.max_batch] rows with a mask; the clipped sum is
    divided by $qN = B$. The step's ``loss`` is $\frac1B \sum_{i \in S} \ell_i$ over its
    sample $S$.

    Args:
      net, optimizer, params, opt_state, l2, mesh: as for [`train_step`][fnn.training.train_step].
      x: training inputs ``(N, n[0])``; y: their ``N`` targets.
      key: the key of this epoch's shuffle (unused for full batch).
      batch_size: $B$, ``1 <= B <= N`` (static), or ``None`` for full batch.
      dp: ``None`` or [`DP`][fnn.training.DP] (static): step ``s`` draws its noise with
        ``jax.random.split(jax.random.fold_in(key, 1), steps)[s]``.

    Returns:
      ``(params, opt_state, metrics)``: ``metrics["loss"]`` the mean over the steps of each
      step's minibatch loss, ``metrics["grad_norm"]`` the last step's gradient norm,
      ``metrics["steps"]`` the number of steps; with ``dp`` and Poisson sampling also
      ``metrics["sampled"]``, the examples sampled over the epoch, and
      ``metrics["overflows"]``, the steps whose sample exceeded ``max_batch`` (and were cut
      to a random ``max_batch`` of it).

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
    check_batch_size(batch_size, n, mesh)
    _check_dp(dp, mesh)
    steps = 1 if batch_size is None else n // batch_size
    keys = jax.random.split(jax.random.fold_in(key, 1), steps)
    if batch_size is None:
        return _scan_steps(lambda p, s, k: _step(net, optimizer, p, s, x, y, l2, mesh, dp, k),
                           params, opt_state, keys)
    if dp is not None:  # Poisson sampling: one padded, masked batch of max_batch rows a step
        sample_keys = jax.random.split(jax.random.fold_in(key, 2), steps)
        step = functools.partial(_poisson_step, net, optimizer, x=x, y=y, l2=l2, dp=dp,
                                 batch_size=batch_size)
        return _scan_steps(step, params, opt_state, (keys, sample_keys))
    order = jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)
    order = _shard(mesh, order, PartitionSpec(None, "data"))

    def step(params, opt_state, batch):
        idx, step_key = batch
        idx = _shard(mesh, idx, PartitionSpec("data"))
        return _step(net, optimizer, params, opt_state, x[idx], y[idx], l2, mesh, dp, step_key)

    return _scan_steps(step, params, opt_state, (order, keys))


@functools.partial(jax.jit, static_argnames=("with_grad",))
def evaluate(net: MLP, params: Params, x: ArrayLike, y: ArrayLike, *, l2: ArrayLike = 0.0,
             with_grad: bool = False) -> dict[str, Array]:
    r"""Full-batch loss, accuracy and (with ``with_grad``) gradient norm on a data set.

    Returns:
      ``{"loss", "accuracy"}`` (``accuracy`` only for softmax and sigmoid outputs; ``loss``
      without the L2 term), plus ``"grad_norm"``, the norm of the full-batch
      $\nabla_\theta L + \lambda W$ of the stopping rule $\lVert \nabla L \rVert < \varepsilon_2$.

    >>> import fnn
    >>> net = fnn.MLP((2, 2))
    >>> out = evaluate(net, fnn.init(jax.random.key(0), net), jnp.ones((3, 2)),
    ...                jnp.array([0, 1, 1]), with_grad=True)
    >>> sorted(out)
    ['accuracy', 'grad_norm', 'loss']
    """
    out = {}
    if with_grad:
        out["loss"], grads = jax.value_and_grad(_loss, argnums=1)(net, params, x, y)
        out["grad_norm"] = optax.tree.norm(l2_gradient(grads, params, l2))
    else:
        out["loss"] = _loss(net, params, x, y)
    if net.output != "identity":
        out["accuracy"] = _metrics.accuracy(net, params, x, y)
    return out


class TrainState(NamedTuple):
    """Everything a run needs to go on: a pytree of arrays (save it with ``fnn.save_checkpoint``).

    Make the first one with [`init_state`][fnn.training.init_state];
    [`fit`][fnn.training.fit] returns the next.
    """

    params: Params
    opt_state: Any
    """``optimizer.init(params)``, then what the optimizer returned."""
    key: Array
    """The run's key: epoch ``k`` shuffles with ``jax.random.fold_in(key, k)``."""
    epoch: Array
    """int32 scalar: the epochs completed."""
    best_params: Params
    """The params after the epoch of lowest validation loss (the initial params until one)."""
    best_epoch: Array
    """int32 scalar: that epoch, 0 until a validation loss is known."""
    best_loss: Array
    """Its validation loss, ``inf`` until then."""
    last_loss: Array
    """The last epoch's ``train_loss`` (NaN before the first), for the rule on $\\varepsilon_1$."""


@functools.partial(jax.jit, static_argnames=("optimizer",))
def init_state(key: ArrayLike, net: MLP, optimizer: optax.GradientTransformation,
               params: Params | None = None) -> TrainState:
    """A run's first [`TrainState`][fnn.training.TrainState].

    Args:
      key: ``jax.random`` key, split into the init key and the run's key.
      net: the architecture; optimizer: its ``init`` makes the optimizer state (static).
      params: start from these instead of ``fnn.init(init_key, net)``.

    >>> import fnn, optax
    >>> state = init_state(jax.random.key(0), fnn.MLP((2, 3, 2)), optax.sgd(0.1))
    >>> int(state.epoch), state.params[0]["W"].shape
    (0, (3, 2))
    """
    k_init, k_run = jax.random.split(key)
    params = init(k_init, net) if params is None else params
    dtype = jax.tree.leaves(params)[0].dtype
    return TrainState(params, optimizer.init(params), k_run, jnp.zeros((), jnp.int32), params,
                      jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, dtype),
                      jnp.asarray(jnp.nan, dtype))


@functools.partial(jax.jit, static_argnames=("optimizer", "batch_size", "mesh", "dp", "with_grad",
                                             "with_layers"))
def _fit_epoch(net, optimizer, state, train, val, l2, *, batch_size, mesh, dp, with_grad,
               with_layers):
    """One epoch of ``fit`` and its evaluation, as one program: the next state and its numbers."""
    epoch = state.epoch + 1
    x, y = train
    params, opt_state, m = train_epoch(
        net, optimizer, state.params, state.opt_state, x, y, jax.random.fold_in(state.key, epoch),
        batch_size=batch_size, l2=l2, mesh=mesh, dp=dp)
    out = {"train_loss": m["loss"], "step_grad_norm": m["grad_norm"], "steps": m["steps"],
           "previous_loss": state.last_loss}
    out.update({f"dp_{k}": m[k] for k in ("sampled", "overflows") if k in m})
    if net.output != "identity":
        out["train_accuracy"] = _metrics.accuracy(net, params, x, y)
    if with_grad:
        out["grad_norm"] = evaluate(net, params, x, y, l2=l2, with_grad=True)["grad_norm"]
    if with_layers:
        n = DIAGNOSTIC_SAMPLES
        layers = diagnostics.layer_diagnostics(net, params, x[:n], y[:n])
        out["layers"] = {k: v for k, v in layers.items() if k != "loss"}
    best = (state.best_params, state.best_epoch, state.best_loss)
    if val is not None:
        ev = evaluate(net, params, *val)
        out.update({f"val_{k}": v for k, v in ev.items()})
        improved = ev["loss"] < state.best_loss  # False for NaN
        best = jax.tree.map(lambda new, old: jnp.where(improved, new, old),
                            (params, epoch, ev["loss"]), best)
    out["best_epoch"] = best[1]
    return TrainState(params, opt_state, state.key, epoch, *best, m["loss"]), out


class FitResult(NamedTuple):
    """What [`fit`][fnn.training.fit] returns."""

    state: TrainState
    """The state after the last epoch run (with ``patience``, ``params`` are ``best_params``)."""
    history: list[dict[str, Any]]
    """One record per epoch run by this call (see ``fit``)."""
    stopped_because: str
    """One of ``STOP_REASONS``."""
    compile_time: float
    """Seconds spent compiling the epoch's program before the first epoch (0 if none ran)."""


def _number(v: Any) -> Any:
    """A fetched value as JSON-ready Python: floats rounded to their dtype's precision (6
    significant digits for float32), so that 0.96 reads 0.96, not 0.9600000381469727."""
    if isinstance(v, dict):
        return {k: _number(e) for k, e in v.items()}
    if isinstance(v, list | tuple):
        return [_number(e) for e in v]
    v = np.asarray(v)
    if v.ndim:
        return [_number(e) for e in v]
    if np.issubdtype(v.dtype, np.integer):
        return int(v)
    return float(f"{float(v):.{np.finfo(v.dtype).precision}g}")


def _stop_reason(r: dict, epochs: int, eps_loss, eps_grad, patience) -> str | None:
    """The first of the lecture's stopping rules that holds after epoch ``r["epoch"]``."""
    if not np.isfinite(r["train_loss"]):
        return "nonfinite"
    if eps_grad is not None and r["grad_norm"] < eps_grad:
        return "eps_grad"
    if eps_loss is not None and abs(r["train_loss"] - r["previous_loss"]) < eps_loss:
        return "eps_loss"
    if patience is not None and r["epoch"] - r["best_epoch"] >= patience:
        return "patience"
    return "epochs" if r["epoch"] >= epochs else None


def fit(net: MLP, optimizer: optax.GradientTransformation, state: TrainState, train: Batch,
        val: Batch | None = None, *, epochs: int, batch_size: int | None, l2: float = 0.0,
        eps_loss: float | None = None, eps_grad: float | None = None,
        patience: int | None = None, diagnostics: bool = False,
        callback: Callable[[TrainState, dict[str, Any]], None] | None = None,
        mesh: Mesh | None = None, dp: DP | None = None) -> FitResult:
    r"""Train from ``state`` up to epoch ``epochs`` with the lecture's stopping rules.

    Epoch ``k`` (1-based) runs [`train_epoch`][fnn.training.train_epoch] with the key
    ``jax.random.fold_in(state.key, k)``, then evaluates, in one compiled program. Passing a
    saved state continues a run exactly where it was (same shuffles, same best-params
    bookkeeping), and ``epochs`` larger than before extends it. After each epoch, in this
    order, training stops when:

    * ``"nonfinite"``: the epoch's train loss is NaN or infinite (diverged);
    * ``"eps_grad"``: $\lVert \nabla L(\theta) \rVert < \varepsilon_2$, the full-batch
      gradient (L2 term included) at the epoch's end;
    * ``"eps_loss"``: $|L_k - L_{k-1}| < \varepsilon_1$, $L_k$ the epoch's ``train_loss``;
    * ``"patience"``: the validation loss has not improved for ``patience`` epochs;
    * ``"epochs"``: epoch ``epochs`` is done.

    With ``patience``, the returned state's ``params`` are its ``best_params`` (the epoch of
    lowest validation loss), whatever the reason for stopping.

    Args:
      net: the architecture; optimizer: the one ``state.opt_state`` belongs to (static).
      state: from [`init_state`][fnn.training.init_state], or returned by an earlier ``fit``.
      train: ``(x, y)``, ``x`` of shape ``(N, n[0])``.
      val: optional ``(x, y)``: validation loss and accuracy, best params, early stopping.
      epochs: the last epoch of the run, those already in ``state`` counted.
      batch_size: minibatch size, or ``None`` for full-batch gradient descent.
      l2: $\lambda$ of L2 regularisation on the weights.
      eps_loss, eps_grad: $\varepsilon_1$, $\varepsilon_2$ (``None``: unused).
      patience: early-stopping patience in epochs (``None``: off; needs ``val``).
      diagnostics: also record the full-batch gradient norm (always with ``eps_grad``) and
        [`layer_diagnostics`][fnn.diagnostics.layer_diagnostics] on the first
        ``DIAGNOSTIC_SAMPLES`` training samples, every epoch.
      callback: ``callback(state, record)`` after every epoch.
      mesh: ``None`` or a [`data_mesh`][fnn.parallel.data_mesh]: data-parallel training.
        Every process of a ``jax.distributed`` run passes the same ``train`` and ``state``;
        data and state are replicated, each device gathers its own rows of every minibatch.
      dp: ``None`` or [`DP`][fnn.training.DP]: DP-SGD steps on Poisson samples (see
        [`train_epoch`][fnn.training.train_epoch]), one device only.

    Returns:
      [`FitResult`][fnn.training.FitResult]. Each record has ``epoch``, ``train_loss`` (mean
      of the epoch's minibatch losses), ``train_accuracy`` (full-batch, at the epoch's end),
      ``step_grad_norm`` (the last step's), ``steps``, ``best_epoch``, ``val_loss`` and
      ``val_accuracy`` (with ``val``), ``grad_norm`` and ``layers`` (with ``diagnostics``),
      ``time`` (seconds) and ``stopped_because`` (``None`` while training goes on); with
      ``dp`` and a ``batch_size``, ``dp_sampled`` and ``dp_overflows`` (of ``train_epoch``).
      Accuracies are absent for an identity output.

    >>> import fnn, optax
    >>> net, adam = fnn.MLP((2, 8, 2)), optax.adam(0.05)
    >>> x = jax.random.normal(jax.random.key(0), (64, 2))
    >>> y = (x[:, 0] > 0).astype(jnp.int32)
    >>> result = fit(net, adam, init_state(jax.random.key(1), net, adam), (x, y), epochs=20,
    ...              batch_size=16)
    >>> result.stopped_because, int(result.state.epoch), result.history[-1]["train_accuracy"] > 0.9
    ('epochs', 20, True)
    """
    p = {k: _validation.parameter(k, v) for k, v in (
        ("epochs", epochs), ("l2", l2), ("eps_loss", eps_loss), ("eps_grad", eps_grad),
        ("patience", patience))}
    if patience is not None and val is None:
        raise ValueError("patience (early stopping) needs validation data val=(x, y)")
    _check_dp(dp, mesh)
    # device_put, not jnp.asarray: that compiles a small program per shape of NumPy input.
    x, y, val = jax.tree.map(
        lambda a: a if isinstance(a, jax.Array) else jax.device_put(np.asarray(a)),
        (train[0], train[1], val))
    check_batch_size(batch_size, x.shape[0], mesh)
    l2 = np.asarray(p["l2"], jax.tree.leaves(state.params)[0].dtype)
    if mesh is not None:  # replicated; the minibatches are sharded inside train_epoch
        from fnn import parallel

        state, x, y, val, l2 = parallel.replicate((state, x, y, val, l2), mesh)
    static = {"batch_size": batch_size, "mesh": mesh, "dp": dp, "with_layers": diagnostics,
              "with_grad": diagnostics or eps_grad is not None}
    history, stopped, run, compile_time = [], "epochs", None, 0.0
    for k in range(int(state.epoch) + 1, p["epochs"] + 1):
        t0 = time.perf_counter()
        if run is None:  # compiled ahead, so that epoch times are epochs
            run = _fit_epoch.lower(net, optimizer, state, (x, y), val, l2, **static).compile()
            compile_time, t0 = time.perf_counter() - t0, time.perf_counter()
        state, out = run(net, state, (x, y), val, l2)
        record = {"epoch": k, **_number(jax.device_get(out))}
        record["time"] = round(time.perf_counter() - t0, 6)
        reason = _stop_reason(record, p["epochs"], p["eps_loss"], p["eps_grad"], p["patience"])
        record.pop("previous_loss", None)
        record["stopped_because"] = reason
        if reason is not None and patience is not None:
            state = state._replace(params=state.best_params)
        history.append(record)
        if callback is not None:
            callback(state, record)
        if reason is not None:
            stopped = reason
            break
    return FitResult(state, history, stopped, compile_time)
