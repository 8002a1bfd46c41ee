"""Tests of fnn.checkpoint: bitwise round trips, atomic writes and refusal of damaged files."""

from __future__ import annotations

import errno
import functools
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

import fnn
from fnn.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    MAGIC,
    CheckpointError,
    load_checkpoint,
    read_meta,
    remove_stale_temporaries,
    save_checkpoint,
)

# Layout constants of the format (see the module docstring): magic, version, two lengths, digest.
PREFIX = struct.Struct("<8sIQQ")
DATA_START = PREFIX.size + 32
META = {"config": {"lr": 0.001, "sizes": [3, 4, 5, 2], "name": "run ü ∂", "seed": None},
        "run_id": "abc"}


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def assert_tree_identical(a: Any, b: Any) -> None:
    """Same structure and leaves of the same type, dtype, shape and bits (NaN payloads too)."""
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b, (tree_a, tree_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert type(x) is type(y), (type(x), type(y))
        if _is_key(x):
            assert str(jax.random.key_impl(x)) == str(jax.random.key_impl(y))
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert (x.dtype, x.shape) == (y.dtype, y.shape)
        assert x.tobytes() == y.tobytes()


OPTIMIZERS = {
    "adam": lambda: optax.adam(1e-3),
    "sgd_momentum": lambda: optax.sgd(1e-2, momentum=0.9),
    "chain_clip_adamw": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)),
}
NET = fnn.MLP((3, 4, 5, 2))


@functools.cache
def _optimizer(name: str) -> optax.GradientTransformation:
    return OPTIMIZERS[name]()  # one object per name: jit's static arguments hash by identity


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def train_state(optimizer: str, seed: int = 0, dtypes=(jnp.float32, jnp.bfloat16, jnp.float16)):
    """A TrainState with params in three dtypes, after two optimizer steps (when seed != 0),
    as one program (eagerly, 78 small programs for adam)."""
    opt = _optimizer(optimizer)
    key = jax.random.key(seed)
    params = fnn.init(key, NET)
    params = tuple({k: v.astype(d) for k, v in layer.items()} for layer, d in zip(
        params, dtypes, strict=True))
    state = fnn.init_state(key, NET, opt, params)
    for i in range(2 if seed else 0):
        grads = jax.tree.map(lambda p, i=i: (p * (i + 2)).astype(p.dtype), state.params)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        state = state._replace(params=optax.apply_updates(state.params, updates),
                               opt_state=opt_state, epoch=state.epoch + 1)
    return state


@pytest.fixture
def saved(tmp_path: Any) -> tuple[str, Any, bytes]:
    """A checkpoint file, the state it holds and its bytes."""
    state = train_state("adam", seed=3)
    path = save_checkpoint(tmp_path / CHECKPOINT_NAME, state, META)
    with open(path, "rb") as f:
        return path, state, f.read()


# --------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_train_state_round_trips_bitwise(tmp_path: Any, optimizer: str) -> None:
    state = train_state(optimizer, seed=3)
    path = save_checkpoint(tmp_path, state, META)
    assert path == os.path.join(tmp_path, CHECKPOINT_NAME)  # a directory gets the default name
    template = train_state(optimizer, seed=0)  # same structure, other values
    loaded = load_checkpoint(tmp_path, like=template)
    assert_tree_identical(loaded, state)
    assert type(loaded) is fnn.TrainState and type(loaded.opt_state) is type(state.opt_state)
    assert read_meta(path) == META
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]


def test_other_key_implementations_round_trip(tmp_path: Any) -> None:
    tree = {"rbg": jax.random.key(7, impl="rbg"), "raw": jax.random.PRNGKey(8)}
    save_checkpoint(tmp_path, tree)
    assert_tree_identical(load_checkpoint(tmp_path, like=tree), tree)
    with pytest.raises(CheckpointError, match=r"\['rbg'\] is uint32\[4\] key, the template's "
                                              r"uint32\[2\] threefry2x32 key"):
        load_checkpoint(tmp_path, like={"rbg": jax.random.key(0), "raw": tree["raw"]})


def test_float64_round_trips_with_x64(tmp_path: Any, x64: None) -> None:
    tree = {"w": jnp.array([1 / 3, -0.0, np.nan]), "n": jnp.arange(3, dtype=jnp.int64)}
    save_checkpoint(tmp_path, tree)
    assert_tree_identical(load_checkpoint(tmp_path, like=tree), tree)


def test_leaves_come_back_as_the_template_types(tmp_path: Any) -> None:
    tree = {"np": np.arange(4, dtype=np.uint8), "np_scalar": np.float32(2.5), "int": 3,
            "float": float("-nan"), "bool": True, "jax": jnp.ones(2, jnp.bfloat16)}
    save_checkpoint(tmp_path, tree)
    assert_tree_identical(load_checkpoint(tmp_path, like=tree), tree)


def test_a_template_that_does_not_match_is_refused(saved: Any) -> None:
    path, state, _ = saved
    wrong = {
        "structure": (state._replace(best_params=None), "differing:"),
        "shape": (state._replace(key=jax.random.split(state.key, 2)), r"\.key is "),
        "dtype": (state._replace(epoch=jnp.zeros((), jnp.float32)), r"\.epoch is int32\[\], "
                                                                    r"the template's float32"),
        "key": (state._replace(epoch=jax.random.key(0)), r"\.epoch is int32\[\], the template's "
                                                         r"uint32\[2\] threefry2x32 key"),
    }
    for template, match in wrong.values():
        with pytest.raises(CheckpointError, match="does not match the template: .*" + match
                           ) as info:
            load_checkpoint(path, like=template)
        assert info.value.path == path


@pytest.mark.parametrize(
    "tree, meta, match",
    [
        ({"big": 2**70}, None, "cannot save the leaf at \\['big'\\]"),
        ({"text": "abc"}, None, "cannot save the leaf at \\['text'\\] of dtype <U3"),
        ({"obj": np.array([object()])}, None, "of dtype object"),
        ({"ok": np.ones(2)}, {"lr": float("nan")}, "Out of range float values"),
        ({"ok": np.ones(2)}, {"fn": print}, "not JSON serializable"),
    ],
)
def test_unsavable_trees_are_refused_before_writing(tmp_path, tree, meta, match) -> None:
    with pytest.raises((TypeError, ValueError, OverflowError), match=match):
        save_checkpoint(tmp_path, tree, meta)
    assert os.listdir(tmp_path) == []


class _FailingFile:
    def __init__(self, f):
        self._f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failure", ["replace", "fsync", "write"])
def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp_files(
    saved: Any, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    path, state, old_bytes = saved
    new = state._replace(epoch=state.epoch + 1)
    real_fdopen = os.fdopen
    with monkeypatch.context() as m:
        if failure == "replace":
            m.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "no")))
        elif failure == "fsync":
            m.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt))
        else:
            m.setattr(os, "fdopen", lambda *a, **k: _FailingFile(real_fdopen(*a, **k)))
        with pytest.raises(KeyboardInterrupt if failure == "fsync" else OSError):
            save_checkpoint(path, new)
    assert os.listdir(os.path.dirname(path)) == [CHECKPOINT_NAME]
    with open(path, "rb") as f:
        assert f.read() == old_bytes
    save_checkpoint(path, new)  # and a later save that works replaces it
    assert int(load_checkpoint(path, like=state).epoch) == int(state.epoch) + 1


def test_stale_temporaries_of_a_killed_write_are_removed(saved: Any) -> None:
    path, _, _ = saved
    folder = os.path.dirname(path)
    for name in (f".{CHECKPOINT_NAME}.x1y2.tmp", f".{CHECKPOINT_NAME}.zz.tmp"):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"half")
    with open(os.path.join(folder, "keep.tmp"), "wb") as f:
        f.write(b"not ours")
    assert len(remove_stale_temporaries(path)) == 2
    assert sorted(os.listdir(folder)) == [CHECKPOINT_NAME, "keep.tmp"]


# --------------------------------------------------------------------------------------------
# Damaged and foreign files


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_truncated_files_are_refused(saved: Any) -> None:
    path, state, data = saved
    _, _, header_len, _ = PREFIX.unpack_from(data)
    cuts = [0, 1, 5, len(MAGIC), 12, PREFIX.size, DATA_START - 1, DATA_START,
            DATA_START + header_len // 2, DATA_START + header_len, len(data) // 2, len(data) - 1]
    assert len(set(cuts)) == len(cuts) and max(cuts) < len(data)
    for cut in cuts:
        _write(path, data[:cut])
        for read in (read_meta, lambda p: load_checkpoint(p, like=state)):
            with pytest.raises(CheckpointError, match="truncated") as info:
                read(path)
            assert path in str(info.value), cut


def test_flipped_bytes_fail_the_checksum(saved: Any) -> None:
    path, state, data = saved
    _, _, header_len, _ = PREFIX.unpack_from(data)
    for pos in (PREFIX.size, DATA_START + 10, DATA_START + header_len + 1, len(data) // 2,
                len(data) - 1):
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        _write(path, bytes(damaged))
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            load_checkpoint(path, like=state)


def test_trailing_data_and_lying_lengths_are_refused(saved: Any) -> None:
    path, state, data = saved
    _write(path, data + b"\x00")
    with pytest.raises(CheckpointError, match=r"corrupted: .* the header says"):
        load_checkpoint(path, like=state)
    huge = PREFIX.pack(MAGIC, FORMAT_VERSION, 2**62, 2**62) + data[PREFIX.size:]
    _write(path, huge)  # nothing is read beyond what the file's size allows
    with pytest.raises(CheckpointError, match="truncated"):
        read_meta(path)


def test_other_versions_are_refused(saved: Any) -> None:
    path, state, data = saved
    for version in (1, FORMAT_VERSION + 1):
        _write(path, data[:8] + struct.pack("<I", version) + data[12:])
        with pytest.raises(CheckpointError, match=f"format version {version}; this fnn reads "
                                                  f"version {FORMAT_VERSION}"):
            load_checkpoint(path, like=state)


@pytest.mark.parametrize("kind", ["random", "text", "npz", "short"])
def test_foreign_files_are_refused(tmp_path: Any, kind: str) -> None:
    path = os.fspath(tmp_path / "other.bin")
    if kind == "random":
        _write(path, b"\x01" + np.random.default_rng(0).bytes(1000))
    elif kind == "text":
        _write(path, b'{"params": [1, 2, 3], "epoch": 3}\n')
    elif kind == "npz":
        with open(path, "wb") as f:
            np.savez(f, W=np.ones((2, 2), np.float32))
    else:
        _write(path, b"x")
    with pytest.raises(CheckpointError, match="not an fnn checkpoint") as info:
        read_meta(path)
    assert isinstance(info.value, ValueError) and info.value.path == path


def test_what_is_not_a_regular_file_is_refused_without_reading(tmp_path: Any) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block forever
    for path in (fifo, "/dev/zero", "/dev/null"):
        with pytest.raises(CheckpointError, match="not a regular file"):
            read_meta(path)


def test_missing_file_raises_file_not_found(tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.fnn"):
        read_meta(tmp_path / "nope.fnn")
    with pytest.raises(FileNotFoundError, match=CHECKPOINT_NAME):
        load_checkpoint(tmp_path, like={})  # a directory without a checkpoint in it


# --------------------------------------------------------------------------------------------
# Random pytrees


class Pair(NamedTuple):
    first: Any
    second: Any


DTYPES = [np.dtype(jnp.dtype(n)) for n in ("float32", "bfloat16", "float16", "int32", "uint32",
                                            "bool", "int8", "uint8", "complex64")]


@st.composite
def array_leaves(draw: st.DrawFn) -> Any:
    """Arrays of any bits (NaN payloads, subnormals), 0-d and zero-size ones included."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.frombuffer(draw(st.binary(min_size=nbytes, max_size=nbytes)), np.uint8).copy()
    if dtype == np.bool_:
        raw %= 2
    arr = raw.view(dtype).reshape(shape)
    where = draw(st.sampled_from(["jax", "numpy", "numpy_scalar"]))
    if where == "jax":
        return jnp.asarray(arr)
    return arr.reshape(-1)[0] if where == "numpy_scalar" and arr.size else arr


leaves = st.one_of(array_leaves(), st.none(), st.integers(-(2**63), 2**63 - 1),
                   st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.just(jax.random.key(5)))
pytrees = st.recursive(leaves, lambda children: st.one_of(
    st.lists(children, max_size=3), st.lists(children, max_size=3).map(tuple),
    st.dictionaries(st.text(max_size=3), children, max_size=3),
    st.builds(Pair, children, children)), max_leaves=8)


@settings(deadline=None, derandomize=True, max_examples=20, database=None)
@given(tree=pytrees)
def test_random_pytrees_round_trip_bitwise(tree: Any) -> None:
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(directory, tree, {"n": 1})
        assert_tree_identical(load_checkpoint(directory, like=tree), tree)
        assert os.listdir(directory) == [CHECKPOINT_NAME]
