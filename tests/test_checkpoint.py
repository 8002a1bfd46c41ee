"""Tests of fnn.checkpoint: bitwise round trips, atomic writes and refusal of damaged files."""

from __future__ import annotations

import collections
import errno
import json
import math
import os
import struct
import tempfile
from typing import Any, NamedTuple

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings

from fnn.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    MAGIC,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)

# Layout constants of the format (see the module docstring): magic, version, two lengths, digest.
PREFIX = struct.Struct("<8sIQQ")
DATA_START = PREFIX.size + 32


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _is_typed_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _bytes(x: Any) -> np.ndarray:
    return np.frombuffer(np.asarray(x).tobytes(), dtype=np.uint8)


def assert_leaf_identical(a: Any, b: Any) -> None:
    """Same type, dtype, shape and bits (NaN payloads and signed zeros included)."""
    assert type(a) is type(b), (type(a), type(b))
    if _is_typed_key(a):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert str(jax.random.key_impl(a)) == str(jax.random.key_impl(b))
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    if isinstance(a, jax.Array | np.ndarray | np.generic):
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        assert a.shape == b.shape, (a.shape, b.shape)
        np.testing.assert_array_equal(_bytes(a), _bytes(b))
    elif type(a) is float:
        assert struct.pack("<d", a) == struct.pack("<d", b)
    elif type(a) is complex:
        assert struct.pack("<dd", a.real, a.imag) == struct.pack("<dd", b.real, b.imag)
    else:
        assert a == b


def assert_tree_identical(a: Any, b: Any) -> None:
    """Same pytree structure (container types included) and identical leaves."""
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b, (tree_a, tree_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert_leaf_identical(x, y)


def make_params(key: jax.Array) -> tuple[dict[str, jax.Array], ...]:
    """Three layers in three dtypes: float32, bfloat16, float16."""
    sizes = [(4, 3), (5, 4), (2, 5)]
    dtypes = [jnp.float32, jnp.bfloat16, jnp.float16]
    params = []
    for (n_out, n_in), dtype, k in zip(sizes, dtypes, jax.random.split(key, 3), strict=True):
        kw, kb = jax.random.split(k)
        params.append(
            {
                "W": jax.random.normal(kw, (n_out, n_in), dtype=jnp.float32).astype(dtype),
                "b": jax.random.normal(kb, (n_out,), dtype=jnp.float32).astype(dtype),
            }
        )
    return tuple(params)


OPTIMIZERS = {
    "adam": lambda: optax.adam(1e-3),
    "sgd_momentum": lambda: optax.sgd(1e-2, momentum=0.9),
    "chain_clip_adamw": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)),
}


def trained_state(optimizer: str) -> dict[str, Any]:
    """A state after two optimiser steps, so that counters and moments are not zeros."""
    opt = OPTIMIZERS[optimizer]()
    params = make_params(jax.random.PRNGKey(0))
    opt_state = opt.init(params)
    for i in range(2):
        grads = jax.tree_util.tree_map(lambda p, i=i: (p * (i + 2)).astype(p.dtype), params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return {
        "params": params,
        "opt_state": opt_state,
        "epoch": 7,
        "key": jax.random.key(42),
        "raw_key": jax.random.PRNGKey(43),
        "config": {
            "sizes": [3, 4, 5, 2],
            "lr": 0.001,
            "neg_zero": -0.0,
            "big": 2**70,
            "name": "run ü ∂",
            "flags": {"shuffle": True, "seed": None, "nested": {"t": (1, 2.5)}},
        },
        "history": np.arange(6, dtype=np.float32).reshape(2, 3),
    }


def template_state(optimizer: str) -> dict[str, Any]:
    """A freshly initialised state of the same structure (what resuming passes as ``like``)."""
    opt = OPTIMIZERS[optimizer]()
    params = jax.tree_util.tree_map(jnp.zeros_like, make_params(jax.random.PRNGKey(1)))
    return {
        "params": params,
        "opt_state": opt.init(params),
        "epoch": 0,
        "key": jax.random.key(0),
        "raw_key": jax.random.PRNGKey(0),
        "config": trained_state(optimizer)["config"],
        "history": np.zeros((2, 3), np.float32),
    }


def assert_params_are_tuple_of_dicts_of_jax_arrays(params: Any) -> None:
    assert type(params) is tuple and len(params) == 3
    for layer in params:
        assert type(layer) is dict and set(layer) == {"W", "b"}
        assert all(isinstance(v, jax.Array) for v in layer.values())


@pytest.fixture
def saved(tmp_path: Any) -> tuple[str, dict[str, Any], bytes]:
    """A checkpoint file, the state it holds and its bytes."""
    state = trained_state("adam")
    path = save_checkpoint(tmp_path / CHECKPOINT_NAME, state)
    with open(path, "rb") as f:
        return path, state, f.read()


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("like", ["none", "full", "partial"])
def test_state_round_trips_bitwise(tmp_path: Any, optimizer: str, like: str) -> None:
    state = trained_state(optimizer)
    path = save_checkpoint(tmp_path / "ckpt.fnn", state)
    assert path == os.fspath(tmp_path / "ckpt.fnn")
    template = template_state(optimizer)
    if like == "partial":
        template = {"params": template["params"], "opt_state": template["opt_state"]}
    loaded = load_checkpoint(path, like=None if like == "none" else template)

    assert list(loaded) == list(state)  # insertion order of the entries is kept too
    assert_tree_identical(loaded, state)
    assert_params_are_tuple_of_dicts_of_jax_arrays(loaded["params"])
    assert type(loaded["opt_state"]) is type(state["opt_state"])
    assert type(loaded["epoch"]) is int and loaded["epoch"] == 7
    assert loaded["config"] == state["config"]
    assert type(loaded["history"]) is np.ndarray
    # The values are the saved ones, not the template's zeros.
    assert float(jnp.abs(loaded["params"][0]["W"]).sum()) > 0
    # Keys keep working as keys and give the same random numbers as the saved ones.
    np.testing.assert_array_equal(
        jax.random.normal(loaded["key"], (3,)), jax.random.normal(state["key"], (3,))
    )
    np.testing.assert_array_equal(
        jax.random.normal(loaded["raw_key"], (3,)), jax.random.normal(state["raw_key"], (3,))
    )


def test_adam_state_comes_back_as_optax_types_without_like(saved: Any) -> None:
    path, state, _ = saved
    loaded = load_checkpoint(path)
    adam, empty = loaded["opt_state"]
    assert type(adam) is optax.ScaleByAdamState and type(empty) is optax.EmptyState
    assert adam.count.dtype == jnp.int32 and int(adam.count) == 2
    assert_tree_identical(adam.mu, state["opt_state"][0].mu)
    # The restored state drives the optimiser exactly like the original.
    opt = optax.adam(1e-3)
    grads = jax.tree_util.tree_map(jnp.ones_like, state["params"])
    want, _ = opt.update(grads, state["opt_state"], state["params"])
    got, _ = opt.update(grads, loaded["opt_state"], loaded["params"])
    assert_tree_identical(got, want)


def test_other_typed_key_implementation_round_trips(tmp_path: Any) -> None:
    state = {
        "params": (),
        "opt_state": (),
        "epoch": 0,
        "keys": jax.random.split(jax.random.key(3, impl="rbg"), 4),
    }
    loaded = load_checkpoint(save_checkpoint(tmp_path, state))
    assert_tree_identical(loaded, state)
    assert str(jax.random.key_impl(loaded["keys"])) == "rbg"


def _enable_x64(on: bool) -> Any:
    """``jax.enable_x64`` where it exists (jax >= 0.7), else its older experimental spelling."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(on)
    from jax.experimental import disable_x64, enable_x64  # pragma: no cover

    return enable_x64() if on else disable_x64()  # pragma: no cover


def test_float64_round_trips_with_x64_and_refuses_to_truncate_without(tmp_path: Any) -> None:
    with _enable_x64(True):
        x = jnp.asarray([np.pi, -0.0, np.nan], dtype=jnp.float64)
        state = {"params": ({"W": x},), "opt_state": (), "epoch": 1, "i": jnp.int64(2**40)}
        path = save_checkpoint(tmp_path, state)
        assert_tree_identical(load_checkpoint(path), state)
    with _enable_x64(False):
        with pytest.raises(CheckpointError, match="jax_enable_x64") as info:
            load_checkpoint(path)
        assert path in str(info.value)


def test_numpy_and_python_leaves_keep_their_types(tmp_path: Any) -> None:
    state = {
        "params": (),
        "opt_state": None,
        "epoch": 3,
        "np64": np.array([1.5, np.nan], dtype=np.float64),  # NumPy arrays never touch JAX
        "scalar": np.float16(2.5),
        "flag": np.bool_(True),
        "floats": [float("nan"), float("-inf"), -0.0, 1e-310],
        "z": 1 + 2j,
        "od": collections.OrderedDict([("z", 1), ("a", 2)]),
        "ints": {3: "three", 1: "one"},
    }
    loaded = load_checkpoint(save_checkpoint(tmp_path, state))
    assert_tree_identical(loaded, state)
    assert type(loaded["od"]) is collections.OrderedDict and list(loaded["od"]) == ["z", "a"]
    assert loaded["opt_state"] is None and loaded["ints"] == {3: "three", 1: "one"}
    assert list(loaded["ints"]) == [3, 1]


def test_unimported_namedtuple_comes_back_as_an_equivalent_namedtuple(tmp_path: Any) -> None:
    Foreign = collections.namedtuple("Foreign", ["count", "trace"], module="no_such_module_fnn")
    state = {"params": (), "opt_state": Foreign(jnp.int32(4), jnp.ones(2)), "epoch": 0}
    loaded = load_checkpoint(save_checkpoint(tmp_path, state))["opt_state"]
    assert type(loaded) is not Foreign and type(loaded).__name__ == "Foreign"
    assert loaded._fields == ("count", "trace")
    assert_leaf_identical(loaded.count, state["opt_state"].count)
    assert_leaf_identical(loaded.trace, state["opt_state"].trace)
    # With a template the original class comes back.
    like = {"opt_state": Foreign(jnp.int32(0), jnp.zeros(2))}
    restored = load_checkpoint(os.path.join(tmp_path, CHECKPOINT_NAME), like=like)
    assert type(restored["opt_state"]) is Foreign


@jax.tree_util.register_pytree_node_class
class Box:
    """A custom pytree node with static metadata."""

    def __init__(self, value: Any, label: str) -> None:
        self.value, self.label = value, label

    def tree_flatten(self) -> tuple[tuple[Any], str]:
        return (self.value,), self.label

    @classmethod
    def tree_unflatten(cls, label: str, children: tuple[Any]) -> Box:
        return cls(children[0], label)


def test_custom_pytree_nodes_need_like_to_come_back(tmp_path: Any) -> None:
    state = {"params": (), "opt_state": Box(jnp.arange(3, dtype=jnp.int32), "m"), "epoch": 0}
    path = save_checkpoint(tmp_path, state)
    generic = load_checkpoint(path)["opt_state"]
    assert type(generic) is tuple and len(generic) == 1
    assert_leaf_identical(generic[0], state["opt_state"].value)
    like = {"opt_state": Box(jnp.zeros(3, jnp.int32), "m")}
    restored = load_checkpoint(path, like=like)["opt_state"]
    assert type(restored) is Box and restored.label == "m"
    assert_leaf_identical(restored.value, state["opt_state"].value)


def test_directory_path_uses_the_default_name(tmp_path: Any) -> None:
    state = trained_state("sgd_momentum")
    path = save_checkpoint(tmp_path, state)
    assert path == os.path.join(tmp_path, CHECKPOINT_NAME)
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]
    assert_tree_identical(load_checkpoint(tmp_path), state)


def test_file_starts_with_magic_and_version(saved: Any) -> None:
    _, _, data = saved
    magic, version, header_len, payload_len = PREFIX.unpack_from(data)
    assert magic == MAGIC and version == FORMAT_VERSION
    assert len(data) == DATA_START + header_len + payload_len
    header = json.loads(data[DATA_START : DATA_START + header_len])
    assert header["format"] == "fnn-checkpoint"
    assert [r["path"] for r in header["leaves"]][:2] == [
        "['config']['big']",
        "['config']['flags']['nested']['t'][0]",
    ]


# --------------------------------------------------------------------------------------------
# Templates that do not fit and states that cannot be saved
# --------------------------------------------------------------------------------------------


def test_like_that_does_not_match_is_refused(saved: Any) -> None:
    path, _, _ = saved
    template = template_state("adam")
    wrong_dtype = dict(
        template, params=jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), template["params"])
    )
    with pytest.raises(CheckpointError, match="does not match the template") as info:
        load_checkpoint(path, like=wrong_dtype)
    assert path in str(info.value) and "float32" in str(info.value)

    wrong_shape = dict(template, history=np.zeros((3, 2), np.float32))
    with pytest.raises(CheckpointError, match=r"\['history'\]"):
        load_checkpoint(path, like=wrong_shape)

    sgd = {"opt_state": template_state("sgd_momentum")["opt_state"]}
    with pytest.raises(CheckpointError, match="does not match the template"):
        load_checkpoint(path, like=sgd)

    with pytest.raises(CheckpointError, match="no saved entries"):
        load_checkpoint(path, like={"params": template["params"], "step": 0})


@pytest.mark.parametrize(
    ("state", "error", "match"),
    [
        ([1, 2], TypeError, "must be a dict"),
        ({"params": (), "epoch": 0}, ValueError, "opt_state"),
        ({"params": (), "opt_state": (), "epoch": 0, "x": object()}, TypeError, r"\['x'\]"),
        ({"params": (), "opt_state": (), "epoch": 0, "x": {(1, 2): 0}}, TypeError, "dict keys"),
        ({"params": (), "opt_state": (), "epoch": 0, "x": {1: 0, "a": 1}}, TypeError, "sorted"),
        ({"params": (), "opt_state": (), "epoch": 0, "x": np.array(["a"])}, TypeError, "dtype"),
    ],
)
def test_unsavable_states_are_refused_before_writing(
    tmp_path: Any, state: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        save_checkpoint(tmp_path / "ckpt.fnn", state)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


class _FailingFile:
    """Wraps a file object; its second ``write`` fails as on a full disk."""

    def __init__(self, f: Any) -> None:
        self._f, self._writes = f, 0

    def write(self, data: bytes) -> int:
        self._writes += 1
        if self._writes == 2:
            self._f.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _FailingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _fail_replace(*args: object, **kwargs: object) -> None:
    raise OSError(errno.EIO, "replace failed")


def _fail_fsync(fd: int) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("failure", ["replace", "fsync", "write"])
def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp_files(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    old = trained_state("adam")
    path = save_checkpoint(tmp_path, old)
    with open(path, "rb") as f:
        old_bytes = f.read()
    new = dict(old, epoch=8, params=jax.tree_util.tree_map(jnp.zeros_like, old["params"]))

    real_fdopen = os.fdopen
    with monkeypatch.context() as m:
        if failure == "replace":
            m.setattr(os, "replace", _fail_replace)
            expected: type[BaseException] = OSError
        elif failure == "fsync":
            m.setattr(os, "fsync", _fail_fsync)
            expected = KeyboardInterrupt
        else:
            m.setattr(os, "fdopen", lambda *a, **k: _FailingFile(real_fdopen(*a, **k)))
            expected = OSError
        with pytest.raises(expected):
            save_checkpoint(path, new)

    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]
    with open(path, "rb") as f:
        assert f.read() == old_bytes
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 7
    assert_tree_identical(loaded, old)
    # And a later save that works replaces it.
    save_checkpoint(path, new)
    assert load_checkpoint(path)["epoch"] == 8
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]


def test_failed_first_save_leaves_nothing(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "replace", _fail_replace)
    with pytest.raises(OSError, match="replace failed"):
        save_checkpoint(tmp_path, trained_state("adam"))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Damaged and foreign files
# --------------------------------------------------------------------------------------------


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_truncated_files_are_refused(saved: Any) -> None:
    path, _, data = saved
    _, _, header_len, _ = PREFIX.unpack_from(data)
    cuts = [0, 1, 5, len(MAGIC), 12, PREFIX.size, DATA_START - 1, DATA_START]
    cuts += [DATA_START + header_len // 2, DATA_START + header_len]  # header only
    cuts += [len(data) // 2, len(data) - 1]
    assert len(set(cuts)) == len(cuts) and max(cuts) < len(data)
    for cut in cuts:
        _write(path, data[:cut])
        with pytest.raises(CheckpointError, match="truncated") as info:
            load_checkpoint(path)
        assert path in str(info.value), cut


def test_flipped_bytes_fail_the_checksum(saved: Any) -> None:
    path, _, data = saved
    _, _, header_len, _ = PREFIX.unpack_from(data)
    positions = [
        PREFIX.size,  # in the stored digest
        DATA_START + 10,  # in the header
        DATA_START + header_len + 1,  # at the start of the payload
        len(data) // 2,  # in the middle
        len(data) - 1,  # the last byte
    ]
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        _write(path, bytes(damaged))
        with pytest.raises(CheckpointError, match="checksum mismatch") as info:
            load_checkpoint(path)
        assert path in str(info.value), pos


def test_trailing_data_is_refused(saved: Any) -> None:
    path, _, data = saved
    _write(path, data + b"\x00")
    with pytest.raises(CheckpointError, match="trailing data") as info:
        load_checkpoint(path)
    assert path in str(info.value)


def test_unknown_version_is_refused(saved: Any) -> None:
    path, _, data = saved
    _write(path, data[:8] + struct.pack("<I", FORMAT_VERSION + 1) + data[12:])
    with pytest.raises(CheckpointError, match="unsupported format version 2") as info:
        load_checkpoint(path)
    assert path in str(info.value)


@pytest.mark.parametrize("kind", ["random", "text", "npz", "short"])
def test_foreign_files_are_refused(tmp_path: Any, kind: str) -> None:
    path = os.fspath(tmp_path / "other.bin")
    if kind == "random":
        data = np.random.default_rng(0).bytes(1000)
        assert not data.startswith(MAGIC[:1])
        _write(path, data)
    elif kind == "text":
        _write(path, b'{"params": [1, 2, 3], "epoch": 3}\n')
    elif kind == "npz":
        with open(path, "wb") as f:
            np.savez(f, W=np.ones((2, 2), np.float32))
    else:
        _write(path, b"x")
    with pytest.raises(CheckpointError, match="not an fnn checkpoint") as info:
        load_checkpoint(path)
    assert path in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.path == path


def test_missing_file_raises_file_not_found(tmp_path: Any) -> None:
    path = os.fspath(tmp_path / "nope.fnn")
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(path)
    assert path in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(tmp_path)  # a directory without a checkpoint in it
    assert os.path.join(tmp_path, CHECKPOINT_NAME) in str(info.value)


# --------------------------------------------------------------------------------------------
# Random pytrees
# --------------------------------------------------------------------------------------------


class Pair(NamedTuple):
    first: Any
    second: Any


def _dtypes() -> list[np.dtype]:
    names = ["float32", "bfloat16", "float16", "int32", "uint32", "bool", "int8", "uint8"]
    names += ["complex64"]
    if jax.config.jax_enable_x64:
        names += ["float64", "int64", "uint64", "complex128"]
    return [np.dtype(jnp.dtype(n)) for n in names]


@st.composite
def array_leaves(draw: st.DrawFn) -> Any:
    """Arrays of any bits (NaN payloads, subnormals), 0-d and zero-size ones included."""
    dtype = draw(st.sampled_from(_dtypes()))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.frombuffer(draw(st.binary(min_size=nbytes, max_size=nbytes)), np.uint8).copy()
    if dtype == np.bool_:
        raw %= 2
    arr = raw.view(dtype).reshape(shape)
    where = draw(st.sampled_from(["jax", "numpy", "numpy_scalar"]))
    if where == "jax":
        return jnp.asarray(arr)
    if where == "numpy_scalar" and arr.size > 0:
        return arr.reshape(-1)[0]
    return arr


leaves = st.one_of(
    array_leaves(),
    st.none(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=4),
    st.just(jax.random.key(5)),
)
pytrees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=3), children, max_size=3),
        st.builds(Pair, children, children),
    ),
    max_leaves=8,
)


@settings(deadline=None, derandomize=True, max_examples=20, database=None)
@given(params=pytrees, opt_state=pytrees, extra=pytrees, epoch=st.integers(0, 10**6))
def test_random_pytrees_round_trip_bitwise(
    params: Any, opt_state: Any, extra: Any, epoch: int
) -> None:
    state = {"params": params, "opt_state": opt_state, "epoch": epoch, "extra": extra}
    with tempfile.TemporaryDirectory() as directory:
        path = save_checkpoint(directory, state)
        assert_tree_identical(load_checkpoint(path), state)
        assert_tree_identical(load_checkpoint(path, like=state), state)
        assert os.listdir(directory) == [CHECKPOINT_NAME]
