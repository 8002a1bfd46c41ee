"""Benchmark rows for fnn.curvature (issue 13): each quantity against one plain gradient,
BackPACK and the brute-force JAX way, for experiments/benchmarks.py.

    python experiments/_bench_curvature.py [--repeats N] [--smoke] [--no-backpack] [--out DIR]

One problem (default batch 256, 784-256-256-10 tanh, float32, softmax + cross-entropy: 10
classes). Per quantity, interleaved with :func:`benchmarks.interleaved` (median and p25-p75
per call, paired ratios):

- ``fnn``: ``jax.jit`` of :func:`fnn.backpack` asking for that quantity (or set);
- ``grad``: one plain ``jax.grad(fnn.loss)``, the floor;
- ``backpack``: BackPACK 1.7.1 on PyTorch eager (CPU, float32): forward and backward of the
  same network and data inside ``with backpack(extension)`` (left out when BackPACK is not
  installed).

Then, alone (it takes seconds and gigabytes; see ``_bench_per_example.ALONE`` for why alone),
the brute-force JAX way of :data:`BRUTE`: ``jax.vmap(jax.grad)`` for the first-order ones,
per-sample ``jax.jacrev`` of the logits (in chunks of 32 samples, so that the ``(N, 10, P)``
Jacobian stays at a third of a gigabyte) for the GGN, ``jax.jacrev`` with respect to the
biases for KFLR's ``G``, ``vmap(grad)`` at sampled labels for the Monte Carlo ones. The exact
Hessian diagonal has no affordable brute force at this size (``jax.hessian`` would be a
269,322 x 269,322 matrix, 290 GB): its brute force is one Hessian-vector product per
parameter, timed on 64 basis vectors (8 for the per-sample diagonal, whose brute force is
one per-sample HVP per parameter and sample) and **extrapolated** to all 269,322.

Compiled temporary memory (``memory_analysis``) for fnn, the gradient and the brute force.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmarks

import fnn
from fnn import curvature, losses
from fnn.network import forward_trace

ROWS = {
    "first-order set": ("batch_l2_grad", "sum_grad_squared", "grad_variance"),
    "batch_grad": ("batch_grad",),
    "batch_l2_grad": ("batch_l2_grad",),
    "sum_grad_squared": ("sum_grad_squared",),
    "grad_variance": ("grad_variance",),
    "diag_ggn": ("diag_ggn",),
    "diag_ggn_mc": ("diag_ggn_mc",),
    "batch_diag_ggn": ("batch_diag_ggn",),
    "kflr": ("kflr",),
    "kfac": ("kfac",),
    "diag_hessian": ("diag_hessian",),
    "batch_diag_hessian": ("batch_diag_hessian",),
}
"""Row name -> the quantities fnn computes in one call (the first row: the issue's set)."""

EXTENSIONS = {"batch_grad": "BatchGrad", "batch_l2_grad": "BatchL2Grad",
              "sum_grad_squared": "SumGradSquared", "grad_variance": "Variance",
              "diag_ggn": "DiagGGNExact", "diag_ggn_mc": "DiagGGNMC",
              "batch_diag_ggn": "BatchDiagGGNExact", "kflr": "KFLR", "kfac": "KFAC",
              "diag_hessian": "DiagHessian", "batch_diag_hessian": "BatchDiagHessian"}
"""fnn name -> BackPACK extension."""

HVP_CHUNK = 64
"""Basis vectors timed for the Hessian diagonal's brute force, extrapolated to all."""
HVP_CHUNK_PER_SAMPLE = 8
"""The same for the per-sample Hessian diagonal (each basis vector: N per-sample HVPs)."""


def _backpack():
    try:
        import backpack
    except ImportError:
        return None
    return backpack


# ----------------------------------------------------------------------------------------------
# The brute-force JAX way


def _per_sample_grads(net, params, x, y):
    """``vmap(grad)`` of single samples, scaled ``1 / N`` as BackPACK's per-sample gradients."""
    one = jax.vmap(lambda xi, yi: jax.grad(fnn.loss_autodiff, argnums=1)(
        net, params, xi[None], yi[None]))(x, y)
    return jax.tree.map(lambda g: g / x.shape[0], one)


def _first_order(net, params, x, y, names):
    per = _per_sample_grads(net, params, x, y)
    n = x.shape[0]
    out = {"batch_grad": per}
    out["batch_l2_grad"] = jax.tree.map(lambda g: jnp.sum(g.reshape(n, -1) ** 2, axis=1), per)
    out["sum_grad_squared"] = jax.tree.map(lambda g: jnp.sum(g**2, axis=0), per)
    out["grad_variance"] = jax.tree.map(
        lambda g: jnp.sum(g**2, axis=0) / n - (jnp.sum(g, axis=0) / n) ** 2, per)
    return {k: out[k] for k in names}


def _logits(net, params, xi):
    return forward_trace(net, params, xi)[0][-1]


def _output_hessian(net, z, yi):
    return jax.hessian(lambda z: losses.sample_loss(net.output, net.loss, z, yi))(z)


def _ggn_diagonals(net, params, x, y, batched: bool, chunk: int = 32):
    """diag(J_n^T Lambda_n J_n) / N from per-sample Jacobians of the logits, in chunks."""
    n = x.shape[0]

    def one(xi, yi):
        J = jax.jacrev(_logits, argnums=1)(net, params, xi)  # leaves (k, *leaf)
        H = _output_hessian(net, _logits(net, params, xi), yi)
        return jax.tree.map(lambda j: jnp.einsum("k...,kl,l...->...", j, H, j) / n, J)

    chunk = min(chunk, n)
    xs, ys = x.reshape(-1, chunk, x.shape[1]), y.reshape(-1, chunk)
    per = jax.lax.map(lambda c: jax.vmap(one)(*c), (xs, ys))
    if batched:
        return jax.tree.map(lambda g: g.reshape(n, *g.shape[2:]), per)
    return jax.tree.map(lambda g: jnp.sum(g, axis=(0, 1)), per)


def _bias_factors(net, params, x, rows_of):
    """KFLR / KFAC by brute force: G from per-sample Jacobians of the logits with respect to
    the biases, A from the forward pass."""
    n = x.shape[0]
    biases = tuple(p["b"] for p in params)

    def logits_of_biases(b, xi):
        layers = tuple({"W": p["W"], "b": bi} for p, bi in zip(params, b, strict=True))
        return _logits(net, layers, xi)

    J = jax.vmap(jax.jacrev(logits_of_biases), (None, 0))(biases, x)  # (N, k, n[l]) per layer
    R = rows_of(x)  # (N, V, k)
    _, a = jax.vmap(lambda xi: forward_trace(net, params, xi))(x)
    factors = []
    for j, A in zip(J, a[:-1], strict=True):
        RJ = jnp.einsum("nvk,nkl->nvl", R, j)
        factors.append({"G": jnp.einsum("nvi,nvj->ij", RJ, RJ) / n, "A": A.T @ A / n})
    return tuple(factors)


def _sampled_labels(net, params, x, key):
    z = jax.vmap(lambda xi: _logits(net, params, xi))(x)
    return jax.random.categorical(key, z)


def _hvp_diagonal_chunk(net, params, x, y, batched: bool):
    """HVP_CHUNK Hessian-vector products with basis vectors (the brute-force Hessian
    diagonal of that many parameters; per sample with ``batched``)."""
    flat, unravel = ravel_pytree(params)
    basis = jnp.eye(HVP_CHUNK, flat.size, dtype=flat.dtype)

    def loss(p, xb, yb):
        return fnn.loss_autodiff(net, unravel(p), xb, yb)

    def hvp_entry(v, xb, yb):
        return jnp.vdot(v, jax.jvp(lambda p: jax.grad(loss)(p, xb, yb), (flat,), (v,))[1])

    if batched:  # one basis vector at a time: all of them at once would need ~35 GB here
        return jax.lax.map(lambda v: jax.vmap(lambda xi, yi: hvp_entry(v, xi[None], yi[None]))(
            x, y) / x.shape[0], basis[:HVP_CHUNK_PER_SAMPLE])
    return jax.vmap(lambda v: hvp_entry(v, x, y))(basis)


def brute_force(name: str, net, params, x, y, key):
    """The brute-force JAX way of one row (see the module docstring)."""
    if name == "first-order set" or name in curvature.FIRST_ORDER:
        return _first_order(net, params, x, y, ROWS[name])
    if name in ("diag_ggn", "batch_diag_ggn"):
        return _ggn_diagonals(net, params, x, y, batched=name.startswith("batch_"))
    if name == "diag_ggn_mc":
        per = _per_sample_grads(net, params, x, _sampled_labels(net, params, x, key))
        return jax.tree.map(lambda g: x.shape[0] * jnp.sum(g**2, axis=0), per)
    if name == "kflr":
        def exact_rows(x):
            p = jax.vmap(lambda xi: jax.nn.softmax(_logits(net, params, xi)))(x)
            return jax.vmap(lambda p: curvature.output_hessian_sqrt("softmax", "cce", p))(p)
        return _bias_factors(net, params, x, exact_rows)
    if name == "kfac":
        def sampled_rows(x):
            p = jax.vmap(lambda xi: jax.nn.softmax(_logits(net, params, xi)))(x)
            labels = _sampled_labels(net, params, x, key)
            return (p - jax.nn.one_hot(labels, p.shape[1], dtype=p.dtype))[:, None, :]
        return _bias_factors(net, params, x, sampled_rows)
    return _hvp_diagonal_chunk(net, params, x, y, batched=name.startswith("batch_"))


# ----------------------------------------------------------------------------------------------
# BackPACK


def _backpack_call(torch, backpack, row, params, x, y, names):
    model = benchmarks._torch_mlp(torch, row.sizes, row.activation, params)
    tx, ty = benchmarks._torch_data(torch, x, y)
    model = backpack.extend(model)
    lossfunc = backpack.extend(torch.nn.CrossEntropyLoss())
    extensions = [getattr(backpack.extensions, EXTENSIONS[q])() for q in names]

    def call():
        model.zero_grad()
        loss = lossfunc(model(tx), ty)
        with backpack.backpack(*extensions), warnings.catch_warnings():
            # BackPACK's hooks on a batch whose input needs no gradient: expected, harmless
            warnings.filterwarnings("ignore", "Full backward hook is firing")
            loss.backward()
        return loss

    return call


# ----------------------------------------------------------------------------------------------
# The rows


def _time_alone(fn, repeats: int) -> dict[str, float]:
    """Seconds per call of a slow function, alone: one warm-up call, then ``repeats`` timed."""
    benchmarks._block(fn())
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        benchmarks._block(fn())
        samples.append(time.perf_counter() - start)
    return {"median_s": float(np.median(samples)), "p25_s": float(np.percentile(samples, 25)),
            "p75_s": float(np.percentile(samples, 75))}


def curvature_rows(repeats: int, smoke: bool = False, use_backpack: bool = True,
                   brute_repeats: int = 3, rows=tuple(ROWS)) -> dict:
    """The rows of :data:`ROWS` named in ``rows``; returns ``{"problem", "rows": [...]}``."""
    row = (benchmarks.Row("b16 16-8-8-4 tanh", 16, (16, 8, 8, 4), "tanh") if smoke else
           benchmarks.Row("b256 784-256-256-10 tanh", 256, (784, 256, 256, 10), "tanh"))
    net, params, x, y = benchmarks._problem(row)
    key = jax.random.key(7)
    torch = benchmarks._torch() if use_backpack else None
    backpack = _backpack() if torch is not None else None
    grad = jax.jit(jax.grad(fnn.loss, argnums=1))
    grad_stats = benchmarks.compiled_stats(grad.lower(net, params, x, y).compile())
    results = []
    print(HEADER, flush=True)
    for name in rows:
        names = ROWS[name]
        ours = jax.jit(functools.partial(curvature.backpack, quantities=names), static_argnums=0)
        ours = ours.lower(net, params, x, y, key=key).compile()
        fns = {"fnn": lambda ours=ours: ours(params, x, y, key=key),
               "grad": lambda: grad(net, params, x, y)}
        if backpack is not None:
            fns["backpack"] = _backpack_call(torch, backpack, row, params, x, y, names)
        times = benchmarks.interleaved(fns, repeats)
        brute = jax.jit(functools.partial(brute_force, name), static_argnums=0)
        brute = brute.lower(net, params, x, y, key).compile()
        brute_time = _time_alone(lambda brute=brute: brute(params, x, y, key), brute_repeats)
        hvp = name in ("diag_hessian", "batch_diag_hessian")
        if hvp:  # one HVP per parameter: a chunk of them timed, the rest extrapolated
            chunk = HVP_CHUNK_PER_SAMPLE if name.startswith("batch_") else HVP_CHUNK
            scale = sum(p.size for p in jax.tree.leaves(params)) / chunk
            brute_time = {k: v * scale for k, v in brute_time.items()}
        result = {"row": name, "quantities": list(names), "times": times,
                  "brute": {**brute_time, "extrapolated": hvp},
                  "fnn_over_grad": 1 / times["grad"]["ratio_to_fnn"],
                  "brute_over_fnn": brute_time["median_s"] / times["fnn"]["median_s"],
                  "temp_bytes": {"fnn": benchmarks.compiled_stats(ours)["temp_bytes"],
                                 "grad": grad_stats["temp_bytes"],
                                 "brute": benchmarks.compiled_stats(brute)["temp_bytes"]}}
        if "backpack" in times:
            result["backpack_over_fnn"] = times["backpack"]["ratio_to_fnn"]
        results.append(result)
        print(format_row(result), flush=True)
    return {"problem": {"row": row.name, "classes": row.sizes[-1], "dtype": "float32"},
            "rows": results}


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3g}"


def format_row(r: dict) -> str:
    t = r["times"]
    mem = r["temp_bytes"]
    backpack = (f"{_ms(t['backpack']['median_s'])} | {r['backpack_over_fnn']:.1f}x"
                if "backpack" in t else "- | -")
    brute = (f"{'~' if r['brute']['extrapolated'] else ''}{_ms(r['brute']['median_s'])} | "
             f"{r['brute_over_fnn']:.0f}x")
    return (f"| {r['row']} | {_ms(t['fnn']['median_s'])} [{_ms(t['fnn']['p25_s'])}-"
            f"{_ms(t['fnn']['p75_s'])}] | {r['fnn_over_grad']:.2f}x | {backpack} | {brute} | "
            f"{mem['fnn'] / 2**20:.2f} / {mem['grad'] / 2**20:.2f} / "
            f"{mem['brute'] / 2**20:.0f} |")


HEADER = ("| quantity | fnn ms [p25-p75] | fnn / grad | BackPACK ms | BackPACK / fnn | "
          "brute force ms | brute / fnn | temp MiB fnn / grad / brute |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")


def format_table(report: dict) -> str:
    return "\n".join([HEADER, *(format_row(r) for r in report["rows"])])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--no-backpack", action="store_true")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS),
                        help="the rows to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks"),
                        help="writes DIR/curvature.json (default: %(default)s)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    report = curvature_rows(args.repeats or (2 if args.smoke else 15), args.smoke,
                            not args.no_backpack, 1 if args.smoke else 3, tuple(args.rows))
    report["environment"] = benchmarks.environment()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curvature.json").write_text(json.dumps(report, indent=2))
    print(f"({time.perf_counter() - start:.0f} s; wrote {args.out / 'curvature.json'})")
    return report


if __name__ == "__main__":
    main()
