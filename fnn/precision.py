r"""Mixed precision: the dtypes of the parameters, of the products and of the outputs.

A [`Policy`][fnn.precision.Policy] names three dtypes, as DeepMind's jmp names them
(``jmp.Policy(param_dtype, compute_dtype, output_dtype)``):

- ``param``: the dtype the parameters are stored and updated in (the *master weights*), and the
  dtype of every gradient the backward pass returns;
- ``compute``: the dtype of the operands of every matrix product, and of what the forward pass
  hands to the backward pass (the activations $a^{[l]}$) and of the hidden deltas;
- ``output``: the dtype of the logits $z^{[L]}$, of $\hat y$, of the loss and of the output
  delta $\delta^{[L]} = \hat y - y$.

Products accumulate in [`Policy.accumulate`][fnn.precision.Policy.accumulate], the wider of
``compute`` and float32 (so float32 for bfloat16 compute): ``preferred_element_type`` of
``jax.lax.dot_general``, visible in the program as ``f32[...] dot(bf16[...], bf16[...])``.

A policy is part of the architecture, ``fnn.MLP(..., precision="mixed")``, so every function
that takes ``net`` (the loss, the backward pass, per-example norms, diagnostics, metrics and
training) follows it without an argument of its own. The three named policies:

| ``precision`` | param | compute | output |
| --- | --- | --- | --- |
| ``None`` (default: every array keeps its dtype) | as given | as given | as given |
| ``"f32"`` | float32 | float32 | float32 |
| ``"bf16"`` (products still accumulate in float32) | bfloat16 | bfloat16 | bfloat16 |
| ``"mixed"`` | float32 | bfloat16 | float32 |

Under a policy the hand-written backward pass is, for one sample (casts written as
$[\cdot]_c$ for compute, $[\cdot]_o$ for output; products accumulate in float32):

$$z^{[l]} = [W^{[l]}]_c [a^{[l-1]}]_c + [b^{[l]}]_c,\quad a^{[l]} = [g(z^{[l]})]_c,\quad
z^{[L]} \to [z^{[L]}]_o,\quad \delta^{[L]} = \hat y - y \text{ (output dtype)},$$
$$\delta^{[l]} = \big[(B^{[l+1]T} [\delta^{[l+1]}]_c) \odot g'(a^{[l]})\big]_c,\qquad
\partial W^{[l]} = \big[\textstyle\sum_i [\delta_i^{[l]}]_c [a_i^{[l-1]}]_c^T\big]_{param},$$

with $g'$ evaluated in float32 from the stored activation, the bias gradient summed in float32,
and per-example gradient norms (for clipping) in float32. The policy ``None`` casts nothing:
the numbers are those fnn computed before policies existed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _dtype_name(argument: str, value: Any) -> str:
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise TypeError(f"Policy.{argument} must be a dtype, got {value!r}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"Policy.{argument} must be a floating dtype, got {dtype}")
    return dtype.name


@dataclasses.dataclass(frozen=True)
class Policy:
    """The dtypes of a computation: ``param``, ``compute`` and ``output`` (jmp's names).

    Args:
      param: the dtype of the parameters and of their gradients (master weights).
      compute: the dtype of the products' operands, the activations and the hidden deltas.
      output: the dtype of the logits, $\\hat y$, the loss and $\\delta^{[L]}$.

    Each is stored as the dtype's name, so a policy is hashable and static under ``jit``.

    >>> Policy("float32", "bfloat16", "float32").accumulate
    dtype('float32')
    >>> POLICIES["mixed"] == Policy(param="float32", compute="bfloat16", output="float32")
    True
    """

    param: Any = "float32"
    compute: Any = "float32"
    output: Any = "float32"

    def __post_init__(self):
        for field in ("param", "compute", "output"):
            object.__setattr__(self, field, _dtype_name(field, getattr(self, field)))

    @property
    def accumulate(self) -> np.dtype:
        """The dtype products and sums accumulate in: float32, or ``compute`` if wider."""
        return jnp.promote_types(self.compute, jnp.float32)

    def cast_to_param(self, tree):
        """Every floating leaf of ``tree`` in the ``param`` dtype."""
        return _cast(tree, self.param)

    def cast_to_compute(self, tree):
        """Every floating leaf of ``tree`` in the ``compute`` dtype."""
        return _cast(tree, self.compute)

    def cast_to_output(self, tree):
        """Every floating leaf of ``tree`` in the ``output`` dtype."""
        return _cast(tree, self.output)


def _cast(tree, dtype):
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


POLICIES: dict[str, Policy] = {
    "f32": Policy("float32", "float32", "float32"),
    "bf16": Policy("bfloat16", "bfloat16", "bfloat16"),
    "mixed": Policy("float32", "bfloat16", "float32"),
}
"""The named policies; scripts (and the command line) can rely on these three names."""


def get_policy(precision: str | Policy | None) -> Policy | None:
    """The [`Policy`][fnn.precision.Policy] that ``precision`` names (``None`` stays ``None``: no
    policy).

    >>> get_policy("bf16").compute
    'bfloat16'
    """
    if precision is None or isinstance(precision, Policy):
        return precision
    if isinstance(precision, str) and precision in POLICIES:
        return POLICIES[precision]
    raise ValueError(
        f"precision must be None, a fnn.Policy or one of {sorted(POLICIES)}, got {precision!r}"
    )


# The helpers below take the policy or None and do nothing without one, so that the core reads
# the same with and without a policy, and computes exactly as before when there is none.


def compute(policy: Policy | None, tree):
    """``tree`` in the compute dtype (unchanged without a policy)."""
    return tree if policy is None else policy.cast_to_compute(tree)


def output(policy: Policy | None, tree):
    """``tree`` in the output dtype (unchanged without a policy)."""
    return tree if policy is None else policy.cast_to_output(tree)


def accumulate(policy: Policy | None, x: Array) -> Array:
    """``x`` in the accumulation dtype, for elementwise work and sums (unchanged without one)."""
    return x if policy is None else x.astype(policy.accumulate)


def matmul(policy: Policy | None, a: Array, b: Array) -> Array:
    """``a @ b``; under a policy, of the compute-dtype operands, accumulated in float32.

    The result has the accumulation dtype (``preferred_element_type``), so that the caller
    rounds it once, after the elementwise work that follows the product.
    """
    if policy is None:
        return a @ b
    a, b = policy.cast_to_compute((a, b))
    return jnp.matmul(a, b, preferred_element_type=policy.accumulate)


def matvec(policy: Policy | None, m: Array, v: Array) -> Array:
    """``m @ v`` for one sample's vector ``v`` (``W a``, ``B^T delta``), as ``matmul``.

    With a float32 (or no) compute dtype it is written as the lecture writes it. With a
    narrower one it is written as the row ``v m^T``: ``vmap`` then makes it a product whose
    left operand is not transposed, the form XLA:CPU runs on bfloat16 operands for every shape
    (``W @ a`` of some shapes, a 1-wide input say, raises UNIMPLEMENTED in its DotThunk, and
    others it converts to float32 first).
    """
    if policy is None or jnp.dtype(policy.compute).itemsize >= 4:
        return matmul(policy, m, v)
    return matmul(policy, v, m.T)


def einsum(policy: Policy | None, spec: str, a: Array, b: Array) -> Array:
    """``jnp.einsum(spec, a, b)``, with operands and accumulation as
    [`matmul`][fnn.precision.matmul]."""
    if policy is None:
        return jnp.einsum(spec, a, b)
    a, b = policy.cast_to_compute((a, b))
    return jnp.einsum(spec, a, b, preferred_element_type=policy.accumulate)
