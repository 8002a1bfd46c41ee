r"""Property tests for your own pieces: hypothesis strategies and chex-style assertions.

fnn's own suite proves its backward pass with these; use them when you change an activation,
add a loss, a feedback rule or a precision policy, or wrap fnn in a model of your own.

Strategies (need ``hypothesis``: ``pip install 'fnn[testing]'``; the assertions do not):

- [`architectures`][fnn.testing.architectures]: ``fnn.MLP`` s over sizes, activations (yours too),
  output/loss pairs, feedback rules and precision policies; bounded by default, shrinking to small
  nets;
- [`params`][fnn.testing.params], [`batches`][fnn.testing.batches]: parameters and ``(x, y)``
  batches with valid targets for a given net; [`problems`][fnn.testing.problems]: whole
  ``(net, params, x, y)``.

Assertions (raise ``AssertionError`` naming the layer, the leaf, the index and by how much):

- [`assert_gradients_match`][fnn.testing.assert_gradients_match]: ``jax.grad(fnn.loss)`` (the
  hand-written delta recursion) equals ``jax.grad(fnn.loss_autodiff)`` (JAX's reverse mode over the
  same forward);
- [`assert_vjp_matches`][fnn.testing.assert_vjp_matches]: your ``custom_vjp`` function (a backward
  or a loss of your own) equals autodiff of your plain forward, value and cotangents;
- [`assert_per_example_match`][fnn.testing.assert_per_example_match]: per-example gradient norms and
  clipped gradients equal ``vmap(grad)`` over single samples;
- [`assert_max_traces`][fnn.testing.assert_max_traces]: a jitted function traces at most ``n``
  times.

Plus [`example`][fnn.testing.example], one deterministic ``(params, x, y)`` for a net from an
integer seed.

The assertions compute both sides with float32 matrix products
(``jax.default_matmul_precision("highest")``) whatever the precision in force: a GPU's
default for float32 products is TF32, whose rounding differs between two orders of the same
products (2e-4 to 3e-4 relative, seen on an H200), and the assertions check equations, not
TF32. On CPUs this changes nothing; bfloat16 operands of a precision policy stay bfloat16.

Data are drawn with NumPy from one integer seed per draw, not element by element and not
with ``jax.random``: eager JAX compiles every random op anew for each shape, which cost more
than the gradients under test. A float64 ``dtype`` needs 64-bit JAX when the data are drawn
(``jax.config.update("jax_enable_x64", True)``, or [`example`][fnn.testing.example] inside
``jax.enable_x64(True)``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from fnn import activations as _activations
from fnn import losses as _losses
from fnn.backpropagation import loss as _loss
from fnn.network import MLP, Params, loss_autodiff
from fnn.per_example import clipped_grad_and_norms

__all__ = [
    "ACTIVATIONS",
    "LABELS",
    "PAIRS",
    "Mismatch",
    "architectures",
    "assert_gradients_match",
    "assert_max_traces",
    "assert_per_example_match",
    "assert_vjp_matches",
    "batches",
    "default_rtol",
    "example",
    "params",
    "problems",
    "targets",
]

ACTIVATIONS = tuple(_activations.ACTIVATIONS)
"""fnn's own activation names."""
PAIRS = tuple((output, loss) for output in _losses.OUTPUTS
              for loss in _losses.ALLOWED_LOSSES[output])
"""Every ``(output, loss)`` pair fnn trains with."""
LABELS = ("int", "one-hot")
"""The two forms of softmax targets: integer labels ``(N,)`` or one-hot rows ``(N, k)``."""


# ----------------------------------------------------------------------------------------------
# Deterministic data from one seed


def _data_dtype(net: MLP, dtype: Any) -> Any:
    if dtype is not None:
        return dtype
    return jnp.float32 if net.precision is None else net.precision.param


def targets(net: MLP, batch: int, *, seed: int = 0, dtype: Any = jnp.float32,
            labels: str = "int", rng: np.random.Generator | None = None) -> jax.Array:
    """Valid targets for ``net``'s output: labels or one-hot rows (softmax), 0/1 (sigmoid),
    standard normal values (identity).

    Args:
      net: the architecture.
      batch: ``N``.
      seed: the NumPy seed (unused when ``rng`` is given).
      dtype: of one-hot rows and real targets (integer labels are int32).
      labels: ``"int"`` or ``"one-hot"`` (softmax only).
      rng: draw from this generator instead of a fresh one.

    Returns:
      ``(N,)`` int32 labels, or ``(N, k)`` rows.
    """
    rng = np.random.default_rng(seed) if rng is None else rng
    k = net.layer_sizes[-1]
    if net.output == "softmax":
        y = rng.integers(0, k, batch).astype(np.int32)
        return jnp.asarray(y) if labels == "int" else jnp.asarray(np.eye(k)[y], dtype)
    if net.output == "sigmoid":
        return jnp.asarray(rng.integers(0, 2, (batch, k)), dtype)
    return jnp.asarray(rng.normal(size=(batch, k)), dtype)


def example(net: MLP, batch: int = 8, *, seed: int = 0, dtype: Any = None,
            labels: str = "int", scale: float = 1.0) -> tuple[Params, jax.Array, jax.Array]:
    r"""``(params, x, y)`` for ``net`` from one integer seed: the same seed, the same numbers.

    $W^{[l]}_{ij} \sim \text{scale} \cdot \mathcal N(0, 1 / n^{[l-1]})$, $b^{[l]}_i \sim
    \mathcal N(0, 0.1^2)$ (nonzero, so that the bias path is exercised), $x \sim
    \mathcal N(0, I)$ and [`targets`][fnn.testing.targets].

    Args:
      net: the architecture.
      batch: ``N``.
      seed: the NumPy seed.
      dtype: of params, ``x`` and real targets; default the policy's ``param`` dtype
        (``net.precision``), float32 without a policy.
      labels: ``"int"`` or ``"one-hot"`` (softmax targets).
      scale: multiplies the weights (large scales saturate sigmoid and tanh units).

    >>> import fnn
    >>> params, x, y = example(fnn.MLP((3, 4, 2)), batch=5)
    >>> params[0]["W"].shape, x.shape, y.shape
    ((4, 3), (5, 3), (5,))
    """
    dtype = _data_dtype(net, dtype)
    rng = np.random.default_rng(seed)
    sizes = net.layer_sizes
    params = tuple(
        {"W": jnp.asarray(scale * rng.normal(size=(m, n)) / np.sqrt(n), dtype),
         "b": jnp.asarray(0.1 * rng.normal(size=m), dtype)}
        for n, m in itertools.pairwise(sizes)
    )
    x = jnp.asarray(rng.normal(size=(batch, sizes[0])), dtype)
    return params, x, targets(net, batch, dtype=dtype, labels=labels, rng=rng)


# ----------------------------------------------------------------------------------------------
# Hypothesis strategies


def _hypothesis():
    try:
        from hypothesis import strategies
    except ImportError:  # pragma: no cover - exercised in a subprocess test
        raise ImportError(
            "fnn.testing's strategies need hypothesis: pip install 'fnn[testing]' "
            "(or pip install hypothesis); the assertions work without it"
        ) from None
    return strategies


def architectures(*, max_hidden: int = 3, min_width: int = 1, max_width: int = 32,
                  activations: Sequence[str | _activations.Activation] = ACTIVATIONS,
                  pairs: Sequence[tuple[str, str]] = PAIRS,
                  feedback: Sequence[str] = ("backprop",),
                  precision: Sequence[Any] = (None,)):
    """Hypothesis strategy of ``fnn.MLP`` s.

    ``0 .. max_hidden`` hidden layers, every width in ``min_width .. max_width``, one
    activation per hidden layer drawn from ``activations`` (names or your own
    [`fnn.Activation`][fnn.activations.Activation] s), an ``(output, loss)`` pair from ``pairs``, a
    feedback rule and a precision policy. Shrinks towards no hidden layer, narrow layers and the
    first entry of each choice.
    """
    st = _hypothesis()

    @st.composite
    def draw_net(draw):
        hidden = draw(st.integers(0, max_hidden))
        sizes = tuple(draw(st.lists(st.integers(min_width, max_width), min_size=hidden + 2,
                                    max_size=hidden + 2)))
        activation = tuple(draw(st.sampled_from(activations)) for _ in range(hidden))
        output, loss = draw(st.sampled_from(pairs))
        return MLP(sizes, activation, output, loss, feedback=draw(st.sampled_from(feedback)),
                   precision=draw(st.sampled_from(precision)))

    return draw_net()


def _seeds():
    return _hypothesis().integers(0, 2**31 - 1)


def params(net: MLP, *, dtype: Any = None, scale: float = 1.0):
    """Hypothesis strategy of parameters for ``net`` (as [`example`][fnn.testing.example] draws
    them)."""
    return _seeds().map(lambda s: example(net, 1, seed=s, dtype=dtype, scale=scale)[0])


def batches(net: MLP, *, max_batch: int = 16, dtype: Any = None,
            labels: Sequence[str] = LABELS):
    """Hypothesis strategy of ``(x, y)``: ``1 .. max_batch`` samples with valid targets."""
    st = _hypothesis()

    @st.composite
    def draw_batch(draw):
        batch, form, seed = (draw(st.integers(1, max_batch)), draw(st.sampled_from(labels)),
                             draw(_seeds()))
        _, x, y = example(net, batch, seed=seed, dtype=dtype, labels=form)
        return x, y

    return draw_batch()


def problems(*, max_batch: int = 16, dtype: Any = None, scale: float = 1.0,
             labels: Sequence[str] = LABELS, **architecture):
    """Hypothesis strategy of whole problems ``(net, params, x, y)``.

    Args:
      max_batch: the largest batch.
      dtype: of params, ``x`` and real targets (default: the policy's ``param``, else float32).
      scale: multiplies the weights.
      labels: the softmax target forms to draw from.
      **architecture: passed to [`architectures`][fnn.testing.architectures] (``max_hidden``,
        ``max_width``, ``activations``, ``pairs``, ``feedback``, ``precision``).

    >>> from hypothesis import given, settings
    >>> import fnn
    >>> @settings(max_examples=3, deadline=None)
    ... @given(problems(max_hidden=1, max_width=4))
    ... def test_loss_is_finite(problem):
    ...     assert jnp.isfinite(jax.jit(fnn.loss)(*problem))
    >>> test_loss_is_finite()
    """
    st = _hypothesis()

    @st.composite
    def draw_problem(draw):
        net = draw(architectures(**architecture))
        batch, form, seed = (draw(st.integers(1, max_batch)), draw(st.sampled_from(labels)),
                             draw(_seeds()))
        p, x, y = example(net, batch, seed=seed, dtype=dtype, labels=form, scale=scale)
        return net, p, x, y

    return draw_problem()


# ----------------------------------------------------------------------------------------------
# Comparisons with messages that say where


def default_rtol(dtype: Any) -> float:
    """The relative tolerance the assertions use for a computation in ``dtype``: 1e-9 for
    float64, 1e-4 for float32 (a 0.1% error fails), 3e-2 for 16-bit floats."""
    bits = jnp.finfo(dtype).bits
    return 1e-9 if bits >= 64 else 1e-4 if bits >= 32 else 3e-2


class Mismatch(NamedTuple):
    """One leaf that disagrees: the worst element and the leaf's relative error."""

    where: str
    index: tuple[int, ...]
    ours: float
    reference: float
    allowed: float
    leaf_error: float

    def __str__(self) -> str:
        diff = abs(self.ours - self.reference)
        return (f"{self.where} at index {self.index}: {self.ours:.7g} against {self.reference:.7g}"
                f" (|diff| {diff:.3g} > allowed {self.allowed:.3g}); relative error of the leaf "
                f"{self.leaf_error:.3g}")


def _mismatch(where: str, ours, reference, rtol: float, atol: float | None) -> Mismatch | None:
    """The worst element of a leaf with ``|ours - ref| > atol + rtol |ref|``, or None.

    ``atol`` defaults to ``rtol * max |ref|``: elements far below the leaf's scale are held to
    the leaf's scale, not to their own. NaN or inf where the reference is finite is a mismatch.
    """
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(reference, np.float64)
    scale = float(np.max(np.abs(ref), initial=0.0))
    atol = rtol * scale if atol is None else atol
    allowed = atol + rtol * np.abs(ref)
    diff = np.abs(ours - ref)
    excess = np.where(np.isfinite(diff), diff - allowed, np.where(ours == ref, 0.0, np.inf))
    if not np.any(excess > 0):
        return None
    index = np.unravel_index(int(np.argmax(excess)), excess.shape)
    norm = float(np.linalg.norm(ref.ravel()))
    err = float(np.linalg.norm(np.nan_to_num(ours - ref, nan=np.inf).ravel()))
    return Mismatch(where, tuple(int(i) for i in index), float(ours[index]), float(ref[index]),
                    float(allowed[index]), err / norm if norm > 0 else err)


def _float32_products(assertion):
    """Run ``assertion`` with float32 matrix products (see the module's docstring)."""
    @functools.wraps(assertion)
    def checked(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return assertion(*args, **kwargs)

    return checked


@functools.partial(jax.jit, static_argnums=0)
def _gradients(loss_fn, net, params, x, y):
    return jax.grad(loss_fn, argnums=(1, 2))(net, params, x, y)


def _compute_dtype(net: MLP, params: Params) -> Any:
    return jax.tree.leaves(params)[0].dtype if net.precision is None else net.precision.compute


@_float32_products
def assert_gradients_match(net: MLP, params: Params, x: Any, y: Any, *,
                           rtol: float | None = None, atol: float | None = None) -> None:
    r"""Assert that the hand-written backward pass equals autodiff of the same forward.

    Compares ``jax.grad(fnn.loss)`` (the delta recursion, with your
    [`fnn.Activation`][fnn.activations.Activation]'s $g'$ if the net has one) with
    ``jax.grad(fnn.loss_autodiff)`` (JAX's reverse mode through the same forward, your $g$
    included), for every weight, bias and ``x``, element by element:
    ``|ours - ref| <= atol + rtol |ref|``; and every gradient leaf has its parameter's shape and
    dtype (``chex.assert_trees_all_equal_shapes_and_dtypes``).

    Args:
      net, params, x, y: as for [`fnn.loss`][fnn.backpropagation.loss]; ``net.feedback`` must be
        ``"backprop"`` (the other rules are not the gradient, by design).
      rtol: default [`default_rtol`][fnn.testing.default_rtol] of the computation's dtype (the
        policy's compute dtype, else the params').
      atol: default ``rtol`` times the leaf's largest reference entry.

    Raises:
      AssertionError: naming the first layer that disagrees, counted from the output down
        (where the recursion meets an error first: a wrong $g'^{[l]}$ shows at layer ``l``),
        the leaf, the worst index and by how much, then every other leaf that disagrees.

    Both gradients are compiled once per architecture and shapes and reused (a new
    [`fnn.Activation`][fnn.activations.Activation] object is a new architecture). Code that replaces
    functions fnn calls by name (monkeypatching) needs ``jax.clear_caches()`` to be seen.

    >>> import fnn
    >>> net = fnn.MLP((3, 5, 2), "tanh")
    >>> assert_gradients_match(net, *example(net))
    """
    if net.feedback != "backprop":
        raise ValueError(
            f"net.feedback is {net.feedback!r}: that rule's update is not the gradient, so it "
            "cannot equal autodiff; compare a net with feedback='backprop'"
        )
    rtol = default_rtol(_compute_dtype(net, params)) if rtol is None else rtol
    ours = _gradients(_loss, net, params, x, y)
    reference = _gradients(loss_autodiff, net, params, x, y)
    # custom_vjp checks the backward's shapes, not its dtypes: every gradient leaf must have
    # its parameter's dtype (the master weights' under a precision policy).
    chex.assert_trees_all_equal_shapes_and_dtypes(
        ours[0], tuple({"W": jnp.asarray(p["W"]), "b": jnp.asarray(p["b"])} for p in params))
    found = []
    for l in range(net.depth, 0, -1):
        for leaf in ("W", "b"):
            m = _mismatch(f"layer {l}: params[{l - 1}][{leaf!r}]", ours[0][l - 1][leaf],
                          reference[0][l - 1][leaf], rtol, atol)
            found += [(l, m)] if m else []
    m = _mismatch("dL/dx", ours[1], reference[1], rtol, atol)
    found += [(0, m)] if m else []
    if found:
        layer = found[0][0]
        if layer == 0:
            first = "dL/dx (every layer's parameters agree)"
        else:
            g = (f"output {net.output}, loss {net.loss}" if layer == net.depth else
                 f"g = {getattr(net.activation[layer - 1], 'name', net.activation[layer - 1])}")
            first = f"layer {layer} of {net.depth} ({g}; checked from layer {net.depth} down)"
        head = ("the hand-written gradient (jax.grad(fnn.loss)) differs from autodiff "
                f"(jax.grad(fnn.loss_autodiff)) first at {first}, for {net}")
        raise AssertionError("\n  ".join([head, *(str(m) for _, m in found)]))


def _float_leaf(v) -> bool:
    return isinstance(v, jax.Array | np.ndarray | float) and jnp.issubdtype(
        jnp.result_type(v), jnp.floating)


@_float32_products
def assert_vjp_matches(fn: Callable[..., Any], reference: Callable[..., Any], *args: Any,
                       rtol: float | None = None, atol: float | None = None,
                       seed: int = 0) -> None:
    r"""Assert that ``fn`` (with a backward of your own) equals autodiff of ``reference``.

    For a ``jax.custom_vjp`` function (a loss, a layer, a feedback rule) and the plain forward
    it stands for: their values at ``args``, and ``jax.vjp`` of each with the same random
    cotangent (seeded), for every floating array argument (the others, such as an
    ``fnn.MLP``, are held fixed). Element by element, ``|ours - ref| <= atol + rtol |ref|``.

    Args:
      fn: your function, e.g. with a ``custom_vjp``.
      reference: the same function written plainly, for JAX to differentiate.
      *args: the arguments of both.
      rtol, atol: as for [`assert_gradients_match`][fnn.testing.assert_gradients_match].
      seed: of the random cotangent.

    Raises:
      AssertionError: naming the argument, the leaf, the worst index and by how much.

    >>> import fnn
    >>> net = fnn.MLP((3, 4, 2))
    >>> assert_vjp_matches(fnn.loss, fnn.loss_autodiff, net, *example(net))
    """
    leaves, treedef = jax.tree.flatten(args)
    diff = [i for i, v in enumerate(leaves) if _float_leaf(v)]
    if not diff:
        raise ValueError("assert_vjp_matches needs at least one floating array argument")

    def closed(f):
        def g(*values):
            full = list(leaves)
            for i, v in zip(diff, values, strict=True):
                full[i] = v
            return f(*jax.tree.unflatten(treedef, full))
        return g

    primals = [jnp.asarray(leaves[i]) for i in diff]
    rng = np.random.default_rng(seed)
    cot = jax.tree.map(lambda o: jnp.asarray(rng.normal(size=o.shape), o.dtype),
                       jax.eval_shape(closed(reference), *primals))

    @jax.jit  # one compilation, not hundreds of eagerly dispatched operations
    def values_and_cotangents(primals, cot):
        out, vjp_ours = jax.vjp(closed(fn), *primals)
        ref_out, vjp_ref = jax.vjp(closed(reference), *primals)
        return out, ref_out, vjp_ours(cot), vjp_ref(cot)

    out, ref_out, ours, refs = values_and_cotangents(primals, cot)
    rtol = default_rtol(jax.tree.leaves(out)[0].dtype) if rtol is None else rtol
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(args)[0]]
    found = [m for m in (_mismatch(f"value{jax.tree_util.keystr(p)}", o, r, rtol, atol)
                         for (p, o), r in zip(jax.tree_util.tree_flatten_with_path(out)[0],
                                              jax.tree.leaves(ref_out), strict=True)) if m]
    for i, o, r in zip(diff, ours, refs, strict=True):
        m = _mismatch(f"cotangent of args{paths[i]}", o, r, rtol, atol)
        found += [m] if m else []
    if found:
        raise AssertionError("\n  ".join(
            [f"{getattr(fn, '__name__', fn)} differs from autodiff of "
             f"{getattr(reference, '__name__', reference)}:", *map(str, found)]))


@jax.jit
def _vmap_grad(net, params, x, y):
    """Each sample's own gradient, by jax.grad of the plain forward on a batch of one."""
    return jax.vmap(lambda xi, yi: jax.grad(loss_autodiff, argnums=1)(
        net, params, xi[None], yi[None]))(x, y)


@jax.jit  # one program: eagerly, each operation compiled on its own for each set of shapes
def _clip_reference(per, clip_norm):
    norms = jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1)
                         for g in jax.tree.leaves(per)))
    scale = jnp.where(norms > clip_norm, clip_norm / jnp.where(norms > clip_norm, norms, 1), 1)
    return norms, jax.tree.map(
        lambda g: jnp.mean(g * scale.reshape((-1,) + (1,) * (g.ndim - 1)), axis=0), per)


@_float32_products
def assert_per_example_match(net: MLP, params: Params, x: Any, y: Any, *,
                             clip_norm: float | None = None, rtol: float | None = None,
                             atol: float | None = None) -> None:
    r"""Assert that per-example norms and clipped gradients equal ``vmap(grad)``.

    [`fnn.clipped_grad_and_norms`][fnn.per_example.clipped_grad_and_norms] (one delta recursion,
    norms from the deltas) against ``jax.vmap`` of ``jax.grad(fnn.loss_autodiff)`` over batches of
    one sample, clipped
    explicitly: every $\lVert g_i \rVert$ and every leaf of $\frac1N \sum_i \min(1, C /
    \lVert g_i \rVert) g_i$.

    Args:
      net, params, x, y: as for [`fnn.loss`][fnn.backpropagation.loss], ``x`` with a batch axis.
      clip_norm: $C$; default the median of the norms, so that about half are clipped.
      rtol, atol: as for [`assert_gradients_match`][fnn.testing.assert_gradients_match].

    Raises:
      AssertionError: naming the sample of a wrong norm, or the layer and leaf of a wrong
        clipped gradient, with the worst index and by how much.

    >>> import fnn
    >>> net = fnn.MLP((3, 4, 2), "sigmoid")
    >>> assert_per_example_match(net, *example(net, 6))
    """
    rtol = default_rtol(_compute_dtype(net, params)) if rtol is None else rtol
    per = _vmap_grad(net, params, x, y)
    ref_norms, _ = _clip_reference(per, jnp.inf)
    if clip_norm is None:
        clip_norm = float(np.median(np.asarray(ref_norms)))
    ref_norms, ref_grads = _clip_reference(per, clip_norm)
    grads, norms = jax.jit(clipped_grad_and_norms)(net, params, x, y, clip_norm)
    found = []
    m = _mismatch("per-example gradient norms ||g_i||", norms, ref_norms, rtol, atol)
    if m:
        found.append(m._replace(where=f"||g_i|| of sample i = {m.index[0]}"))
    for l in range(net.depth, 0, -1):
        for leaf in ("W", "b"):
            m = _mismatch(f"layer {l}: clipped gradient params[{l - 1}][{leaf!r}]",
                          grads[l - 1][leaf], ref_grads[l - 1][leaf], rtol, atol)
            found += [m] if m else []
    if found:
        raise AssertionError("\n  ".join(
            [f"per-example quantities differ from vmap(grad) (clip_norm={clip_norm:.4g}) "
             f"for {net}:", *map(str, found)]))


class _Traces:
    def __init__(self):
        self.signatures: list[str] = []


def _signature(args, kwargs) -> str:
    def show(v):
        if isinstance(v, jax.core.Tracer | jax.Array | np.ndarray):
            return f"{jnp.dtype(v.dtype).name}{list(np.shape(v))}"
        return repr(v)

    parts = [show(v) for v in jax.tree.leaves(args)]
    parts += [f"{k}={show(v)}" for k, v in kwargs.items()]
    nets = [repr(a) for a in args if isinstance(a, MLP)]
    return ", ".join(nets + parts)


def assert_max_traces(fn: Callable[..., Any] | None = None, n: int = 1, **jit_kwargs: Any):
    """``jax.jit(fn)`` that raises ``AssertionError`` when ``fn`` is traced more than ``n`` times.

    chex's ``assert_max_traces`` for fnn's calling convention: an ``fnn.MLP`` is an argument
    like any other (a pytree without leaves), so an equal net must not retrace and a
    different one must; the message lists the arguments of every trace (nets, and the dtype
    and shape of each array), which says what changed. Unlike chex's, the count belongs to
    this wrapper alone (chex keys a global counter on the function's source and call stack,
    which adds up over hypothesis examples and doctests).

    Args:
      fn: the function to jit; or leave it out to use this as a decorator factory.
      n: the most traces allowed.
      **jit_kwargs: passed to ``jax.jit`` (``static_argnames``, ...).

    >>> import fnn
    >>> grad = assert_max_traces(jax.grad(fnn.loss, argnums=1), n=1)
    >>> net = fnn.MLP((3, 4, 2))
    >>> for seed in range(3):
    ...     _ = grad(net, *example(net, seed=seed))
    >>> _ = grad(fnn.MLP((3, 4, 2), "tanh"), *example(net))
    Traceback (most recent call last):
    AssertionError: loss traced 2 times, at most 1 allowed...
    """
    if fn is None:
        return lambda f: assert_max_traces(f, n, **jit_kwargs)
    traces = _Traces()
    name = getattr(fn, "__name__", repr(fn))

    @functools.wraps(fn)
    def counted(*args, **kwargs):
        traces.signatures.append(_signature(args, kwargs))
        if len(traces.signatures) > n:
            listing = "\n".join(f"  trace {i}: {s}" for i, s in enumerate(traces.signatures, 1))
            raise AssertionError(f"{name} traced {len(traces.signatures)} times, at most {n} "
                                 f"allowed; the arguments of each trace:\n{listing}")
        return fn(*args, **kwargs)

    return jax.jit(counted, **jit_kwargs)

