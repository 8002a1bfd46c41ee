"""Subprocess body of tests/test_parallel.py: prints one JSON line of results.

Run as ``python tests/_parallel_worker.py MODE [ARGS]`` with ``XLA_FLAGS`` set by the parent
(fake CPU devices must be configured before JAX starts):

* ``single``: on 8 fake devices, compare data-parallel with single-device gradients and
  training, read the compiled HLO and the shard shapes;
* ``reference``: ``fit`` on every local device (one process), params as lists;
* ``dist COORDINATOR NUM_PROCESSES PROCESS_ID OUT_DIR [TIMEOUT [FAILS]]``: the same ``fit``
  as one of several processes (jax.distributed + gloo); only process 0 writes the checkpoint
  to ``OUT_DIR``; process ``FAILS`` exits with code 7 right after joining.
"""

import json
import sys
from pathlib import Path

import numpy as np


def _problem():
    import jax
    import jax.numpy as jnp
    import optax

    import fnn

    net = fnn.MLP((3, 16, 8, 3), activation="tanh")
    x = jax.random.normal(jax.random.key(0), (200, 3))
    y = (jnp.argmax(x, axis=1) + (x[:, 0] > 1).astype(jnp.int32)) % 3
    params = fnn.init(jax.random.key(1), net)
    return net, params, optax.sgd(0.1, momentum=0.9), (np.asarray(x), np.asarray(y))


FIT = {"epochs": 3, "batch_size": 32, "l2": 1e-3}


def _fit(mesh, callback=None):
    import jax

    from fnn import training

    net, params, opt, train = _problem()
    state = training.init_state(jax.random.key(2), net, opt, params)
    return training.fit(net, opt, state, train, epochs=FIT["epochs"],
                        batch_size=FIT["batch_size"], l2=FIT["l2"], mesh=mesh, callback=callback)


def _lists(params):
    return [{k: np.asarray(v).tolist() for k, v in layer.items()} for layer in params]


def single():
    import _bench_parallel  # experiments/, on the path below
    import jax
    import jax.numpy as jnp

    import fnn
    from fnn import parallel, training

    mesh = parallel.data_mesh()
    net, params, opt, (x, y) = _problem()
    xb, yb = x[:64], y[:64]
    g1 = jax.jit(jax.grad(fnn.loss, argnums=1))(net, params, xb, yb)
    xs, ys = parallel.shard_batch(xb, mesh), parallel.shard_batch(yb, mesh)
    g8 = jax.jit(jax.grad(fnn.loss, argnums=1))(net, parallel.replicate(params, mesh), xs, ys)
    r1 = _fit(None)
    r8 = _fit(mesh)
    rep, opt_rep = parallel.replicate((params, opt.init(params)), mesh)
    step_hlo = training.train_step.lower(net, opt, rep, opt_rep, (xs, ys), 0.0,
                                         mesh=mesh).compile().as_text()
    xr, yr = parallel.replicate((jnp.asarray(x), jnp.asarray(y)), mesh)
    epoch_hlo = training.train_epoch.lower(net, opt, rep, opt_rep, xr, yr, jax.random.key(3),
                                           batch_size=32, mesh=mesh).compile().as_text()
    try:
        training.train_step(net, opt, rep, opt_rep, (xb[:12], yb[:12]), mesh=mesh)
        bad = None
    except ValueError as err:
        bad = str(err)
    try:
        training.fit(net, opt, training.init_state(jax.random.key(0), net, opt), (x, y),
                     epochs=1, batch_size=20, mesh=mesh)
        bad_fit = None
    except ValueError as err:
        bad_fit = str(err)
    diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                        r1.state.params, r8.state.params)
    print(json.dumps({
        "devices": jax.device_count(),
        "grads_1": _lists(g1), "grads_8": _lists(g8),
        "params_1": _lists(r1.state.params), "params_8": _lists(r8.state.params),
        "loss_1": [r["train_loss"] for r in r1.history],
        "loss_8": [r["train_loss"] for r in r8.history],
        "max_abs_diff": jax.tree.leaves(diff),
        "params_8_spec": str(tuple(r8.state.params[0]["W"].sharding.spec)),
        "shard_shapes": [list(s.data.shape) for s in xs.addressable_shards],
        "shard_devices": len({s.device for s in xs.addressable_shards}),
        "step": _bench_parallel.allreduce_stats(step_hlo),
        # Per-device shapes in the partitioned HLO: (64 / 8, 3) in the step; in the epoch
        # each device gathers (32 / 8, 3) rows and never a whole (32, 3) minibatch.
        "step_local_x": "f32[8,3]" in step_hlo, "step_global_x": "f32[64,3]" in step_hlo,
        "epoch_local_x": "f32[4,3]" in epoch_hlo, "epoch_global_x": "f32[32,3]" in epoch_hlo,
        "epoch": _bench_parallel.allreduce_stats(epoch_hlo),
        "num_params": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)),
        "report": _bench_parallel.parallel_report((3, 16, 8, 3), batch_size=64, n_train=200),
        "bad_step": bad, "bad_fit": bad_fit,
    }))


def reference():
    from fnn import parallel

    res = _fit(parallel.data_mesh())
    print(json.dumps({"params": _lists(res.state.params), "epoch": int(res.state.epoch)}))


def dist(coordinator, num_processes, process_id, out_dir, timeout="300", fails=""):
    import os

    import jax

    from fnn import checkpoint, parallel

    parallel.initialize_distributed(coordinator, int(num_processes), int(process_id),
                                    timeout=int(timeout))
    mesh = parallel.data_mesh()
    if process_id == fails:  # a peer lost after joining, before training
        os._exit(7)
    written = []

    def save(state, record):
        if jax.process_index() == 0:
            checkpoint.save_checkpoint(os.path.join(out_dir, f"p{jax.process_index()}.fnn"),
                                       parallel.to_host(state))
            written.append(record["epoch"])

    res = _fit(mesh, callback=save)
    print(json.dumps({
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "devices": jax.device_count(), "local_devices": jax.local_device_count(),
        "params": _lists(parallel.to_host(res.state.params)), "written": written,
    }), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    mode, *args = sys.argv[1:]
    {"single": single, "reference": reference, "dist": dist}[mode](*args)
