"""Benchmarks: fnn's hand-written backward against jax.grad, PyTorch eager and scikit-learn.

    python experiments/benchmarks.py [--out DIR] [--repeats N] [--smoke]

Prints a table and writes it as ``DIR/benchmarks.json`` (default ``runs/benchmarks``), with
a figure of every row's ratios as ``DIR/benchmarks.png``.

Every row times its competitors **interleaved** (each repetition in a fresh random order, and
each sample waits for every call's result), so that a noisy machine slows all of them
alike, and reports the median and the spread (25th to 75th percentile) of
the per-call time over the repetitions, the ratio to each competitor (the median over the
repetitions of the competitor's time over fnn's in the same repetition: ``2.0x`` means fnn
takes half the time), and the
achieved GFLOP/s as a percentage of the matmul peak measured in the same row, interleaved
with the rest: a jitted ``jnp.dot`` of two 1024 x 1024 float32 matrices.

FLOPs of the gradient are the matrix products only: the forward ``Z = A W^T`` costs
``2 B n[l] n[l-1]`` per layer, the backward the same again for ``dW = D^T A`` and for
``D W`` (the deltas; skipped below layer 1, where fnn never needs ``dL/dx``). Elementwise
work is not counted, so small layers are below their true rate. The training step and the
epoch count the same per step (the optimizer's elementwise update is not counted).

Also recorded, to say what limits each row: XLA's compiled temporary memory and the number
of kernels (the instructions of the compiled entry computation that run: fusions, dots,
custom calls; not parameters, constants, tuples or bitcasts), the time of a jitted call
that does nothing (the dispatch floor), and for the epoch its *FLOP floor*: its matrix
products at the measured matmul peak, the fastest any implementation could run that epoch
on this machine, and so the largest ratio to scikit-learn any implementation could reach.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import itertools
import json
import os
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from fnn import training


class Row(NamedTuple):
    name: str
    batch: int
    sizes: tuple[int, ...]
    activation: str


GRID = (
    Row("b1 784-128-10 relu", 1, (784, 128, 10), "relu"),
    Row("b32 64-64-64-10 relu", 32, (64, 64, 64, 10), "relu"),
    Row("b256 784-256-256-10 tanh", 256, (784, 256, 256, 10), "tanh"),
    Row("b256 784-9x128-10 sigmoid", 256, (784, *(128,) * 9, 10), "sigmoid"),
    Row("b2048 784-1024-1024-10 relu", 2048, (784, 1024, 1024, 10), "relu"),
)
SMOKE_GRID = (
    Row("b1 16-8-3 relu", 1, (16, 8, 3), "relu"),
    Row("b32 16-8-8-3 tanh", 32, (16, 8, 8, 3), "tanh"),
)


def gradient_flops(batch: int, sizes: tuple[int, ...]) -> int:
    """Matmul FLOPs of one gradient: forward, dW, and deltas below every layer but the first."""
    products = [n * m for n, m in itertools.pairwise(sizes)]
    return 2 * batch * (2 * sum(products) + sum(products[1:]))


def _block(out):
    """Wait for JAX results (asynchronous dispatch); anything else is already done."""
    if any(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(out)):
        jax.block_until_ready(out)
    return out


def _calls_per_sample(fn: Callable[[], Any], target_s: float = 0.02) -> int:
    """How many calls make one timed sample last about ``target_s`` (timer resolution)."""
    _block(fn())
    t = time.perf_counter()
    _block(fn())
    once = max(time.perf_counter() - t, 1e-7)
    return max(1, min(1000, int(target_s / once)))


CHEAP_ROWS = 3
"""How many times ``--repeats`` the rows of batch <= 256 and the training step take: their
samples cost little, and fnn's lead there (a few percent) is about the standard error of a
median of 50 paired ratios on this machine (one run of 50 read 0.97x at the tanh row where
its neighbours read 1.03x to 1.05x and in-process A/B tests 1.02x to 1.05x)."""

COOLDOWN = {"sklearn": 0.25}
"""Seconds to leave the machine alone after a competitor's sample, where the default pause
is too short: NumPy's OpenBLAS, under scikit-learn, spins for about 0.1 s of CPU after each
call."""


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, pause: float = 0.02,
                settle: float = 0.05) -> dict[str, dict[str, float]]:
    """Time each function ``repeats`` times, interleaved; per-call seconds: median and spread.

    Each sample is taken in the steady state a training loop runs in, undisturbed by the
    competitor before it:

    - each repetition runs the competitors in a new random order (seeded): rotating one fixed
      order keeps who follows whom (A B C, B C A, C A B: A always follows C), so whatever
      one competitor leaves behind would always fall on the same other one;
    - before each sample the machine is left alone for ``pause`` seconds (longer after the
      competitors in :data:`COOLDOWN`), so that the previous competitor's worker threads stop
      spinning (seen here: NumPy's OpenBLAS, under scikit-learn, burns about 0.1 s of CPU
      after each call, PyTorch's OpenMP about 0.01 s; fnn's MNIST-5k epoch took 64 ms right
      after scikit-learn instead of 35 ms);
    - then the function runs untimed for ``settle`` seconds: after any pause this VM needs
      tens of ms to be back at speed (the deep-sigmoid gradient took 4.75 ms after one
      untimed call, 2.92 ms after 50 ms of them, 2.94 ms back to back).
    """
    inner = {k: _calls_per_sample(f) for k, f in fns.items()}
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    rng = np.random.default_rng(0)
    previous = None
    for _ in range(repeats):
        for k in (names[i] for i in rng.permutation(len(names))):
            f = fns[k]
            time.sleep(COOLDOWN.get(previous, pause))
            previous = k
            end = time.perf_counter() + settle
            _block(f())
            while time.perf_counter() < end:
                _block(f())
            t = time.perf_counter()
            for _ in range(inner[k]):
                # Each call waits for its result: every competitor is timed in the same regime
                # (latency per call). Letting JAX pipeline only some of them would favour
                # whichever happened to get more calls per sample.
                _block(f())
            samples[k].append((time.perf_counter() - t) / inner[k])
    first = next(iter(fns))
    out = {}
    for k, v in samples.items():
        # Paired: each repetition's time over the first competitor's time in the same
        # repetition, then the median; robust to the machine's load drifting over the run.
        paired = np.asarray(v) / np.asarray(samples[first])
        out[k] = {"median_s": float(np.median(v)), "p25_s": float(np.percentile(v, 25)),
                  "p75_s": float(np.percentile(v, 75)), "repeats": repeats,
                  "calls_per_sample": inner[k],
                  f"ratio_to_{first}": float(np.median(paired)),
                  f"ratio_to_{first}_p25": float(np.percentile(paired, 25)),
                  f"ratio_to_{first}_p75": float(np.percentile(paired, 75))}
    return out


def _matmul_peak_fn():
    a = jax.random.normal(jax.random.key(0), (1024, 1024), jnp.float32)
    dot = jax.jit(jnp.dot)
    return lambda: dot(a, a)


MATMUL_FLOPS = 2 * 1024**3

# Entry-computation instructions that do no work of their own at run time.
_FREE_OPS = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%[\w.-]+\s*=\s*.*?\s([a-z][\w-]*)\(")


def compiled_stats(compiled) -> dict[str, int | None]:
    """Temporary memory and kernel count of a compiled (``.lower(...).compile()``) program.

    ``kernels`` counts the instructions of the entry computation that run (fusions, dots,
    custom calls, loops, ...); what they call is not counted again.
    """
    analysis = compiled.memory_analysis()
    text = compiled.as_text()
    entry = text[text.index("\nENTRY"):] if "\nENTRY" in text else text
    ops = [m.group(1) for line in entry.splitlines()[1:]
           if (m := _INSTRUCTION.match(re.sub(r"/\*.*?\*/", "", line)))]
    return {"temp_bytes": None if analysis is None else int(analysis.temp_size_in_bytes),
            "kernels": sum(op not in _FREE_OPS for op in ops)}


def dispatch_floor(repeats: int = 30) -> float:
    """Median seconds per call of a jitted function that adds 1 to a scalar: what any call
    costs here, timed like every competitor (:func:`interleaved`)."""
    f = jax.jit(lambda v: v + 1)
    v = jnp.float32(0)
    return interleaved({"noop": lambda: f(v)}, repeats)["noop"]["median_s"]


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_device(torch) -> str:
    """Where PyTorch runs: on the GPU when JAX runs on one and PyTorch has CUDA, else the CPU."""
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_done(torch, out):
    """Wait for PyTorch's queued GPU work (nothing to wait for on the CPU), like ``_block``."""
    if (out[0] if isinstance(out, tuple) else out).is_cuda:
        torch.cuda.synchronize()
    return out


def _torch_mlp(torch, sizes, activation, params):
    """The same network in PyTorch, initialised with fnn's params (W already (out, in)), on
    :func:`torch_device`."""
    acts = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}
    layers = []
    for l, p in enumerate(params, start=1):
        lin = torch.nn.Linear(sizes[l - 1], sizes[l])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.array(p["W"])))
            lin.bias.copy_(torch.from_numpy(np.array(p["b"])))
        layers.append(lin)
        if l < len(sizes) - 1:
            layers.append(acts[activation]())
    return torch.nn.Sequential(*layers).to(torch_device(torch))


def _torch_data(torch, x, y):
    """``x``, ``y`` as PyTorch tensors (float32, int64) on :func:`torch_device`."""
    device = torch_device(torch)
    return (torch.from_numpy(np.array(x, np.float32)).to(device),
            torch.from_numpy(np.array(y)).long().to(device))


def _sklearn_mlp(sizes, batch):
    """scikit-learn's ``MLPClassifier`` with fnn's architecture, batch size and Adam (lr 1e-3),
    or None when scikit-learn is not installed."""
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        return None
    return MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), batch_size=batch,
                         solver="adam", learning_rate_init=1e-3, random_state=0)


def _problem(row: Row, seed: int = 0):
    net = fnn.MLP(row.sizes, row.activation)
    params = fnn.init(jax.random.key(seed), net)
    kx, ky = jax.random.split(jax.random.key(seed + 1))
    x = jax.random.normal(kx, (row.batch, row.sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (row.batch,), 0, row.sizes[-1])
    return net, params, x, y


def gradient_row(row: Row, repeats: int, torch=None) -> dict[str, Any]:
    """jax.grad(fnn.loss) vs jax.grad(fnn.loss_autodiff) vs PyTorch eager, one grid row."""
    net, params, x, y = _problem(row)
    ours = jax.jit(jax.grad(fnn.loss, argnums=1))
    ref = jax.jit(jax.grad(fnn.loss_autodiff, argnums=1))
    fns = {
        "fnn": lambda: ours(net, params, x, y),
        "autodiff": lambda: ref(net, params, x, y),
        "matmul_peak": _matmul_peak_fn(),
    }
    if torch is not None:
        model = _torch_mlp(torch, row.sizes, row.activation, params)
        tx, ty = _torch_data(torch, x, y)
        weights = list(model.parameters())

        def torch_grad():
            loss = torch.nn.functional.cross_entropy(model(tx), ty)
            return _torch_done(torch, torch.autograd.grad(loss, weights))

        fns["torch"] = torch_grad
    times = interleaved(fns, repeats)
    out = _peak_share({
        "row": row.name, "kind": "gradient", "batch": row.batch, "sizes": list(row.sizes),
        "activation": row.activation, "times": times}, gradient_flops(row.batch, row.sizes))
    _compiled_columns(out, {k: f.lower(net, params, x, y).compile()
                            for k, f in (("fnn", ours), ("autodiff", ref))})
    return _ratios(out, fns)


def _compiled_columns(out: dict[str, Any], compiled: dict[str, Any]) -> None:
    """Add ``temp_bytes`` and ``kernels`` (:func:`compiled_stats`) for fnn and autodiff."""
    stats = {k: compiled_stats(c) for k, c in compiled.items()}
    out["temp_bytes"] = {k: v["temp_bytes"] for k, v in stats.items()}
    out["kernels"] = {k: v["kernels"] for k, v in stats.items()}


def _ratios(out: dict[str, Any], fns: dict[str, Any]) -> dict[str, Any]:
    """Add ``fnn_vs_<competitor>`` (competitor's time over fnn's, paired) for each competitor."""
    for k in fns:
        if k not in ("fnn", "matmul_peak"):
            out[f"fnn_vs_{k}"] = out["times"][k]["ratio_to_fnn"]
    return out


def _peak_share(out: dict[str, Any], flops: float) -> dict[str, Any]:
    """Add the achieved GFLOP/s and its share of the matmul peak measured in the same row."""
    times = out["times"]
    out["gflop"] = flops / 1e9
    out["peak_gflops"] = MATMUL_FLOPS / times["matmul_peak"]["median_s"] / 1e9
    out["fnn_gflops"] = flops / times["fnn"]["median_s"] / 1e9
    # Paired like the ratios: (flops / t_fnn) / (matmul flops / t_peak), per repetition.
    out["fnn_pct_peak"] = 100 * flops / MATMUL_FLOPS * times["matmul_peak"]["ratio_to_fnn"]
    return out


def train_step_row(repeats: int, torch=None, sizes=(784, 256, 128, 10), batch=64):
    """A full training step (gradient + Adam update): fnn vs autodiff vs PyTorch eager."""
    row = Row(f"step b{batch} {'-'.join(map(str, sizes))} relu adam", batch, sizes, "relu")
    net, params, x, y = _problem(row)
    adam = optax.adam(1e-3)
    state = adam.init(params)

    @functools.partial(jax.jit, static_argnums=0)
    def autodiff_step(net, params, state, x, y, l2=0.0):
        """fnn.train_step's work exactly (L2 term, metrics), with the autodiff gradient."""
        loss, grads = jax.value_and_grad(fnn.loss_autodiff, argnums=1)(net, params, x, y)
        grads = training.l2_gradient(grads, params, l2)
        updates, state = adam.update(grads, state, params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return optax.apply_updates(params, updates), state, metrics

    fns = {
        "fnn": lambda: training.train_step(net, adam, params, state, (x, y)),
        "autodiff": lambda: autodiff_step(net, params, state, x, y),
        "matmul_peak": _matmul_peak_fn(),
    }
    if torch is not None:
        model = _torch_mlp(torch, sizes, "relu", params)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        tx, ty = _torch_data(torch, x, y)

        def torch_step():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(tx), ty)
            loss.backward()
            opt.step()
            return _torch_done(torch, loss)

        fns["torch"] = torch_step
    clf = _sklearn_mlp(sizes, batch)
    if clf is not None:
        xn, yn = np.asarray(x), np.asarray(y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.partial_fit(xn, yn, classes=np.arange(sizes[-1]))
        # One partial_fit on one batch of B with batch_size=B: one Adam step, as its API
        # runs it (input checks included).
        fns["sklearn"] = lambda: clf.partial_fit(xn, yn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = interleaved(fns, repeats)
    out = _peak_share({"row": row.name, "kind": "train_step", "batch": batch,
                       "sizes": list(sizes), "times": times}, gradient_flops(batch, sizes))
    _compiled_columns(out, {
        "fnn": training.train_step.lower(net, adam, params, state, (x, y)).compile(),
        "autodiff": autodiff_step.lower(net, params, state, x, y).compile()})
    return _ratios(out, fns)


def epoch_row(repeats: int, torch=None, smoke: bool = False, sizes=(784, 256, 128, 10),
              batch=64):
    """A whole epoch on the MNIST-5k training split: fnn vs PyTorch eager vs scikit-learn."""
    from fnn import data

    x_all, y_all = data.load_dataset("mnist5k")
    if smoke:
        x_all, y_all = x_all[::10], y_all[::10]
    train_idx, _, _ = data.stratified_split(jax.random.key(0), y_all)
    mean, std = data.fit_standardize(x_all[train_idx])
    x = np.asarray(data.standardize(x_all[train_idx], mean, std), np.float32)
    y = np.asarray(y_all[train_idx])
    row = Row(f"epoch mnist5k n={len(y)} b{batch} {'-'.join(map(str, sizes))} relu adam",
              batch, sizes, "relu")
    net = fnn.MLP(sizes)
    params = fnn.init(jax.random.key(0), net)
    adam = optax.adam(1e-3)
    state = adam.init(params)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    key = jax.random.key(1)
    fns = {"fnn": lambda: training.train_epoch(net, adam, params, state, xj, yj, key,
                                               batch_size=batch),
           "matmul_peak": _matmul_peak_fn()}
    if torch is not None:
        model = _torch_mlp(torch, sizes, "relu", params)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        tx, ty = _torch_data(torch, x, y)
        steps = len(y) // batch

        def torch_epoch():
            order = torch.randperm(len(y), device=tx.device)
            for s in range(steps):
                idx = order[s * batch:(s + 1) * batch]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(tx[idx]), ty[idx])
                loss.backward()
                opt.step()
            return _torch_done(torch, loss)

        fns["torch"] = torch_epoch
    clf = _sklearn_mlp(sizes, batch)
    if clf is not None:
        clf.partial_fit(x, y, classes=np.arange(sizes[-1]))
        fns["sklearn"] = lambda: clf.partial_fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = interleaved(fns, repeats)
    steps = len(y) // batch
    out = _peak_share({"row": row.name, "kind": "epoch", "batch": batch, "sizes": list(sizes),
                       "samples": len(y), "steps": steps, "times": times},
                      steps * gradient_flops(batch, sizes))
    # The FLOP floor: the epoch's matrix products at the measured matmul peak. No
    # implementation runs the epoch faster on this machine, so none is more than
    # t_sklearn / floor times faster than scikit-learn.
    out["floor_s"] = out["gflop"] / out["peak_gflops"]
    if "sklearn" in times:
        out["sklearn_vs_floor"] = times["sklearn"]["median_s"] / out["floor_s"]
    return _ratios(out, fns)


def clipping_row(repeats: int, batch: int = 1024, sizes=(784, 1024, 1024, 10)):
    """Issue 6's rows: fnn.clipped_grad vs one plain jax.grad(fnn.loss) vs vmap(grad) + clip."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _bench_per_example

    rows = {r["name"]: r for r in _bench_per_example.benchmark_rows(batch, sizes, repeats)}
    ours = np.asarray(rows["clipped_grad"]["times_s"])
    out = {"row": f"clipped_grad b{batch} {'-'.join(map(str, sizes))}", "kind": "clipping",
           "batch": batch, "sizes": list(sizes), "times": {},
           "temp_bytes": {k: r["temp_bytes"] for k, r in rows.items()}}
    for name, r in rows.items():
        t = np.asarray(r["times_s"])
        out["times"][name] = {"median_s": float(np.median(t)),
                              "p25_s": float(np.percentile(t, 25)),
                              "p75_s": float(np.percentile(t, 75)), "repeats": len(t)}
        out[f"clipped_vs_{name}"] = float(np.median(t / ours))
    return out


def format_clipping(r: dict[str, Any]) -> str:
    """clipped_grad's row as its own small table (time and compiled temp memory)."""
    lines = ["| method | ms [p25-p75] | time / clipped_grad's | temp MiB |",
             "| --- | --- | --- | --- |"]
    for name, t in r["times"].items():
        mem = r["temp_bytes"][name]
        mem = f"{mem / 2**20:.1f}" if mem is not None else "-"
        lines.append(f"| {name} | {_ms(t)} | {r[f'clipped_vs_{name}']:.2f}x | {mem} |")
    return "\n".join(lines)


PRECISIONS = ("f32", "tf32", "mixed", "bf16")
"""The precision row's competitors: fnn's three policies, and float32 with TF32 products
(``jax.default_matmul_precision("tensorfloat32")``: on GPUs with tensor cores, float32 inputs
multiplied at TF32; elsewhere the same as f32)."""


def precision_row(repeats: int, batch: int = 2048, sizes=(784, 1024, 1024, 10)):
    """Issue 16's row: the gradient ``jax.grad(fnn.loss)`` under each precision policy.

    Time, compiled temporary memory and kernels of the same network and data under
    ``precision="f32"``, TF32 products, ``"mixed"`` and ``"bf16"`` (bfloat16 params), timed
    interleaved; ratios are each one's time (memory) over f32's. On a CPU without native
    bfloat16 matrix units the bfloat16 rows may well be slower: XLA:CPU converts some of their
    operands to float32.
    """
    row = Row(f"b{batch} {'-'.join(map(str, sizes))} relu", batch, sizes, "relu")
    base, params, x, y = _problem(row)
    grad = jax.grad(fnn.loss, argnums=1)

    def tf32_grad(net, params, x, y):
        with jax.default_matmul_precision("tensorfloat32"):
            return grad(net, params, x, y)

    jitted = {"f32": jax.jit(grad), "tf32": jax.jit(tf32_grad), "mixed": jax.jit(grad),
              "bf16": jax.jit(grad)}
    args = {}
    for name in PRECISIONS:
        net = dataclasses.replace(base, precision="f32" if name == "tf32" else name)
        args[name] = (net, net.precision.cast_to_param(params), x, y)
    fns = {k: functools.partial(jitted[k], *args[k]) for k in PRECISIONS}
    times = interleaved(fns, repeats)
    stats = {k: compiled_stats(jitted[k].lower(*args[k]).compile()) for k in PRECISIONS}
    return {"row": f"precision {row.name}", "kind": "precision", "batch": batch,
            "sizes": list(sizes), "times": times,
            "temp_bytes": {k: v["temp_bytes"] for k, v in stats.items()},
            "kernels": {k: v["kernels"] for k, v in stats.items()},
            "backend": jax.default_backend()}


def format_precision(r: dict[str, Any]) -> str:
    """The precision row as its own small table: time, its ratio to f32's, temp memory."""
    lines = ["| policy | ms [p25-p75] | time / f32's | temp MiB | temp / f32's | kernels |",
             "| --- | --- | --- | --- | --- | --- |"]
    f32_mem = r["temp_bytes"]["f32"]
    for name, t in r["times"].items():
        mem = r["temp_bytes"][name]
        share = f"{mem / f32_mem:.2f}x" if mem is not None and f32_mem else "-"
        mem = f"{mem / 2**20:.1f}" if mem is not None else "-"
        lines.append(f"| {name} | {_ms(t)} | {t['ratio_to_f32']:.2f}x | {mem} | {share} | "
                     f"{r['kernels'][name]} |")
    return "\n".join(lines)
def curvature_rows(args, torch) -> dict[str, Any]:
    """Issue 13's rows: each fnn.curvature quantity against one plain gradient, BackPACK and
    the brute-force JAX way (``experiments/_bench_curvature.py``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _bench_curvature

    rows = ("first-order set", "diag_hessian") if args.smoke else tuple(_bench_curvature.ROWS)
    report = _bench_curvature.curvature_rows(
        args.repeats or (2 if args.smoke else 15), args.smoke, torch is not None,
        1 if args.smoke else 3, rows)
    report["table"] = _bench_curvature.format_table(report)
    return report
DP_BATCHES = (1024, 4096)
DP_SIZES = (784, 1024, 1024, 10)
DP_EXAMPLES = 60000
"""The DP-SGD rows: batches sampled from 60,000 examples (MNIST's size), 784-1024-1024-10."""


def _opacus():
    try:
        import opacus
    except ImportError:
        return None
    return opacus


def _opacus_step(torch, sizes, params, x, y, batch, clip_norm, noise_multiplier):
    """One Opacus 1.6 DP-SGD step in its fastest mode (ghost clipping: per-example norms from
    the activations and backprops, then a second backward with the clipping factors), SGD.

    The Poisson sample is drawn with one tensor operation (``torch.rand(N) < q``) and
    gathered, not through Opacus's ``DPDataLoader``, whose per-example collation would add
    Python work per example: what is timed is Opacus's step at its fastest.
    """
    from opacus import PrivacyEngine

    model = _torch_mlp(torch, sizes, "relu", params)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tx, ty = _torch_data(torch, x, y)
    n = len(ty)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tx, ty),
                                         batch_size=batch)
    model, opt, criterion, _ = PrivacyEngine().make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=clip_norm, criterion=torch.nn.CrossEntropyLoss(),
        grad_sample_mode="ghost", poisson_sampling=True)

    def step():
        idx = (torch.rand(n, device=tx.device) < batch / n).nonzero().squeeze(1)
        opt.zero_grad()
        loss = criterion(model(tx[idx]), ty[idx])  # Opacus's wrapper: backward runs twice
        loss.backward()
        opt.step()
        return _torch_done(torch, next(model.parameters()))

    return step


def dp_step_row(repeats: int, batch: int, sizes=DP_SIZES, n: int = DP_EXAMPLES, torch=None,
                clip_norm: float = 1.0, noise_multiplier: float = 1.0) -> dict[str, Any]:
    """One DP-SGD step (Poisson sample, one-pass clipping, noise, SGD) against one non-private
    step of the same expected batch, both as ``fnn.train_epoch`` runs them, and Opacus.

    fnn's steps are the bodies of ``train_epoch``'s scan, jitted alone: the non-private one
    gathers a precomputed slice of the epoch's permutation, the DP one draws its Poisson
    sample (``fnn.privacy.poisson_sample``), gathers ``max_batch`` rows and masks them.
    """
    row = Row(f"dp step b{batch} of {n} {'-'.join(map(str, sizes))} relu sgd", batch, sizes,
              "relu")
    net = fnn.MLP(sizes)
    params = fnn.init(jax.random.key(0), net)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (n, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (n,), 0, sizes[-1])
    sgd = optax.sgd(0.1)
    state = sgd.init(params)
    dp = training.DP(clip_norm, noise_multiplier)
    idx = jax.random.permutation(jax.random.key(2), n)[:batch]
    keys = (jax.random.key(3), jax.random.key(4))

    @jax.jit
    def plain(params, state, x, y, idx):
        params, state, m = training._step(net, sgd, params, state, x[idx], y[idx], 0.0)
        return params, state, m["loss"]  # the scan body's outputs: no gradient norm

    @jax.jit
    def private(params, state, x, y, keys):
        params, state, m = training._poisson_step(net, sgd, params, state, keys, x=x, y=y,
                                                  l2=0.0, dp=dp, batch_size=batch)
        return params, state, m["loss"], m["sampled"], m["overflows"]

    fns = {"fnn": lambda: private(params, state, x, y, keys),
           "nonprivate": lambda: plain(params, state, x, y, idx)}
    if torch is not None and _opacus() is not None:
        fns["opacus"] = _opacus_step(torch, sizes, params, x, y, batch, clip_norm,
                                     noise_multiplier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about its secure RNG being off
        times = interleaved(fns, repeats)
    stats = {"nonprivate": compiled_stats(plain.lower(params, state, x, y, idx).compile()),
             "fnn": compiled_stats(private.lower(params, state, x, y, keys).compile())}
    out = {"row": row.name, "kind": "dp_step", "batch": batch, "sizes": list(sizes),
           "examples": n, "max_batch": fnn.privacy.max_batch(n, batch / n), "times": times,
           "temp_bytes": {k: v["temp_bytes"] for k, v in stats.items()},
           "kernels": {k: v["kernels"] for k, v in stats.items()}}
    # Paired per repetition, as the reciprocal of the non-private step's time over the DP
    # step's (the median and quartiles of 1/r are 1/those of r).
    ratio = times["nonprivate"]
    out["dp_vs_nonprivate"] = 1 / ratio["ratio_to_fnn"]
    out["dp_vs_nonprivate_p25"] = 1 / ratio["ratio_to_fnn_p75"]
    out["dp_vs_nonprivate_p75"] = 1 / ratio["ratio_to_fnn_p25"]
    if None not in out["temp_bytes"].values():
        out["dp_vs_nonprivate_temp"] = out["temp_bytes"]["fnn"] / out["temp_bytes"]["nonprivate"]
    if "opacus" in times:  # paired: Opacus's time over the DP step's, per repetition
        out["opacus_vs_fnn"] = times["opacus"]["ratio_to_fnn"]
    return out


def format_dp(rows: list[dict[str, Any]]) -> str:
    """The DP-SGD step rows as a table: time, ratio to the non-private step, Opacus, memory."""
    lines = ["| row | rows (max batch) | non-private ms | DP ms | DP / non-private | "
             "Opacus ghost ms | Opacus / DP | temp MiB non-private / DP |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        t, mem = r["times"], r["temp_bytes"]
        opacus = (f"{_ms(t['opacus'])} | {r['opacus_vs_fnn']:.2f}x "
                  f"[{t['opacus']['ratio_to_fnn_p25']:.2f}-{t['opacus']['ratio_to_fnn_p75']:.2f}]"
                  if "opacus" in t else "- | -")
        memory = (f"{mem['nonprivate'] / 2**20:.1f} / {mem['fnn'] / 2**20:.1f}"
                  if None not in mem.values() else "-")
        lines.append(f"| {r['row']} | {r['max_batch']} | {_ms(t['nonprivate'])} | "
                     f"{_ms(t['fnn'])} | {r['dp_vs_nonprivate']:.2f}x "
                     f"[{r['dp_vs_nonprivate_p25']:.2f}-{r['dp_vs_nonprivate_p75']:.2f}] | "
                     f"{opacus} | {memory} |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version(), "jax": jax.__version__,
                "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
                "optax": optax.__version__, "numpy": np.__version__}
    torch = _torch()
    versions["torch"] = torch.__version__ if torch is not None else None
    versions["torch_device"] = torch_device(torch) if torch is not None else None
    versions["opacus"] = getattr(_opacus(), "__version__", None)
    try:
        from importlib.metadata import version
        versions["backpack"] = version("backpack-for-pytorch")
    except ImportError:
        versions["backpack"] = None
    try:
        import sklearn
        versions["sklearn"] = sklearn.__version__
    except ImportError:
        versions["sklearn"] = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "versions": versions}


def _ms(t: dict[str, float]) -> str:
    return f"{1e3 * t['median_s']:.3g} [{1e3 * t['p25_s']:.3g}-{1e3 * t['p75_s']:.3g}]"


def format_table(results: list[dict[str, Any]]) -> str:
    lines = ["| row | fnn ms [p25-p75] | autodiff ms | torch ms | sklearn ms | "
             "autodiff/fnn | torch/fnn | sklearn/fnn | fnn % peak | temp MB fnn / autodiff | "
             "kernels fnn / autodiff |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    def cell(r, k):
        return _ms(r["times"][k]) if k in r["times"] else "-"

    def ratio(r, k):
        return f"{r[f'fnn_vs_{k}']:.2f}x" if f"fnn_vs_{k}" in r else "-"

    for r in results:
        pct = f"{r['fnn_pct_peak']:.0f}%" if "fnn_pct_peak" in r else "-"
        mem = r.get("temp_bytes")
        mem = (f"{mem['fnn'] / 2**20:.2f} / {mem['autodiff'] / 2**20:.2f}"
               if mem and None not in mem.values() else "-")
        kernels = r.get("kernels")
        kernels = f"{kernels['fnn']} / {kernels['autodiff']}" if kernels else "-"
        lines.append(f"| {r['row']} | {cell(r, 'fnn')} | {cell(r, 'autodiff')} | "
                     f"{cell(r, 'torch')} | {cell(r, 'sklearn')} | {ratio(r, 'autodiff')} | "
                     f"{ratio(r, 'torch')} | {ratio(r, 'sklearn')} | {pct} | {mem} | "
                     f"{kernels} |")
    return "\n".join(lines)


def format_floor(epoch: dict[str, Any]) -> str:
    """The epoch's FLOP floor, and what it allows against scikit-learn, as one sentence."""
    line = (f"epoch: {epoch['gflop']:.2f} GFLOP of matrix products in {epoch['steps']} steps = "
            f"{1e3 * epoch['floor_s']:.1f} ms at the measured matmul peak "
            f"({epoch['peak_gflops']:.0f} GFLOP/s); fnn took "
            f"{1e3 * epoch['times']['fnn']['median_s']:.1f} ms ({epoch['fnn_pct_peak']:.0f}% "
            f"of peak)")
    if "sklearn_vs_floor" in epoch:
        line += (f"; scikit-learn took {1e3 * epoch['times']['sklearn']['median_s']:.1f} ms, "
                 f"so no implementation can be more than {epoch['sklearn_vs_floor']:.1f}x "
                 f"faster than it here")
    return line


COMPETITORS = {"autodiff": "jax.grad of loss_autodiff", "torch": "PyTorch eager",
               "sklearn": "scikit-learn"}


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Each row's competitor time over fnn's (log scale), whiskers p25-p75 of the pairs.

    Returns False (and draws nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(results) + 1.6))
    height = 0.8 / len(COMPETITORS)
    for j, (k, label) in enumerate(COMPETITORS.items()):
        ys, ratios, lo, hi = [], [], [], []
        for i, r in enumerate(results):
            t = r["times"].get(k)
            if t is None:
                continue
            ys.append(i + (j - 1) * height)
            ratios.append(t["ratio_to_fnn"])
            lo.append(t["ratio_to_fnn"] - t["ratio_to_fnn_p25"])
            hi.append(t["ratio_to_fnn_p75"] - t["ratio_to_fnn"])
        ax.barh(ys, ratios, height, xerr=[lo, hi], label=label, capsize=2)
        for yy, ratio, h in zip(ys, ratios, hi, strict=True):
            ax.text((ratio + h) * 1.04, yy, f"{ratio:.2f}x", va="center", fontsize=7)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ratio_label = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x")
    ax.xaxis.set_major_formatter(ratio_label)
    ax.xaxis.set_minor_formatter(ratio_label)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_yticks(range(len(results)), [r["row"] for r in results], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time / fnn's time (paired per repetition; > 1: fnn is faster)")
    ax.set_title("fnn against its competitors, interleaved, median and p25-p75")
    ax.set_xlim(right=ax.get_xlim()[1] * 1.6)  # room for the labels
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def dp_rows(repeats: int, torch=None, smoke: bool = False) -> list[dict[str, Any]]:
    """The DP-SGD step rows (issue 14), printed as they finish."""
    if smoke:
        rows = [dp_step_row(repeats, 8, sizes=(16, 8, 3), n=64, torch=torch)]
    else:
        rows = [dp_step_row(max(5, repeats // 2), b, torch=torch) for b in DP_BATCHES]
    print(f"\nDP-SGD step (issue 14): Poisson-sampled from {rows[0]['examples']} examples, "
          f"clip 1, noise 1, SGD; ratios paired per repetition, median [p25-p75]")
    print(format_dp(rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed samples per competitor and row (default 50; smoke 3); "
                             f"{CHEAP_ROWS}x as many on the rows of batch <= 256 and the "
                             "training step, and a third as many for the epoch")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--no-precision", action="store_true",
                        help="leave out the precision row (f32, TF32, mixed, bf16 gradients)")
    parser.add_argument("--only-dp", action="store_true",
                        help="run only the DP-SGD step rows (issue 14)")
    parser.add_argument("--no-clipping", action="store_true",
                        help="leave out the clipped-gradient rows (vmap(grad) takes ~12 s a "
                             "call and ~10 GB at batch 1024)")
    parser.add_argument("--no-curvature", action="store_true",
                        help="leave out fnn.curvature's rows against BackPACK and the brute "
                             "force (issue 13; about 6 minutes)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.smoke else 50)
    torch = None if args.no_torch else _torch()
    if torch is None and not args.no_torch:
        print("note: PyTorch is not installed; its columns are left out", file=sys.stderr)
    if args.only_dp:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {"environment": environment(), "dp": dp_rows(repeats, torch, args.smoke)}
        (args.out / "benchmarks_dp.json").write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out / 'benchmarks_dp.json'}")
        return 0
    grid = SMOKE_GRID if args.smoke else GRID
    small = {"sizes": (784, 16, 10), "batch": 8} if args.smoke else {}
    rows = [functools.partial(gradient_row, row, repeats * (CHEAP_ROWS if row.batch <= 256
                                                              else 1), torch) for row in grid]
    rows.append(functools.partial(train_step_row, repeats * CHEAP_ROWS, torch, **small))
    rows.append(functools.partial(epoch_row, 2 if args.smoke else max(3, repeats // 3), torch,
                                  smoke=args.smoke, **small))
    results = []
    for measure in rows:  # each row's line as soon as it is measured: a cut run keeps them
        results.append(measure())
        print(format_table(results[-1:]).splitlines()[-1], flush=True)
    clipping = (clipping_row(2, batch=8, sizes=(16, 8, 3)) if args.smoke
                else clipping_row(5) if not args.no_clipping else None)
    precision = (None if args.no_precision else
                 precision_row(2, batch=8, sizes=(16, 8, 3)) if args.smoke else
                 precision_row(repeats))
    curvature = None if args.no_curvature else curvature_rows(args, torch)
    epoch = results[-1]
    report = {"environment": environment(), "repeats": repeats, "curvature": curvature,
              "dispatch_floor_s": dispatch_floor(3 if args.smoke else 30),
              "results": results, "table": format_table(results), "floor": format_floor(epoch),
              "clipping": clipping, "precision": precision}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(report, indent=2))
    plotted = plot(results, args.out / "benchmarks.png")
    env = report["environment"]
    print(f"{env['date']}  {env['cpu']}  {env['cores']} cores  backend={env['backend']}  "
          f"jax {env['versions']['jax']}  torch {env['versions']['torch']}  "
          f"sklearn {env['versions']['sklearn']}")
    print(report["table"])
    print(f"\n{report['floor']}")
    print(f"dispatch floor: a jitted call that adds 1 to a scalar takes "
          f"{1e6 * report['dispatch_floor_s']:.1f} us")
    if clipping is not None:
        print(f"\n{clipping['row']} (issue 6; {clipping['times']['grad']['repeats']} repetitions)")
        print(format_clipping(clipping))
    if precision is not None:
        print(f"\n{precision['row']} (issue 16; backend {precision['backend']})")
        print(format_precision(precision))
    if curvature is not None:
        print(f"\nfnn.curvature, {curvature['problem']['row']} (issue 13)")
        print(curvature["table"])
    report["dp"] = dp_rows(repeats, torch, args.smoke)
    (args.out / "benchmarks.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'benchmarks.json'}"
          + (f" and {args.out / 'benchmarks.png'}" if plotted else " (no matplotlib: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
