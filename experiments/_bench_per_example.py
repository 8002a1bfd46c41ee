"""Benchmark rows for clipped per-example gradients (issue 6), for the benchmark suite.

    python experiments/_bench_per_example.py [--batch N] [--sizes 784,1024,1024,10]

Compares, jitted and in float32, on one random minibatch:

- ``clipped_grad``: :func:`fnn.per_example.clipped_grad` (norms from the deltas, one
  contraction with row-scaled deltas);
- ``grad``: one plain ``jax.grad(fnn.loss)`` (the floor: no clipping at all);
- ``vmap_grad_clip``: ``jax.vmap(jax.grad(fnn.loss))`` over single samples, norms of the
  stacked per-example gradients, explicit clipping, mean (the textbook DP-SGD).

Times are medians over interleaved repetitions (the machine may be shared and noisy;
``vmap_grad_clip`` is timed alone, last: see :data:`ALONE`); temp memory is XLA's
``compile().memory_analysis().temp_size_in_bytes``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

import fnn
from fnn.per_example import clipped_grad


def _vmap_grad_clip(net, params, x, y, clip_norm):
    per = jax.vmap(lambda xi, yi: jax.grad(fnn.loss, argnums=1)(net, params, xi[None], yi[None]))(
        x, y)
    norms = jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1)
                         for g in jax.tree.leaves(per)))
    scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-30)) / x.shape[0]
    # the weighted mean as a contraction: XLA:CPU runs jnp.mean(g * scale[:, None, None], 0)
    # over the (N, n, m) stack about 20x slower than this dot
    return jax.tree.map(lambda g: jnp.tensordot(scale, g, axes=1), per)


def _grad(net, params, x, y, clip_norm):
    del clip_norm
    return jax.grad(fnn.loss, argnums=1)(net, params, x, y)


METHODS = {"clipped_grad": clipped_grad, "grad": _grad, "vmap_grad_clip": _vmap_grad_clip}


ALONE = ("vmap_grad_clip",)
"""Methods timed alone, after the others: once ``vmap_grad_clip``'s ~10 GiB of temporaries
(batch 1024, 784-1024-1024-10) have been freed, the process's later allocations fault in
fresh pages from the host (seen: ``clipped_grad`` 737 ms a call instead of 62 ms, 0.36 s of
system time in page faults per call), which says nothing about the method timed next."""


def benchmark_rows(batch: int = 1024, sizes: Sequence[int] = (784, 1024, 1024, 10),
                   repeats: int = 7, methods: Sequence[str] = tuple(METHODS),
                   clip_norm: float = 1.0) -> list[dict]:
    """One row per method: median seconds per call and compiled temp memory.

    The methods are timed interleaved (the order rotates; with two methods, A B then B A),
    except those in :data:`ALONE`, timed after all the others.

    Returns:
      ``[{"name", "batch", "sizes", "median_s", "times_s", "temp_bytes",
      "ratio_to_grad"}, ...]``; ``ratio_to_grad`` is ``median_s / median_s(grad)`` when
      ``"grad"`` is among the methods.
    """
    net = fnn.MLP(tuple(sizes), "relu")
    params = fnn.init(jax.random.key(0), net)
    x = jax.random.normal(jax.random.key(1), (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (batch,), 0, sizes[-1])
    compiled = {}
    for name in methods:
        lowered = jax.jit(METHODS[name]).lower(net, params, x, y, clip_norm)
        compiled[name] = lowered.compile()
    times: dict[str, list[float]] = {name: [] for name in methods}
    together = [name for name in methods if name not in ALONE]
    for group in (together, *([name] for name in methods if name in ALONE)):
        for name in group:  # warm-up
            jax.block_until_ready(compiled[name](net, params, x, y, clip_norm))
        for r in range(repeats):  # interleaved, so that load spikes hit every method alike
            for name in group[r % len(group):] + group[:r % len(group)]:
                start = time.perf_counter()
                jax.block_until_ready(compiled[name](net, params, x, y, clip_norm))
                times[name].append(time.perf_counter() - start)
    rows = []
    for name in methods:
        memory = compiled[name].memory_analysis()
        rows.append({
            "name": name, "batch": batch, "sizes": list(sizes),
            "median_s": statistics.median(times[name]), "times_s": times[name],
            "temp_bytes": int(memory.temp_size_in_bytes) if memory is not None else None,
        })
    if "grad" in methods:
        base = next(r["median_s"] for r in rows if r["name"] == "grad")
        for r in rows:
            r["ratio_to_grad"] = r["median_s"] / base
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--sizes", default="784,1024,1024,10")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    rows = benchmark_rows(args.batch, tuple(int(s) for s in args.sizes.split(",")), args.repeats)
    for r in rows:
        print(f"{r['name']:>15}: {1e3 * r['median_s']:9.2f} ms  "
              f"({r.get('ratio_to_grad', float('nan')):5.2f}x grad), "
              f"temp {r['temp_bytes'] / 2**20:9.1f} MiB")
    return rows


if __name__ == "__main__":
    main()
