"""Data-parallel communication of the default MNIST-5k network, read off the compiled HLO.

    python experiments/_bench_parallel.py [--devices 8] [--time]

Sets ``--xla_force_host_platform_device_count`` (fake CPU devices) before JAX starts, then
prints one JSON object: ``parallel_report`` for the CLI's network
784-256-128-10 at batch 32 and 64 (all-reduces per step and per epoch, and their bytes), and
with ``--time`` the wall time of one epoch (4,000 random samples shaped like MNIST-5k's
training split) on one device and on the data mesh. Fake devices share the host's cores, so
the times say nothing about speed-up on real devices; the HLO counts are what carries over.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np


def _epoch_times(batch_size: int, repeats: int = 3) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import optax

    import fnn
    from fnn import parallel, training

    net = fnn.MLP((784, 256, 128, 10))
    opt = optax.sgd(0.1, momentum=0.9)
    x = jax.random.uniform(jax.random.key(0), (4000, 784))
    y = jax.random.randint(jax.random.key(1), (4000,), 0, 10)
    p = fnn.init(jax.random.key(2), net)
    out = {}
    for name, mesh in (("one_device_s", None), ("data_mesh_s", parallel.data_mesh())):
        kw = {} if mesh is None else {"mesh": mesh}
        args = (p, opt.init(p), x, y) if mesh is None else parallel.replicate(
            (p, opt.init(p), jnp.asarray(x), jnp.asarray(y)), mesh)
        jax.block_until_ready(training.train_epoch(net, opt, *args, jax.random.key(3),
                                                   batch_size=batch_size, **kw))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(training.train_epoch(net, opt, *args, jax.random.key(3),
                                                       batch_size=batch_size, **kw))
            best = min(best, time.perf_counter() - t0)
        out[name] = round(best, 4)
    return out


_ALL_REDUCE = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.-]+\s*=\s*(.*?)\s+all-reduce(?:-start)?\(")
_SHAPE = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def allreduce_stats(hlo_text: str) -> dict[str, int]:
    """Count the all-reduce ops of compiled HLO text and the bytes they reduce.

    A tuple all-reduce (XLA combines per-leaf all-reduces into one) counts once, its bytes
    the sum over its operands. Async pairs count their ``all-reduce-start`` only.

    Args:
      hlo_text: ``jax.jit(f).lower(...).compile().as_text()``.

    Returns:
      ``{"all_reduce_count", "all_reduce_bytes", "all_gather_count"}``.

    >>> allreduce_stats("%a = (f32[3,2]{1,0}, /*index=1*/f32[3]{0}) all-reduce(%x, %y), x=1")
    {'all_reduce_count': 1, 'all_reduce_bytes': 36, 'all_gather_count': 0}
    """
    count = nbytes = 0
    for line in hlo_text.splitlines():
        m = _ALL_REDUCE.search(re.sub(r"/\*.*?\*/", "", line))
        if not m:
            continue
        count += 1
        for dtype, dims in _SHAPE.findall(m.group(1)):
            size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            nbytes += size * _BYTES.get(dtype, 4)
    gathers = len(re.findall(r"\sall-gather(?:-start)?\(", hlo_text))
    return {"all_reduce_count": count, "all_reduce_bytes": nbytes, "all_gather_count": gathers}


def parallel_report(layer_sizes=(784, 256, 128, 10), batch_size: int = 32, n_train: int = 4000,
                    mesh=None) -> dict:
    """What data parallelism costs in communication, read off the compiled train step.

    Compiles ``fnn.training.train_step`` (SGD with momentum, the CLI's default) for the
    network ``layer_sizes`` on a sharded batch and counts its all-reduces.

    Args:
      layer_sizes: the network (default the CLI's MNIST-5k network 784-256-128-10).
      batch_size: $B$, divisible by the device count.
      n_train: training samples, for the steps (= all-reduces) per epoch.
      mesh: default ``fnn.parallel.data_mesh()`` over every device.

    Returns:
      ``devices``, ``batch_size``, ``per_device_batch``, ``num_params``, ``gradient_bytes``
      (float32), ``all_reduce_count`` and ``all_reduce_bytes`` per step,
      ``all_gather_count``, ``steps_per_epoch`` and ``all_reduce_bytes_per_epoch``.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from fnn import training
    from fnn.network import MLP, init
    from fnn.parallel import (
        batch_sharding,
        check_divisible,
        data_mesh,
        num_shards,
        replicate,
    )

    mesh = data_mesh() if mesh is None else mesh
    check_divisible(batch_size, mesh)
    net = MLP(tuple(layer_sizes))
    opt = optax.sgd(0.1, momentum=0.9)
    params = replicate(init(jax.random.key(0), net), mesh)
    state = replicate(opt.init(params), mesh)
    x = jax.ShapeDtypeStruct((batch_size, layer_sizes[0]), jnp.float32,
                             sharding=batch_sharding(mesh, 2))
    y = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batch_sharding(mesh, 1))
    text = training.train_step.lower(net, opt, params, state, (x, y), 0.0,
                                     mesh=mesh).compile().as_text()
    stats = allreduce_stats(text)
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    steps = n_train // batch_size
    return {
        "devices": num_shards(mesh),
        "batch_size": batch_size,
        "per_device_batch": batch_size // num_shards(mesh),
        "num_params": num_params,
        "gradient_bytes": 4 * num_params,
        **stats,
        "steps_per_epoch": steps,
        "all_reduces_per_epoch": steps * stats["all_reduce_count"],
        "all_reduce_bytes_per_epoch": steps * stats["all_reduce_bytes"],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--time", action="store_true", help="also time one epoch")
    args = ap.parse_args(argv)
    if "jax" in sys.modules:
        raise RuntimeError("run this as a script: fake devices must be set before JAX starts")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    result = {"jax": jax.__version__, "backend": jax.default_backend(),
              "reports": [parallel_report(batch_size=b) for b in (32, 64)]}
    if args.time:
        result["epoch_time_batch_64"] = _epoch_times(64)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
