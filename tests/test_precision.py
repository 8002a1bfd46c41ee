"""Mixed precision: the policy reaches every quantity of the hand-written backward as designed."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cases import grads, problem
from hypothesis import given, settings
from hypothesis import strategies as st

import fnn
from fnn.backpropagation import _loss_fwd
from fnn.precision import POLICIES, Policy, get_policy
from fnn.testing import architectures

BF16, F32 = jnp.bfloat16, jnp.float32
NET = fnn.MLP((48, 40, 32, 10), ("tanh", "relu"))


def with_policy(net, precision):
    return dataclasses.replace(net, precision=precision)


def to_bf16_grid(tree):
    """Round to bfloat16 and back: a point that the compute dtype represents exactly (on the
    host, with ml_dtypes' round-to-nearest-even: eager ``astype`` compiled two programs per
    leaf shape)."""
    def grid(v):
        if not jnp.issubdtype(v.dtype, jnp.floating):
            return v
        return jnp.asarray(np.asarray(v).astype(BF16).astype(v.dtype))

    return jax.tree.map(grid, tree)


def layer_errors(g, ref):
    """Per layer ``||g - ref|| / ||ref||`` over W and b together (absolute where ref is 0), on
    the host in float64."""
    out = []
    for a, b in zip(g, ref, strict=True):
        a, b = ({k: np.asarray(layer[k], np.float64) for k in "Wb"} for layer in (a, b))
        num = np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in "Wb"))
        den = np.sqrt(sum(np.sum(b[k] ** 2) for k in "Wb"))
        out.append(num / den if den > 0 else num)
    return out


def test_named_policies_and_their_names():
    assert set(POLICIES) == {"f32", "bf16", "mixed"}
    mixed = get_policy("mixed")
    assert (mixed.param, mixed.compute, mixed.output) == ("float32", "bfloat16", "float32")
    assert mixed.accumulate == jnp.float32 and get_policy("bf16").accumulate == jnp.float32
    assert Policy(jnp.float64, jnp.float64, "float64").accumulate == jnp.float64
    assert get_policy(None) is None and get_policy(mixed) is mixed
    net = fnn.MLP((3, 2), precision="mixed")
    assert net.precision == mixed and net == fnn.MLP((3, 2), precision=Policy("float32",
                                                                               BF16, F32))
    assert hash(net) == hash(fnn.MLP((3, 2), precision="mixed"))


@pytest.mark.parametrize("bad", ["fp16", 16, "F32"])
def test_bad_precision_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=r"precision must be None, a fnn\.Policy or one of"):
        fnn.MLP((3, 2), precision=bad)
    with pytest.raises(TypeError, match=r"Policy\.compute must be a floating dtype, got int32"):
        Policy("float32", "int32", "float32")


def test_params_of_another_dtype_are_refused_by_name():
    net = with_policy(NET, "mixed")
    params, x, y = problem(0, NET, 4, BF16)
    with pytest.raises(TypeError, match=r"params\[0\]\['W'\] \(layer 1\) is bfloat16, but the "
                                        r"net's precision policy keeps params in float32"):
        fnn.loss(net, params, x, y)
    assert fnn.init(jax.random.key(0), net)[0]["W"].dtype == F32
    assert fnn.init(jax.random.key(0), with_policy(NET, "bf16"))[1]["b"].dtype == BF16


def test_f32_policy_gives_the_numbers_of_no_policy_bitwise():
    params, x, y = problem(1, NET, 16)
    plain = grads(fnn.loss, NET, params, x, y)
    f32 = grads(fnn.loss, with_policy(NET, "f32"), params, x, y)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(f32), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["mixed", "bf16"])
def test_dtypes_of_every_quantity(name):
    """What each policy says, quantity by quantity (backprop() shows them all)."""
    net = with_policy(NET, name)
    policy = net.precision
    params, x, y = problem(2, net, 8, policy.param)
    bp = jax.jit(fnn.backprop)(net, params, x, y)
    assert bp.loss.dtype == policy.output
    assert [a.dtype for a in bp.a[1:-1]] == [policy.compute] * 2  # stored activations
    assert bp.a[-1].dtype == policy.output and bp.z[-1].dtype == policy.output  # yhat, logits
    assert [z.dtype for z in bp.z[1:-1]] == [F32] * 2  # hidden z accumulated in float32
    assert bp.delta[-1].dtype == policy.output  # delta[L] = yhat - y
    assert [d.dtype for d in bp.delta[1:-1]] == [policy.compute] * 2
    assert {g.dtype for g in jax.tree.leaves(bp.grads)} == {jnp.dtype(policy.param)}
    g_params, g_x = grads(fnn.loss, net, params, x, y)
    assert {g.dtype for g in jax.tree.leaves(g_params)} == {jnp.dtype(policy.param)}
    assert g_x.dtype == x.dtype
    norms = jax.jit(fnn.per_example_grad_norms)(net, params, x, y)
    assert norms.dtype == F32  # for clipping, in float32 whatever the compute dtype


def test_bf16_and_mixed_compute_the_same_from_the_same_weights():
    """The two differ only in where the weights live: same bfloat16-representable weights,
    same forward; gradients equal up to the final rounding to bfloat16."""
    params, x, y = to_bf16_grid(problem(3, NET, 8))
    mixed = jax.jit(fnn.backprop)(with_policy(NET, "mixed"), params, x, y)
    bf16 = jax.jit(fnn.backprop)(with_policy(NET, "bf16"),
                                 jax.tree.map(lambda v: v.astype(BF16), params), x, y)
    for a, b in zip(mixed.a[1:-1], bf16.a[1:-1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert max(layer_errors(mixed.grads, bf16.grads)) < 2 ** -7


@settings(max_examples=4)
@given(architectures(max_hidden=3, max_width=32), st.integers(1, 16), st.integers(0, 2**31 - 1))
def test_mixed_gradients_within_1e_2_of_float32(net, batch, seed):
    """By layer norm, against the float32 gradient at the same point. The point is one that
    bfloat16 represents (params and x rounded to it): the policy's own rounding is what is
    measured; rounding x and W first moves ReLU kinks, which no precision can follow."""
    params, x, y = to_bf16_grid(problem(seed, net, batch))
    mixed = grads(fnn.loss, with_policy(net, "mixed"), params, x, y)[0]
    reference = grads(fnn.loss, net, params, x, y)[0]
    errors = layer_errors(mixed, reference)
    assert max(errors) <= 1e-2, (net, batch, errors)


def test_program_products_have_the_policy_dtypes():
    """In the program fnn hands XLA: every matrix product of the mixed gradient takes bfloat16
    operands and accumulates in float32; the f32 policy has float32 products only."""
    params, x, y = problem(4, NET, 32)
    grad = jax.jit(jax.grad(fnn.loss, argnums=(1, 2)))
    matrix = r"tensor<\d+x\d+x([a-z]+\d+)>"
    dot = re.compile(rf"stablehlo\.dot_general .*: \({matrix}, {matrix}\) -> {matrix}")
    bias_sum = re.compile(r"stablehlo\.dot_general .*: \(tensor<\d+x([a-z]+\d+)>, .*\) -> "
                          r"tensor<\d+x([a-z]+\d+)>")
    for name, operands in (("mixed", {("bf16", "bf16", "f32")}), ("f32", {("f32",) * 3})):
        text = grad.lower(with_policy(NET, name), params, x, y).as_text()
        found = dot.findall(text)
        # 3 forward, 2 recursion, 3 dW, dx: nine matrix products
        assert len(found) == 9 and set(found) == operands, (name, found)
        # the bias gradients: sums over the batch of the deltas as stored, in float32
        sums = bias_sum.findall(text)
        assert len(sums) == 3 and {out for _, out in sums} == {"f32"}, sums
    compiled = grad.lower(with_policy(NET, "mixed"), params, x, y).compile().as_text()
    products = compiled_products(compiled)
    # Every product XLA runs accumulates in float32.
    assert products and all(out.startswith("f32[") for out, _, _ in products), products
    if jax.default_backend() == "cpu":
        # XLA:CPU keeps the bfloat16 operands where its matmul library takes them (the forward
        # products at least); it converts those of D^T A, whose left operand is transposed,
        # to float32 first (xla/backends/cpu/ynn_support.cc: the left operand must not be
        # transposed).
        forward = [(lhs, rhs) for out, lhs, rhs in products if out == "f32[32,40]"]
        assert ("bf16", "bf16") in forward, products
    else:  # XLA:GPU (seen on an H200): all nine products of the program, bfloat16 operands
        assert len(products) == 9, products
        assert {(lhs, rhs) for _, lhs, rhs in products} == {("bf16", "bf16")}, products


def compiled_products(text):
    """``(result type, lhs dtype, rhs dtype)`` of every ``dot`` of a compiled HLO text, in
    whatever computation it sits (XLA:CPU's matmul library fusions, XLA:GPU's gemm fusions:
    the operand dtypes are those inside the fusion, after any convert fused into it).
    Instruction names are unique within an HLO module."""
    dtypes = dict(re.findall(r"%([\w.-]+) = (\w+)\[", text))
    found = re.findall(r"= (\w+\[[\d,]*\])\S* dot\(%([\w.-]+), %([\w.-]+)\)", text)
    return [(out, dtypes.get(lhs), dtypes.get(rhs)) for out, lhs, rhs in found]


def test_residuals_are_half_the_bytes():
    """What the forward pass hands to the backward pass (besides params and x, which the caller
    holds anyway): half the bytes under the mixed policy, on every backend."""
    net = fnn.MLP((784, 1024, 1024, 10))
    shapes = {"params": fnn.init(jax.random.key(0), net), "x": jnp.zeros((2048, 784)),
              "y": jnp.zeros(2048, jnp.int32)}

    def residual_bytes(precision):
        out = jax.eval_shape(_loss_fwd, with_policy(net, precision), *shapes.values())
        _, (_, _, a, z, _) = out
        return sum(v.size * v.dtype.itemsize for v in jax.tree.leaves((a, z)))

    f32, mixed = residual_bytes("f32"), residual_bytes("mixed")
    assert f32 == 4 * 2048 * (1024 + 1024 + 10)
    assert mixed == 2 * 2048 * (1024 + 1024) + 4 * 2048 * 10  # yhat stays float32
    assert mixed <= 0.51 * f32


def test_training_under_mixed_keeps_float32_master_weights():
    net = fnn.MLP((8, 32, 4), "tanh", precision="mixed")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 8)), F32)
    y = jnp.argmax(x[:, :4], axis=1)
    params = fnn.init(jax.random.key(0), net)
    opt = optax.sgd(0.5)
    state = opt.init(params)
    first = None
    for _ in range(60):
        params, state, metrics = fnn.train_step(net, opt, params, state, (x, y))
        first = metrics["loss"] if first is None else first
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(F32)}
    assert metrics["loss"].dtype == F32 and float(metrics["loss"]) < 0.5 * float(first)
