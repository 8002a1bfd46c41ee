r"""Data-parallel training: the minibatch sharded over devices, one all-reduce per step.

The lecture's minibatch gradient is a mean over the batch,
$\nabla_\theta L = \frac1B \sum_{i=1}^{B} \nabla_\theta \ell_i$. Cut the batch into $D$
equal shards, one per device: each device runs the forward pass and the hand-written delta
recursion on its $B / D$ samples, and the mean over the batch becomes a sum of the $D$
partial sums, which XLA computes with one **all-reduce** of the gradients. Parameters and
optimizer state are **replicated** (every device holds all of them and applies the same
update); only the batch is **sharded**.

The delta recursion ([`fnn.backpropagation`][fnn.backpropagation]) knows nothing about
devices: the training functions take a ``mesh=`` (a 1-D ``jax.sharding.Mesh`` with the axis
``"data"``) and constrain each minibatch to ``NamedSharding(mesh, P("data"))``; XLA's SPMD
partitioner does the rest. This module makes the mesh and places data on it
([`data_mesh`][fnn.parallel.data_mesh], [`replicate`][fnn.parallel.replicate],
[`shard_batch`][fnn.parallel.shard_batch], [`check_divisible`][fnn.parallel.check_divisible]),
and starts several processes ([`initialize_distributed`][fnn.parallel.initialize_distributed]).
``experiments/_bench_parallel.py`` counts the all-reduces in the compiled step.

See ``docs/distributed.md`` for running it on several GPUs and under SLURM.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from fnn._validation import ParameterError

__all__ = [
    "AXIS",
    "barrier",
    "batch_sharding",
    "check_divisible",
    "data_mesh",
    "initialize_distributed",
    "replicate",
    "shard_batch",
    "to_host",
    "watch_peers",
]

AXIS = "data"
"""The name of the mesh axis the batch is sharded along."""

ENV_COORDINATOR = "FNN_COORDINATOR"
ENV_NUM_PROCESSES = "FNN_NUM_PROCESSES"
ENV_PROCESS_ID = "FNN_PROCESS_ID"
_timeout = {"s": 300}  # set by initialize_distributed: how long processes wait for each other
_barriers = {"count": 0}
PEER_LOST = threading.Event()
"""Set when ``barrier`` gave up on the other processes: ``fnn``'s exit then skips JAX's
shutdown, which would wait for the lost peer's heartbeat (100 s) and abort."""


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with the axis ``"data"`` over ``devices`` (default: every device).

    With several processes, ``jax.devices()`` lists the devices of all of them (ordered by
    process), so each process owns a contiguous block of the axis.

    Args:
      devices: the devices, in mesh order; default ``jax.devices()``.

    Returns:
      ``Mesh`` of shape ``{"data": len(devices)}``, axis type ``Auto`` (sharding decided by
      XLA's partitioner from the constraints).

    >>> mesh = data_mesh(jax.devices()[:1])
    >>> dict(mesh.shape)
    {'data': 1}
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device")
    return Mesh(np.array(devices), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh, ndim: int = 1, axis: int = 0) -> NamedSharding:
    """``NamedSharding`` splitting dimension ``axis`` of an ``ndim``-d array along ``"data"``.

    >>> tuple(batch_sharding(data_mesh(jax.devices()[:1]), 3, axis=1).spec)
    (None, 'data')
    """
    return NamedSharding(mesh, P(*([None] * axis), AXIS))


def num_shards(mesh: Mesh) -> int:
    """The number of devices along ``"data"``, $D$."""
    return int(mesh.shape[AXIS])


def check_divisible(batch_size: int, mesh: Mesh, shown: str | None = None) -> None:
    """Raise ``ValueError`` unless ``batch_size`` is a multiple of the mesh's device count.

    fnn does not pad a batch to a multiple of the device count: padding would either change
    the mean of the loss (padded samples counted) or need a mask in every step; an equal
    shard per device keeps the step the single-device step. ``shown`` is how the message
    names the batch size (default the number itself).

    >>> check_divisible(8, data_mesh(jax.devices()[:1]))
    """
    d = num_shards(mesh)
    if batch_size % d:
        raise ParameterError("batch_size", f"{shown or batch_size} is not divisible by the {d} "
                             f"devices of the data-parallel mesh; use a multiple of {d}")


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array leaf of ``tree`` on every device of ``mesh`` (sharding ``P()``).

    Works with several processes: a leaf that lives on this process only (a NumPy array, a
    single-device ``jax.Array``) must have the same value on every process; a global array is
    resharded. Typed PRNG keys are replicated through their key data; non-array leaves are
    left as they are.

    Args:
      tree: a pytree (params, optimizer state, a data set).
      mesh: the mesh.

    Returns:
      The same tree, each array leaf a ``jax.Array`` replicated over ``mesh``.
    """
    rep = NamedSharding(mesh, P())

    def put(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype,
                                                                 jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(leaf)),
                                            impl=jax.random.key_impl(leaf))
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return jax.device_put(leaf, rep)
        if not isinstance(leaf, jax.Array | np.ndarray | np.generic):
            return leaf
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, rep, lambda idx: host[idx])

    return jax.tree.map(put, tree)


def shard_batch(x: ArrayLike, mesh: Mesh) -> jax.Array:
    """Split ``x`` of shape ``(B, ...)`` along its first axis over the mesh (one process).

    Each of the $D$ devices holds ``(B / D, ...)`` rows (``x.addressable_shards``).

    Raises:
      ValueError: ``B`` is not divisible by $D$.

    >>> xs = shard_batch(jnp.ones((4, 3)), data_mesh(jax.devices()[:1]))
    >>> [s.data.shape for s in xs.addressable_shards]
    [(4, 3)]
    """
    x = jnp.asarray(x)
    check_divisible(x.shape[0], mesh)
    return jax.device_put(x, batch_sharding(mesh, x.ndim))


def to_host(tree: Any) -> Any:
    """Every replicated (possibly multi-process) array leaf as a NumPy array on this host;
    typed PRNG keys (which NumPy cannot hold) stay as they are."""
    return jax.tree.map(lambda a: np.asarray(a) if isinstance(a, jax.Array) and not
                        jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a, tree)


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, timeout: int = 300) -> bool:
    """Start ``jax.distributed`` for multi-process training, if asked to; before any JAX work.

    Each argument left ``None`` is read from the environment (``FNN_COORDINATOR``, the
    ``host:port`` of process 0; ``FNN_NUM_PROCESSES``; ``FNN_PROCESS_ID``); with none of the
    three anywhere nothing happens. On CPU the collectives use gloo. When the processes have
    not all connected within ``timeout`` seconds, this process says so in one line on stderr
    and exits with code 1 (JAX itself would abort it with a stack trace).
    Returns True if ``jax.distributed.initialize`` was called; raises ``ValueError`` when
    only some of the three are given or they are out of range.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    given = {"coordinator": coordinator, "num_processes": num_processes,
             "process_id": process_id}
    if all(v is None for v in given.values()):
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"multi-process training needs coordinator, num_processes and "
                         f"process_id; missing {', '.join(missing)} (flags --coordinator, "
                         f"--num-processes, --process-id or {ENV_COORDINATOR}, "
                         f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})")
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes - 1}], got {process_id}")
    if ":" not in coordinator:
        raise ValueError(f"coordinator must be host:port, got {coordinator!r}")
    # CPU devices need gloo for cross-process collectives; GPUs and TPUs ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    print(f"fnn: process {process_id} of {num_processes} joining {coordinator} (waiting up to "
          f"{timeout:g} s for the others)", file=sys.stderr, flush=True)
    connected = threading.Event()

    def watchdog():  # JAX aborts the process when the connection times out: say why first
        if not connected.wait(timeout):
            who = (f"the other {num_processes - 1} process(es) did not all connect to"
                   if process_id == 0 else f"process {process_id} found no coordinator at")
            print(f"fnn: error: jax.distributed: {who} {coordinator} within {timeout:g} s",
                  file=sys.stderr, flush=True)
            os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id,
                               initialization_timeout=math.ceil(timeout) + 60)
    connected.set()
    _timeout["s"] = timeout
    threading.Thread(target=_beat, name="fnn-heartbeat", daemon=True).start()
    return True


def _beat(interval: float = 1.0) -> None:
    """This process's sign of life for [`watch_peers`][fnn.parallel.watch_peers]: a counter in
    the coordination service's key-value store, bumped every ``interval`` seconds from the
    moment the process joined."""
    from jax._src import distributed

    key = f"fnn/alive/{jax.process_index()}"
    while True:
        try:
            distributed.global_state.client.key_value_increment(key, 1)
        except (jax.errors.JaxRuntimeError, AttributeError):  # the run is over or torn down
            return
        time.sleep(interval)


def barrier(name: str) -> None:
    """Wait until every process of a multi-process run reaches ``barrier(name)``; with one
    process, return at once.

    ``fit`` calls it after compiling and before the first step: a process that compiles
    slowly (a loaded machine) would otherwise make the others wait inside their first
    all-reduce, and gloo gives up after 30 s with ``Gloo context initialization failed``.
    The wait is bounded by ``initialize_distributed``'s ``timeout`` (300 s by default), past
    which it raises ``TimeoutError``; every process must call ``barrier`` the same number of
    times, in the same order.
    """
    from jax._src import distributed  # the coordination client: no public handle to it

    client = distributed.global_state.client
    if jax.process_count() == 1 or client is None:
        return
    _barriers["count"] += 1
    try:
        client.wait_at_barrier(f"fnn:{name}:{_barriers['count']}", int(_timeout["s"] * 1000))
    except jax.errors.JaxRuntimeError as e:
        if "DEADLINE_EXCEEDED" not in str(e):
            raise
        PEER_LOST.set()
        raise TimeoutError(f"process {jax.process_index()}: the other processes did not all "
                           f"reach '{name}' within {_timeout['s']:g} s (one may have failed "
                           f"or stopped: see its output)") from None


def watch_peers(on_lost: Callable[[str], None], stale: float | None = None,
                interval: float = 1.0) -> threading.Event:
    """Watch the other processes of a multi-process run from a daemon thread; with one
    process, do nothing.

    Every process started by [`initialize_distributed`][fnn.parallel.initialize_distributed]
    bumps a counter in the coordination service's key-value store every second; every
    ``interval`` seconds this thread reads the others'. A process whose counter has not moved
    for ``stale`` seconds (killed, its machine gone; default: ``initialize_distributed``'s
    ``timeout``, at most 60), or a store that cannot be reached (process 0, which holds it, is
    gone), makes the thread call ``on_lost(message)`` once. Without this, a process whose peer
    died mid-run waits in the next all-reduce until JAX's heartbeat timeout (100 s) and is
    then aborted by JAX with a stack dump. Set the returned event to stop watching.
    """
    from jax._src import distributed  # the coordination client: no public handle to it

    stop, client = threading.Event(), distributed.global_state.client
    if jax.process_count() == 1 or client is None:
        return stop
    stale = min(_timeout["s"], 60.0) if stale is None else stale
    others = [i for i in range(jax.process_count()) if i != jax.process_index()]

    def watch():
        seen = {i: (None, time.monotonic()) for i in others}  # counter, when it last moved
        while not stop.wait(interval):
            try:
                counts = {i: _count(client, i) for i in others}
            except jax.errors.JaxRuntimeError as err:
                return on_lost(f"lost the coordinator (process 0): {str(err).splitlines()[0]}")
            now = time.monotonic()
            for i in others:
                if counts[i] != seen[i][0]:
                    seen[i] = (counts[i], now)
                elif now - seen[i][1] > stale:
                    return on_lost(f"lost process {i} of {jax.process_count()} (no sign of "
                                   f"life for {stale:g} s)")

    threading.Thread(target=watch, name="fnn-watch-peers", daemon=True).start()
    return stop


def _count(client: Any, i: int) -> str | None:
    """Process ``i``'s heartbeat counter; None before its first beat."""
    try:
        return client.key_value_try_get(f"fnn/alive/{i}")
    except jax.errors.JaxRuntimeError as err:
        if "NOT_FOUND" in str(err):
            return None
        raise
