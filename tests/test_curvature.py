"""fnn.curvature against BackPACK 1.7.1 (committed numbers) and brute-force JAX in float64.

The brute force differentiates the plain forward pass: per-sample ``jax.grad`` of
``fnn.loss_autodiff`` for the first-order quantities, ``jax.hessian`` of it for the Hessian
diagonals, and ``J^T Lambda J`` with ``J = jax.jacrev`` of the network's output for the GGN
(whose bias blocks are KFLR's ``G``). Compiled functions are shared: one per network.
"""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import PAIRS, problem
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree
from make_backpack_references import CASES, OUT, fingerprint, stored
from make_backpack_references import problem as backpack_problem

import fnn
from fnn import curvature, losses
from fnn.network import forward_trace

EXACT = ("grad", *curvature.FIRST_ORDER, *curvature.EXACT)

# Compile without LLVM's optimisations: half the compile time, the same float64 numbers.
jit = functools.partial(jax.jit, static_argnums=0,
                        compiler_options={"xla_backend_optimization_level": 0})


@jit
def ours(net, params, x, y, rows):
    """Every exact quantity (:func:`fnn.backpack`), and each Monte Carlo one from the sampled
    rows ``rows[name]`` of shape ``(N, M, k)`` (BackPACK's samples, or fnn's own)."""
    out = curvature.backpack(net, params, x, y, EXACT)
    z, a = jax.vmap(lambda x: forward_trace(net, params, x))(x)
    for name, r in rows.items():
        out[name] = curvature._from_rows(net, params, z, a, y, (name,), r)[name]
    return out


def relative_error(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    scale = np.linalg.norm(reference)
    return np.linalg.norm(ours - reference) / (scale if scale > 0 else 1.0)


def flat(tree, batched=False):
    """A params-like tree as one vector (``(N, P)`` with ``batched``), in ravel_pytree order."""
    if not batched:
        return ravel_pytree(tree)[0]
    leaves, treedef = jax.tree.flatten(tree)
    return jax.vmap(lambda *ls: ravel_pytree(jax.tree.unflatten(treedef, ls))[0])(*leaves)


# ----------------------------------------------------------------------------------------------
# BackPACK 1.7.1, from tests/references/*.npz (tests/make_backpack_references.py)


def _fnn_arrays(net, params, x, y, rows):
    """fnn's numbers under the file's keys; the Monte Carlo ones on BackPACK's own samples."""
    q = ours(net, params, x, y, {k: jnp.asarray(v) for k, v in rows.items()})
    return {f"{name}/{l}/{key}": leaf for name, value in q.items()
            for l, layer in enumerate(value, start=1) for key, leaf in layer.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_equals_backpack(case, x64):
    reference = dict(np.load(OUT / f"{case}.npz"))
    params_np, x, y = backpack_problem(case)
    for key, value in fingerprint(params_np, x, y).items():
        np.testing.assert_array_equal(reference[key], value, err_msg=f"inputs differ: {key}")
    sizes, activation, output, loss, _ = CASES[case]
    net = fnn.MLP(sizes, activation, output, loss)
    params = tuple({"W": jnp.asarray(W), "b": jnp.asarray(b)} for W, b in params_np)
    rows = {k.split("/")[0]: v for k, v in reference.items() if k.endswith("/rows")}
    ours_arrays = _fnn_arrays(net, params, jnp.asarray(x), jnp.asarray(y), rows)
    compared = [k for k in reference if not k.startswith("inputs/") and not k.endswith("/rows")]
    # every BackPACK extension that supports the case: 12, less KFAC and KFLR for leaky ReLU
    assert len(compared) == 11 * 3 * 2 + 2 * 3 * 2 - (12 if activation == "leaky_relu" else 0)
    errors = {k: relative_error(stored(k, np.asarray(ours_arrays[k])), reference[k])
              for k in compared}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-6, (worst, errors[worst])


# ----------------------------------------------------------------------------------------------
# Brute force, every output/loss pair and every activation

ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu")
BATCH, MC = 5, 2


def brute_net(pair: int) -> fnn.MLP:
    """Three hidden layers; pair ``i`` takes activations ``i, i+1, i+2`` (cyclically), so
    that across the five pairs every activation sits at every depth."""
    output, loss = PAIRS[pair]
    return fnn.MLP((3, 4, 5, 4, 3), tuple(ACTIVATIONS[(pair + j) % 5] for j in range(3)),
                   output, loss)


@jit
def brute_force(net, params, x, y, rows):
    """The same quantities from the plain forward: per-sample ``jax.grad`` and
    ``jax.hessian`` of ``fnn.loss_autodiff``, and the GGN ``J^T Lambda J`` with ``J =
    jax.jacrev`` of the logits, ``Lambda`` the exact output Hessian or ``rows^T rows``."""
    flat_params, unravel = ravel_pytree(params)
    n = x.shape[0]

    def sample_loss(p, xi, yi):
        return fnn.loss_autodiff(net, unravel(p), xi[None], yi[None])

    def logits(p, xi):
        return forward_trace(net, unravel(p), xi)[0][-1]

    def output_hessian(z, yi):
        if net.loss in ("cce", "bce"):  # the GGN splits at the logits
            return jax.hessian(lambda z: losses.sample_loss(net.output, net.loss, z, yi))(z)
        J_O = jax.jacrev(losses.OUTPUT_FUNCTIONS[net.output])(z)  # ... at the output
        return 2 * J_O.T @ J_O

    per = jax.vmap(jax.grad(sample_loss), (None, 0, 0))(flat_params, x, y) / n
    hessians = jax.vmap(jax.hessian(sample_loss), (None, 0, 0))(flat_params, x, y) / n
    J = jax.vmap(jax.jacrev(logits), (None, 0))(flat_params, x)
    Lam = jax.vmap(output_hessian)(jax.vmap(logits, (None, 0))(flat_params, x), y)
    ggn = jnp.einsum("nkp,nkl,nlq->npq", J, Lam, J) / n
    ggn_mc = jnp.einsum("nkp,nmk,nml,nlq->npq", J, rows, rows, J) / n
    _, a = jax.vmap(lambda xi: forward_trace(net, params, xi))(x)
    return {"grad": per.sum(0), "batch_grad": per, "sum_grad_squared": (per**2).sum(0),
            "A": tuple(A.T @ A / n for A in a[:-1]),
            "grad_variance": (per**2).sum(0) / n - (per.sum(0) / n) ** 2,
            "batch_l2_grad": per**2,
            "diag_ggn": jnp.diagonal(ggn.sum(0)),
            "batch_diag_ggn": jnp.diagonal(ggn, axis1=1, axis2=2),
            "diag_ggn_mc": jnp.diagonal(ggn_mc.sum(0)),
            "batch_diag_ggn_mc": jnp.diagonal(ggn_mc, axis1=1, axis2=2),
            "diag_hessian": jnp.diagonal(hessians.sum(0)),
            "batch_diag_hessian": jnp.diagonal(hessians, axis1=1, axis2=2),
            "ggn": ggn.sum(0), "ggn_mc": ggn_mc.sum(0),
            "index": unravel(jnp.arange(flat_params.size))}


FLAT = ("grad", "batch_grad", "sum_grad_squared", "grad_variance", "diag_ggn", "batch_diag_ggn",
        "diag_ggn_mc", "batch_diag_ggn_mc", "diag_hessian", "batch_diag_hessian")


def host_flat(tree, batched=False):
    """:func:`flat` on the host, in NumPy: eager ``jnp`` compiled a program per shape here."""
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]
    if not batched:
        return np.concatenate([leaf.ravel() for leaf in leaves])
    return np.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)


def brute_force_errors(net, params, x, y, rows):
    q = jax.device_get(ours(net, params, x, y, {name: rows for name in curvature.MONTE_CARLO}))
    ref = jax.device_get(brute_force(net, params, x, y, rows))
    errors = {name: relative_error(host_flat(q[name], name.startswith("batch_")), ref[name])
              for name in FLAT}
    for i, (got, index) in enumerate(zip(jax.tree.leaves(q["batch_l2_grad"]),
                                         jax.tree.leaves(ref["index"]), strict=True)):
        errors[f"batch_l2_grad {i}"] = relative_error(
            got, np.sum(ref["batch_l2_grad"][:, index.ravel()], axis=1))
    for l, layer in enumerate(ref["index"]):
        bias = layer["b"]  # the GGN's bias block is exactly G
        errors[f"kflr G{l + 1}"] = relative_error(q["kflr"][l]["G"],
                                                   ref["ggn"][np.ix_(bias, bias)])
        errors[f"kfac G{l + 1}"] = relative_error(q["kfac"][l]["G"],
                                                   ref["ggn_mc"][np.ix_(bias, bias)])
        for name in ("kflr", "kfac"):
            errors[f"{name} A{l + 1}"] = relative_error(q[name][l]["A"], ref["A"][l])
    return errors


@pytest.mark.parametrize("pair", range(len(PAIRS)), ids=["-".join(p) for p in PAIRS])
@settings(max_examples=3)
@given(seed=st.integers(0, 2**31 - 1), labels=st.sampled_from(["int", "one-hot"]))
def test_equals_brute_force(pair, seed, labels):
    with jax.enable_x64(True):
        net = brute_net(pair)
        params, x, y = problem(seed, net, BATCH, jnp.float64, labels)
        rows = jax.random.normal(jax.random.key(seed), (BATCH, MC, net.layer_sizes[-1]))
        errors = brute_force_errors(net, params, x, y, rows)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-10, (net, worst, errors[worst])


DRAWS = 10_000


@jit
def monte_carlo_draws(net, params, x, y, keys):
    """``diag_ggn_mc``, ``batch_diag_ggn_mc`` and KFAC's ``G`` (flattened), one draw per key."""
    def one(key):
        q = curvature.backpack(net, params, x, y, curvature.MONTE_CARLO, key=key)
        G = jnp.concatenate([f["G"].ravel() for f in q["kfac"]])
        return flat(q["diag_ggn_mc"]), flat(q["batch_diag_ggn_mc"], True), G
    return jax.vmap(one)(keys)


@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_monte_carlo_is_unbiased(pair, x64):
    """Over 10,000 draws the mean of each Monte Carlo quantity is within 3 standard errors of
    the exact value: its trace (the sum of its entries; for the per-sample diagonal, sample
    0's), one number per quantity. Every single entry is held to 5 standard errors instead:
    among the ~600 entries, some beyond 3 are expected by chance."""
    net = brute_net(pair)
    params, x, y = problem(pair, net, BATCH, jnp.float64)
    rows = jnp.zeros((BATCH, MC, net.layer_sizes[-1]))
    exact = jax.device_get(ours(net, params, x, y, {name: rows for name in curvature.MONTE_CARLO}))
    exact = (host_flat(exact["diag_ggn"]), host_flat(exact["batch_diag_ggn"], True),
             host_flat([f["G"] for f in exact["kflr"]]))
    draws = monte_carlo_draws(net, params, x, y, jax.random.split(jax.random.key(pair), DRAWS))
    for name, d, e in zip(curvature.MONTE_CARLO, draws, exact, strict=True):
        d, e = np.asarray(d), np.asarray(e)
        trace = d.reshape(DRAWS, -1) if name != "batch_diag_ggn_mc" else d[:, 0]
        trace, trace_exact = trace.sum(axis=1), (e if name != "batch_diag_ggn_mc" else e[0]).sum()
        assert abs(trace.mean() - trace_exact) <= 3 * trace.std(ddof=1) / np.sqrt(DRAWS), name
        se = d.std(axis=0, ddof=1) / np.sqrt(DRAWS)
        tolerance = 5 * se + 1e-12 * np.abs(e).max()  # entries that never vary: exact
        assert np.all(np.abs(d.mean(axis=0) - e) <= tolerance), name


# ----------------------------------------------------------------------------------------------
# The compiled program, dtypes, and bad input

SMALL = fnn.MLP((5, 6, 4), "tanh")


def _shapes(compiled_text: str) -> set[tuple[int, ...]]:
    return {tuple(int(d) for d in m.split(",")) for m in re.findall(r"f32\[([\d,]+)\]",
                                                                      compiled_text)}


@pytest.mark.parametrize("names, outer", [
    (("batch_l2_grad", "sum_grad_squared", "grad_variance"), False),
    # the last layer's (N, k, n[L-1]) is also the shape of the k square-root rows at layer
    # L-1, which these need: only the hidden layers' (N, n[l], n[l-1]) are looked for
    (("diag_ggn", "kflr", "diag_hessian"), False),
    (("batch_grad",), True),  # its output is the per-sample gradients: the check can fail
])
def test_no_per_sample_gradient_buffer(names, outer):
    net = fnn.MLP((5, 6, 7, 3), "tanh")
    params, x, y = problem(0, net, 9)
    text = jax.jit(curvature.backpack, static_argnums=(0, 4)).lower(
        net, params, x, y, names).compile().as_text()
    outers = {(9, 6, 5), (9, 7, 6)} | ({(9, 3, 7)} if "batch_l2_grad" in names else set())
    assert bool(_shapes(text) & outers) == outer


def test_one_call_equals_separate_calls_and_keeps_dtypes():
    params, x, y = problem(1, SMALL, 7)
    key = jax.random.key(0)
    together = jax.jit(lambda p: curvature.backpack(
        SMALL, p, x, y, ("diag_ggn", "grad_variance", "kfac", "diag_ggn_mc"), key=key))(params)
    alone = jax.jit(lambda p: (fnn.diag_ggn(SMALL, p, x, y), fnn.grad_variance(SMALL, p, x, y)))
    diagonal, variance = alone(params)
    chex.assert_trees_all_close(together["diag_ggn"], diagonal, rtol=1e-5)
    chex.assert_trees_all_close(together["grad_variance"], variance, rtol=1e-5)
    for name, value in together.items():
        for leaf in jax.tree.leaves(value):
            assert leaf.dtype == jnp.float32, name
    # the Monte Carlo quantities asked for together share their samples: KFAC's G has the
    # Monte Carlo GGN's bias diagonal on its diagonal
    for l, factors in enumerate(together["kfac"]):
        chex.assert_trees_all_close(jnp.diagonal(factors["G"]),
                                    together["diag_ggn_mc"][l]["b"], rtol=1e-5)


def test_float64_grad_equals_jax_grad(x64):
    params, x, y = problem(2, SMALL, 7, jnp.float64)
    q, (loss, grad) = jax.jit(lambda p: (
        fnn.backpack(SMALL, p, x, y, ("grad", "loss")),
        jax.value_and_grad(fnn.loss, argnums=1)(SMALL, p, x, y)))(params)
    chex.assert_trees_all_close(q["grad"], grad, rtol=1e-12)
    assert float(q["loss"]) == pytest.approx(float(loss), rel=1e-13)


@pytest.mark.parametrize("call, message", [
    (lambda p, x, y: fnn.backpack(SMALL, p, x, y, ("diag_ggm",)), "quantity must be one of"),
    (lambda p, x, y: fnn.backpack(SMALL, p, x, y, ()), "quantities is empty"),
    (lambda p, x, y: fnn.diag_ggn(SMALL, p, x, y, mc_samples=2), "pass key="),
    (lambda p, x, y: fnn.diag_ggn(SMALL, p, x, y, key=jax.random.key(0)), "only with mc_samples"),
    (lambda p, x, y: fnn.kfac(SMALL, p, x, y, jax.random.key(0), mc_samples=0),
     "mc_samples must be a positive integer"),
    (lambda p, x, y: fnn.diag_hessian(fnn.MLP((5, 6, 4), feedback="sign"), p, x, y),
     "feedback='backprop'"),
    (lambda p, x, y: fnn.batch_grad(SMALL, p, x[:, :3], y), "layer 0 expects 5"),
])
def test_bad_input_is_refused_by_name(call, message):
    params, x, y = problem(3, SMALL, 7)
    with pytest.raises(ValueError, match=message):
        call(params, x, y)
