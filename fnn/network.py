r"""The network: architecture, initialisation and the forward pass (lectures 001, 002, 003).

Notation (the lecture's, as the docs' page "The math" sets it out): layers $l = 0 \dots L$,
$n^{[l]}$ units in layer $l$; dense layer $l$ has $W^{[l]}$ of shape ``(n[l], n[l-1])`` and
$b^{[l]}$ of shape ``(n[l],)``. For one sample $x$ of shape ``(n[0],)``:

$$a^{[0]} = x,\quad z^{[l]} = W^{[l]} a^{[l-1]} + b^{[l]},\quad
a^{[l]} = g^{[l]}(z^{[l]}) \;(l < L),\quad \hat y = a^{[L]} = O(z^{[L]}).$$

The forward pass is written for one sample, as the lecture writes it, and ``jax.vmap`` lifts
it to a minibatch with the batch axis first (the lecture's row layout $Z = X W^T + b$).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fnn import _validation, activations, losses, precision

Array = jax.Array
Params = tuple[dict[str, Array], ...]
"""One ``{"W": (n[l], n[l-1]), "b": (n[l],)}`` per dense layer ``l = 1 .. L``."""

FEEDBACK_RULES = ("backprop", "random", "sign")
"""The matrices the delta recursion can send deltas back through (``MLP.feedback``)."""


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class MLP:
    """The architecture of a feedforward network: immutable, hashable, static under ``jit``.

    Args:
      layer_sizes: $(n^{[0]}, n^{[1]}, \\dots, n^{[L]})$, at least two positive widths.
      activation: one name for every hidden layer, or a tuple with one name per hidden layer
        (``L - 1`` names): ``"identity"``, ``"sigmoid"``, ``"tanh"``, ``"relu"``,
        ``"leaky_relu"``. Stored as the per-layer tuple.
      output: the output function $O$: ``"softmax"``, ``"sigmoid"`` or ``"identity"``.
      loss: ``"cce"``, ``"bce"`` or ``"mse"``; ``None`` picks the output's own (softmax ->
        cce, sigmoid -> bce, identity -> mse).
      leaky_slope: $\\alpha$ of leaky ReLU (default 0.01).
      feedback: the matrix $B^{[l]}$ that carries $\\delta^{[l]}$ back in the delta recursion,
        $\\delta^{[l-1]} = (B^{[l]T} \\delta^{[l]}) \\odot g'^{[l-1]}(z^{[l-1]})$:
        ``"backprop"`` (default) $B^{[l]} = W^{[l]}$, the true gradient; ``"random"`` a fixed
        random matrix (feedback alignment, Lillicrap et al. 2016); ``"sign"``
        $B^{[l]} = \\operatorname{sign}(W^{[l]})$ (sign-symmetric feedback, Liao, Leibo and
        Poggio 2016). With ``"random"`` or ``"sign"``, ``jax.grad(fnn.loss)`` returns that
        rule's **update, not the gradient**; [`loss_autodiff`][fnn.network.loss_autodiff] still
        gives the gradient. See
        [`fnn.backpropagation.feedback_matrix`][fnn.backpropagation.feedback_matrix].
      feedback_seed: the seed of the fixed random feedback matrices (``feedback="random"``).
      precision: the mixed-precision policy ([`fnn.precision`][fnn.precision]): ``None`` (default:
        every array keeps the dtype it is given, as fnn always did), ``"f32"``, ``"bf16"``,
        ``"mixed"`` (bfloat16 products, float32 master weights, loss and output delta) or a
        [`fnn.Policy`][fnn.precision.Policy]. Stored as the [`fnn.Policy`][fnn.precision.Policy] (or
        ``None``). Under a policy, params must have its ``param`` dtype ([`init`][fnn.network.init]
        makes them so).

    A hidden layer's activation may also be an [`fnn.Activation`][fnn.activations.Activation] of
    your own (its $g$ and hand-written $g'$) in place of a name.

    An ``MLP`` is a pytree with no leaves, so it passes through ``jax.jit`` as an ordinary
    argument (no ``static_argnums``).

    >>> net = MLP((784, 128, 10))
    >>> net.activation, net.output, net.loss, net.depth
    (('relu',), 'softmax', 'cce', 2)
    """

    layer_sizes: tuple[int, ...]
    activation: str | activations.Activation | tuple[str | activations.Activation, ...] = "relu"
    output: str = "softmax"
    loss: str | None = None
    leaky_slope: float = activations.LEAKY_RELU_SLOPE
    feedback: str = "backprop"
    feedback_seed: int = 0
    precision: str | precision.Policy | None = None

    def __post_init__(self):
        sizes = _validation.layer_sizes(self.layer_sizes)
        hidden = len(sizes) - 2
        if isinstance(self.activation, str | activations.Activation):
            acts = (self.activation,) * hidden
        else:
            acts = tuple(self.activation)
            if len(acts) != hidden:
                raise ValueError(
                    f"activation must be one name or a tuple of {hidden} names (one per hidden "
                    f"layer of layer_sizes={sizes}), got {len(acts)}: {acts!r}"
                )
        for name in acts:
            if isinstance(name, activations.Activation):
                _validation.activation(name)
            else:
                _validation.one_of("activation", name, activations.ACTIVATIONS)
        _validation.one_of("output", self.output, losses.OUTPUTS)
        loss = losses.DEFAULT_LOSS[self.output] if self.loss is None else self.loss
        _validation.one_of("loss", loss, losses.LOSSES)
        if loss not in losses.ALLOWED_LOSSES[self.output]:
            raise ValueError(
                f"loss {loss!r} does not apply to output {self.output!r}: expected one of "
                f"{losses.ALLOWED_LOSSES[self.output]}"
            )
        object.__setattr__(self, "layer_sizes", sizes)
        object.__setattr__(self, "activation", acts)
        object.__setattr__(self, "loss", loss)
        slope = float(self.leaky_slope)
        if not 0 < slope < 1:
            # The backward reads g'(z) off a = g(z): that needs sign(a) = sign(z).
            raise ValueError(f"leaky_slope must be in (0, 1), got {self.leaky_slope!r}")
        object.__setattr__(self, "leaky_slope", slope)
        _validation.one_of("feedback", self.feedback, FEEDBACK_RULES)
        object.__setattr__(self, "feedback_seed", _validation.feedback_seed(self.feedback_seed))
        object.__setattr__(self, "precision", precision.get_policy(self.precision))

    @property
    def depth(self) -> int:
        """$L$, the number of dense layers."""
        return len(self.layer_sizes) - 1

    def activation_of(self, l: int):
        """``(g, g')`` of hidden layer ``l`` (1-based, ``1 <= l < L``)."""
        return activations.get_activation(self.activation[l - 1], self.leaky_slope)

    def derivative_reads_z(self, l: int) -> bool:
        """Whether hidden layer ``l``'s $g'$ needs $z^{[l]}$ (an
        [`fnn.Activation`][fnn.activations.Activation] with a derivative of $z$); fnn's own
        activations read $g'$ off $a^{[l]}$."""
        act = self.activation[l - 1]
        return isinstance(act, activations.Activation) and not act.from_output

    def layer_function(self, l: int):
        """$g^{[l]}$ for a hidden layer ``l < L``, the output function $O$ for ``l = L``."""
        if l < self.depth:
            return self.activation_of(l)[0]
        return losses.OUTPUT_FUNCTIONS[self.output]


INIT_SCHEMES = ("auto", "he", "xavier")


def init(
    key: ArrayLike, net: MLP, *, scheme: str = "auto", dtype: Any = None
) -> Params:
    r"""Random scaled initial parameters; weights never all zero, biases zero.

    He: $W_{ij} \sim \mathcal N(0, 2 / n^{[l-1]})$ (truncated); Xavier/Glorot:
    $W_{ij} \sim \mathcal N(0, 2 / (n^{[l-1]} + n^{[l]}))$ (truncated), via
    ``jax.nn.initializers``. ``"auto"`` takes He for layers followed by ReLU or leaky ReLU
    and Xavier for the others (sigmoid, tanh, identity, and the output layer).

    Args:
      key: a ``jax.random`` key.
      net: the architecture.
      scheme: ``"auto"``, ``"he"`` or ``"xavier"``.
      dtype: a floating dtype for every leaf; default the policy's ``param`` dtype
        (``net.precision``), float32 without a policy.

    Returns:
      A tuple with one ``{"W": (n[l], n[l-1]), "b": (n[l],)}`` per layer ``l = 1 .. L``.

    >>> params = init(jax.random.key(0), MLP((5, 7, 3)))
    >>> [(p["W"].shape, p["b"].shape) for p in params]
    [((7, 5), (7,)), ((3, 7), (3,))]
    """
    _validation.one_of("scheme", scheme, INIT_SCHEMES)
    if dtype is None:
        dtype = jnp.float32 if net.precision is None else net.precision.param
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {jnp.dtype(dtype)}")
    _validation.fits_in_memory(net.layer_sizes, jnp.dtype(dtype).itemsize)
    he = jax.nn.initializers.he_normal(in_axis=-1, out_axis=-2, dtype=dtype)
    xavier = jax.nn.initializers.glorot_normal(in_axis=-1, out_axis=-2, dtype=dtype)
    keys = jax.random.split(key, net.depth)
    params = []
    for l in range(1, net.depth + 1):
        rectifier = l < net.depth and net.activation[l - 1] in ("relu", "leaky_relu")
        use_he = scheme == "he" or (scheme == "auto" and rectifier)
        shape = (net.layer_sizes[l], net.layer_sizes[l - 1])
        W = (he if use_he else xavier)(keys[l - 1], shape, dtype)
        params.append({"W": W, "b": jnp.zeros(shape[0], dtype)})
    return tuple(params)


def forward_trace(net: MLP, params: Params, x: Array) -> tuple[tuple[Array, ...], tuple]:
    r"""The forward pass of **one sample**, keeping every $z^{[l]}$ and $a^{[l]}$.

    Args:
      x: one sample, shape ``(n[0],)``.

    Returns:
      ``(z, a)``: ``z[l-1]`` is $z^{[l]}$ of shape ``(n[l],)`` for ``l = 1 .. L``, and
      ``a[l]`` is $a^{[l]}$ for ``l = 0 .. L`` (``a[0] = x``, ``a[L] = yhat``).

    Under a policy (``net.precision``, [`fnn.precision`][fnn.precision]): ``W``, ``b`` and ``x`` in
    the compute dtype, each product accumulated in float32; hidden $z^{[l]}$ stay in float32 and
    $a^{[l]} = g(z^{[l]})$ is rounded to the compute dtype; $z^{[L]}$ and $\hat y$ have the output
    dtype.
    """
    policy = net.precision
    params, a = precision.compute(policy, (params, x))
    zs, as_ = [], [a]
    for l, layer in enumerate(params, start=1):
        z = precision.matvec(policy, layer["W"], a) + layer["b"]
        if l == net.depth:
            z = precision.output(policy, z)
        a = net.layer_function(l)(z)
        if l < net.depth:
            a = precision.compute(policy, a)
        zs.append(z)
        as_.append(a)
    return tuple(zs), tuple(as_)


def forward(net: MLP, params: Params, x: ArrayLike) -> Array:
    r"""The network's output $\hat y = a^{[L]}$.

    Args:
      net: the architecture.
      params: parameters as made by [`init`][fnn.network.init].
      x: one sample of shape ``(n[0],)`` or a minibatch of shape ``(batch, n[0])``.

    Returns:
      $\hat y$ of shape ``(n[L],)`` or ``(batch, n[L])``.

    >>> net = MLP((3, 4, 2))
    >>> forward(net, init(jax.random.key(0), net), jnp.ones((5, 3))).shape
    (5, 2)
    """
    params, x = _validation.params_and_x(net, params, x)
    trace = lambda x: forward_trace(net, params, x)[1][-1]  # noqa: E731
    return trace(x) if x.ndim == 1 else jax.vmap(trace)(x)


def batch_loss(net: MLP, logits: Array, y: Array) -> Array:
    r"""$L = \frac{1}{N} \sum_i \ell(z^{[L]}_i, y_i)$ from the logits ``(N, n[L])``, in the
    policy's output dtype."""
    return precision.output(net.precision, losses.batch_loss(net.output, net.loss, logits, y))


def mean_loss(net: MLP, params: Params, x: Array, y: Array) -> Array:
    r"""$L = \frac{1}{N} \sum_{i=1}^N \ell(\hat y_i, y_i)$ on a validated batch ``(N, n[0])``."""

    z, _ = jax.vmap(lambda x: forward_trace(net, params, x))(x)
    return batch_loss(net, z[-1], y)


def loss_autodiff(net: MLP, params: Params, x: ArrayLike, y: ArrayLike) -> Array:
    r"""The same mean loss as [`fnn.loss`][fnn.backpropagation.loss], differentiated by plain JAX
    autodiff.

    This is the reference every test of the hand-written backward pass compares against:
    same forward, same loss, no ``custom_vjp``. Arguments as for
    [`fnn.loss`][fnn.backpropagation.loss].
    """
    params, x, y = _validation.inputs(net, params, x, y)
    return mean_loss(net, params, x, y)


def to_augmented(params: Params) -> tuple[Array, ...]:
    r"""The lecture's second bias convention: $W_B^{[l]} = [W^{[l]} \mid b^{[l]}]$.

    Returns:
      One array of shape ``(n[l], n[l-1] + 1)`` per layer, the bias as its last column.
      Exact: [`from_augmented`][fnn.network.from_augmented] gives back the same arrays bit for bit.
    """
    return tuple(jnp.concatenate([p["W"], p["b"][:, None]], axis=1) for p in params)


def from_augmented(augmented: Sequence[ArrayLike]) -> Params:
    r"""Split each $W_B = [W \mid b]$ (shape ``(n[l], n[l-1] + 1)``) back into ``W`` and ``b``."""
    return tuple({"W": W_B[:, :-1], "b": W_B[:, -1]} for W_B in map(jnp.asarray, augmented))


def forward_augmented(net: MLP, augmented: Sequence[ArrayLike], x: ArrayLike) -> Array:
    r"""The forward pass with the bias as a feature: $z^{[l]} = W_B^{[l]} [a^{[l-1]}; 1]$.

    Args:
      augmented: per layer $W_B^{[l]}$ of shape ``(n[l], n[l-1] + 1)``.
      x: shape ``(n[0],)`` or ``(batch, n[0])``.

    Returns:
      $\hat y$, as [`forward`][fnn.network.forward] gives it for ``from_augmented(augmented)``.
    """
    augmented = tuple(map(jnp.asarray, augmented))
    _validation.params_and_x(net, from_augmented(augmented), x)
    policy = net.precision
    augmented, x = precision.compute(policy, (augmented, jnp.asarray(x)))

    def one(a):
        for l, W_B in enumerate(augmented, start=1):
            z = precision.matmul(policy, W_B, jnp.concatenate([a, jnp.ones((1,), a.dtype)]))
            z = precision.output(policy, z) if l == net.depth else z
            a = net.layer_function(l)(z)
            a = precision.compute(policy, a) if l < net.depth else a
        return a

    return one(x) if x.ndim == 1 else jax.vmap(one)(x)
