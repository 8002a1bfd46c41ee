r"""Training: gradient descent on minibatches, epochs and the lecture's stopping rules.

The lecture's algorithm (001, 003, 004): from random weights, repeat
$\theta \leftarrow \theta - \eta \nabla_\theta L$ (the gradient of the mean loss on the whole
training set, or on the minibatches of a shuffled epoch) until
$|L_{k+1} - L_k| < \varepsilon_1$, $\lVert \nabla L \rVert < \varepsilon_2$ or a maximum
number of iterations. L2 regularisation (004) adds $\lambda W^{[l]}$ to each weight gradient
and nothing to the biases. Every gradient is ``jax.grad(fnn.loss)``, the hand-written delta
recursion; the update rule is any ``optax.GradientTransformation`` (``optax.sgd(eta)`` is the
lecture's).

[`train_step`][fnn.training.train_step], [`train_epoch`][fnn.training.train_epoch] (one
``lax.scan``) and [`evaluate`][fnn.training.evaluate] work on params and optimizer state;
[`fit`][fnn.training.fit] runs a whole training from a
[`TrainState`][fnn.training.TrainState] and returns the next one: epoch ``k`` shuffles with
``jax.random.fold_in(state.key, k)``, so a saved state passed back continues the run bitwise.

An optax transformation is a **static** argument, hashed by the identity of its functions:
make it once and reuse it (each ``optax.adam(...)`` call compiles anew). ``mesh=`` (a
[`data_mesh`][fnn.parallel.data_mesh]) shards each minibatch along ``"data"``; params and
optimizer state are replicated, and the gradient's mean becomes one all-reduce per step.
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

from fnn import _validation, diagnostics, parallel, per_example, privacy
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
"""Name -> the optax transformation for a learning rate (momentum: 0.9; else optax's defaults)."""

STOP_REASONS = ("epochs", "eps_loss", "eps_grad", "patience", "nonfinite")
"""The values of ``stopped_because`` in a [`FitResult`][fnn.training.FitResult]."""

DIAGNOSTIC_SAMPLES = 1024
"""How many training samples (the first ones) ``fit``'s per-layer diagnostics look at."""


def make_optimizer(name: str, learning_rate: float | optax.Schedule
                   ) -> optax.GradientTransformation:
    """The optax transformation ``OPTIMIZERS[name]`` for a learning rate $\\eta > 0$ or a schedule.

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

    It is ``optax.add_decayed_weights`` masked to the ``"W"`` leaves, applied to the gradient
    (stateless), so the optimizer's state does not depend on ``l2``.

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
        parallel.check_divisible(n if batch_size is None else batch_size, mesh,
                                 None if batch_size else f"full (the {n} training samples)")


def _shard(mesh: Mesh | None, tree: Any, spec: PartitionSpec) -> Any:
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, spec))


def _step(net, optimizer, params, opt_state, x, y, l2, mesh=None, dp=None, key=None,
          mask=None, expected_batch=None):
    x, y = _shard(mesh, (x, y), PartitionSpec("data"))
    l2 = jnp.where(l2 >= 0, l2, jnp.nan)  # a negative or NaN lambda, unchecked under jit: NaN
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

    With ``optax.sgd(eta)``: $W \leftarrow W - \eta (\partial L / \partial W + \lambda W)$,
    $b \leftarrow b - \eta \, \partial L / \partial b$. ``batch`` is ``(x, y)`` with ``x`` of
    shape ``(B, n[0])``; ``optimizer``, ``mesh`` (the batch split along ``"data"``) and ``dp``
    (a [`DP`][fnn.training.DP]: ``fnn.dp_gradient``'s one-pass clipping and noise drawn with
    ``key``) are static. Returns ``(params, opt_state, {"loss", "grad_norm"})``: the data loss
    at the params *before* the update and the norm of the gradient the optimizer received.
    ``l2`` is traced, so not checked: a negative or NaN $\lambda$ makes the weights NaN.

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
    losses = jnp.append(ms.pop("loss"), m["loss"])
    bad = ~jnp.isfinite(losses)  # the first step whose loss was NaN or infinite (1-based; 0: none)
    totals = {k: jnp.sum(v) + m[k] for k, v in ms.items()}  # the DP counts
    return params, opt_state, {**totals, "loss": jnp.mean(losses), "grad_norm": m["grad_norm"],
                               "steps": jnp.asarray(steps, jnp.int32),
                               "nonfinite_step": jnp.where(bad.any(), jnp.argmax(bad) + 1, 0)}


@functools.partial(jax.jit, static_argnames=("optimizer", "batch_size", "mesh", "dp"))
def train_epoch(net: MLP, optimizer: optax.GradientTransformation, params: Params,
                opt_state: Any, x: ArrayLike, y: ArrayLike, key: ArrayLike, *,
                batch_size: int | None, l2: ArrayLike = 0.0, mesh: Mesh | None = None,
                dp: DP | None = None):
    r"""One epoch: the minibatches of ``jax.random.permutation(key, N)`` in one ``lax.scan``.

    $\lfloor N / B \rfloor$ steps of ``batch_size`` $B$ (static); the last $N \bmod B$ samples
    of the permutation are **dropped** this epoch, so one compiled body serves every step.
    ``batch_size=None`` is full-batch gradient descent: one step on all $N$ samples. The other
    arguments are [`train_step`][fnn.training.train_step]'s. Returns ``(params, opt_state,
    {"loss", "grad_norm", "steps", "nonfinite_step"})``: the mean of the steps' minibatch
    losses, the last step's gradient norm, the first step whose loss was not finite (0: none).

    With ``dp`` (and a ``batch_size``) each step takes a **Poisson sample** instead: each
    example joins with probability $q = B / N$
    ([`fnn.privacy.poisson_sample`][fnn.privacy.poisson_sample], key
    ``split(fold_in(key, 2), steps)[s]``), padded to
    [`fnn.privacy.max_batch`][fnn.privacy.max_batch] rows with a mask; the clipped sum is
    divided by $qN = B$ and the noise drawn with ``split(fold_in(key, 1), steps)[s]``. The
    metrics then also hold ``sampled`` (examples over the epoch) and ``overflows`` (steps
    whose sample exceeded ``max_batch`` and was cut to a random ``max_batch`` of it).

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
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, {net.layer_sizes[0]}), got shape {x.shape}")
    _validation.inputs(net, params, x, y)  # as the full-batch loss: y with N rows, dtypes
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
    r"""Full-batch ``loss`` (no L2 term) and ``accuracy`` (softmax and sigmoid outputs) on a
    data set; with ``with_grad`` also ``grad_norm``, the norm of $\nabla_\theta L + \lambda W$.

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

    ``key`` is the run's key (epoch ``k`` shuffles with ``fold_in(key, k)``), ``epoch`` the
    epochs done; ``best_params``, ``best_epoch`` (0 until a validation loss is known) and
    ``best_loss`` (``inf`` until then) are those of the lowest validation loss; ``last_loss``
    is the last epoch's ``train_loss``, for the rule on $\\varepsilon_1$. The first one comes
    from [`init_state`][fnn.training.init_state], the next from [`fit`][fnn.training.fit].
    """

    params: Params
    opt_state: Any
    key: Array
    epoch: Array
    best_params: Params
    best_epoch: Array
    best_loss: Array
    last_loss: Array


@functools.partial(jax.jit, static_argnames=("optimizer",))
def init_state(key: ArrayLike, net: MLP, optimizer: optax.GradientTransformation,
               params: Params | None = None) -> TrainState:
    """A run's first [`TrainState`][fnn.training.TrainState]: ``key`` is split into the init
    key (``fnn.init``, unless ``params`` are given) and the run's key; ``optimizer`` (static)
    makes the optimizer state.

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
    finite = jnp.all(jnp.asarray([jnp.isfinite(p).all() for p in jax.tree.leaves(params)]))
    out = {"train_loss": m["loss"], "step_grad_norm": m["grad_norm"], "steps": m["steps"],
           "previous_loss": state.last_loss, "nonfinite_step": m["nonfinite_step"],
           "params_finite": finite}
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
    """What [`fit`][fnn.training.fit] returns: the state after the last epoch run, one record
    per epoch run by this call, one of ``STOP_REASONS`` and the seconds spent compiling.

    A record has ``epoch``, ``train_loss`` (the mean of the epoch's minibatch losses),
    ``train_accuracy`` (full-batch, at the epoch's end; not for an identity output),
    ``step_grad_norm`` (the last step's), ``steps``, ``best_epoch``, ``val_loss`` and
    ``val_accuracy`` (with ``val``), ``grad_norm`` and ``layers`` (with ``diagnostics``),
    ``time`` (seconds) and ``stopped_because`` (``None`` while training goes on).
    """

    state: TrainState
    history: list[dict[str, Any]]
    stopped_because: str
    compile_time: float


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
    if v.dtype == np.bool_ or np.issubdtype(v.dtype, np.integer):
        return v.item()
    return float(f"{float(v):.{jnp.finfo(v.dtype).precision}g}")  # jnp: bfloat16 too


def _stop_reason(r: dict, epochs: int, eps_loss, eps_grad, patience) -> str | None:
    """The first of the lecture's stopping rules that holds after epoch ``r["epoch"]``."""
    if not (np.isfinite(r["train_loss"]) and r["params_finite"]):
        return "nonfinite"
    if eps_grad is not None and r["grad_norm"] < eps_grad:
        return "eps_grad"
    if eps_loss is not None and abs(r["train_loss"] - r["previous_loss"]) < eps_loss:
        return "eps_loss"
    if patience is not None and r["epoch"] - r["best_epoch"] >= patience:
        return "patience"
    return "epochs" if r["epoch"] >= epochs else None


def _check_fit_inputs(net, optimizer, state, train, val) -> None:
    """What ``fit`` can check before compiling: the optimizer state against the optimizer, the
    data's shapes and dtypes (abstractly: ``jnp.asarray`` of NumPy data compiles a program per
    shape) and every integer label."""
    expected = jax.eval_shape(optimizer.init, state.params)
    if jax.tree.structure(state.opt_state) != jax.tree.structure(expected):
        raise ValueError("state.opt_state does not belong to this optimizer: its tree differs "
                         "from optimizer.init(params)'s")
    flat = jax.tree_util.tree_flatten_with_path(expected)[0]
    for (path, want), got in zip(flat, jax.tree.leaves(state.opt_state), strict=True):
        if (want.shape, want.dtype) != (np.shape(got), getattr(got, "dtype", None)):
            raise ValueError(f"state.opt_state does not belong to these params: its leaf "
                             f"{jax.tree_util.keystr(path)} is {getattr(got, 'dtype', type(got))}"
                             f"{list(np.shape(got))}, optimizer.init(params) gives "
                             f"{want.dtype}{list(want.shape)}")
    for part in (train, val) if val is not None else (train,):
        jax.eval_shape(functools.partial(_validation.inputs, net), state.params, *part)
        if net.output == "softmax" and np.ndim(part[1]) == 1:
            _validation.labels(net.layer_sizes[-1], np.asarray(part[1]))


def _record(epoch: int, out: dict[str, Any], t0: float, p: dict[str, Any]) -> dict[str, Any]:
    """Epoch ``epoch``'s record from the numbers ``_fit_epoch`` fetched, with the stop reason."""
    record = {"epoch": epoch, **_number(out), "time": round(time.perf_counter() - t0, 6)}
    reason = _stop_reason(record, p["epochs"], p["eps_loss"], p["eps_grad"], p["patience"])
    for internal in ("previous_loss", "params_finite"):
        record.pop(internal)
    if not record["nonfinite_step"]:
        record.pop("nonfinite_step")
    return {**record, "stopped_because": reason}


def _placed(state, train, val, l2, batch_size, mesh):
    """``fit``'s inputs checked (finite data, labels in range) and on the device(s):
    replicated over a mesh (the minibatches are sharded inside ``train_epoch``), NumPy data
    moved with ``device_put`` (``jnp.asarray`` compiles a small program per shape)."""
    for name, part in (("train", train), ("val", val)) if val is not None else (("train", train),):
        _validation.finite(f"{name} x", part[0])
        _validation.finite(f"{name} y", part[1])
    train, val = jax.tree.map(
        lambda a: a if isinstance(a, jax.Array) else jax.device_put(np.asarray(a)), (train, val))
    check_batch_size(batch_size, train[0].shape[0], mesh)
    l2 = np.asarray(l2, jax.tree.leaves(state.params)[0].dtype)
    if mesh is None:
        return state, tuple(train), val, l2
    return parallel.replicate((state, tuple(train), val, l2), mesh)


def fit(net: MLP, optimizer: optax.GradientTransformation, state: TrainState, train: Batch,
        val: Batch | None = None, *, epochs: int, batch_size: int | None, l2: float = 0.0,
        eps_loss: float | None = None, eps_grad: float | None = None,
        patience: int | None = None, diagnostics: bool = False,
        callback: Callable[[TrainState, dict[str, Any]], None] | None = None,
        mesh: Mesh | None = None, dp: DP | None = None) -> FitResult:
    r"""Train from ``state`` up to epoch ``epochs`` with the lecture's stopping rules.

    Epoch ``k`` runs [`train_epoch`][fnn.training.train_epoch] with the key
    ``fold_in(state.key, k)`` and evaluates, in one program compiled before the first epoch;
    a saved state continues a run exactly, a larger ``epochs`` extends it. After each epoch
    training stops, in this order, on ``"nonfinite"`` (the train loss is NaN or infinite),
    ``"eps_grad"`` (the full-batch $\lVert \nabla L + \lambda W \rVert < \varepsilon_2$),
    ``"eps_loss"`` ($|L_k - L_{k-1}| < \varepsilon_1$, $L_k$ the epoch's ``train_loss``),
    ``"patience"`` (no lower validation loss for ``patience`` epochs) and ``"epochs"``. With
    ``patience`` the state's ``params`` are then its ``best_params``.

    ``train`` and ``val`` (optional: validation numbers, best params, early stopping) are
    ``(x, y)``; ``net`` and ``optimizer`` (static) are those of ``state``; ``batch_size`` and
    ``l2`` are ``train_epoch``'s; ``diagnostics`` also records the full-batch gradient norm
    (always with ``eps_grad``) and [`layer_diagnostics`][fnn.diagnostics.layer_diagnostics] on
    the first ``DIAGNOSTIC_SAMPLES`` training samples; ``callback(state, record)`` runs after
    every epoch; ``mesh`` (a [`data_mesh`][fnn.parallel.data_mesh]) replicates data and state
    (every process of a ``jax.distributed`` run passes the same) and shards each minibatch;
    ``dp`` (a [`DP`][fnn.training.DP]) trains with DP-SGD on Poisson samples (see
    ``train_epoch``) on one device; its records then add ``dp_sampled`` and ``dp_overflows``.
    Returns a [`FitResult`][fnn.training.FitResult].

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
    _check_fit_inputs(net, optimizer, state, train, val)
    state, (x, y), val, l2 = _placed(state, train, val, p["l2"], batch_size, mesh)
    static = {"batch_size": batch_size, "mesh": mesh, "dp": dp, "with_layers": diagnostics,
              "with_grad": diagnostics or eps_grad is not None}
    history, stopped, run, compile_time = [], "epochs", None, 0.0
    for k in range(int(state.epoch) + 1, p["epochs"] + 1):
        t0 = time.perf_counter()
        if run is None:  # compiled ahead, so that epoch times are epochs
            run = _fit_epoch.lower(net, optimizer, state, (x, y), val, l2, **static).compile()
            parallel.barrier("fit compiled")  # all processes enter the first all-reduce together
            compile_time, t0 = time.perf_counter() - t0, time.perf_counter()
        state, out = run(net, state, (x, y), val, l2)
        record = _record(k, jax.device_get(out), t0, p)
        reason = record["stopped_because"]
        if reason is not None and patience is not None:
            state = state._replace(params=state.best_params)
        history.append(record)
        if callback is not None:
            callback(state, record)
        if reason is not None:
            stopped = reason
            break
    return FitResult(state, history, stopped, compile_time)
