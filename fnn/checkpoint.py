"""Checkpoints: one self-checking file holding a pytree of arrays and a JSON header.

A checkpoint holds the leaves of a pytree (a [`TrainState`][fnn.training.TrainState], say) bit
for bit, and a JSON dict of your own (``meta``: the run's config, say). As equinox's
``tree_deserialise_leaves(path, like)``, loading fills a template ``like`` of the same
structure (a freshly initialised state), after checking every leaf's key path, shape and
dtype; nothing is pickled or run. [`read_meta`][fnn.checkpoint.read_meta] reads only the dict,
so the template can be built from it. Leaves may be JAX or NumPy arrays of any numeric dtype
(``ml_dtypes`` included), typed PRNG keys and scalars; each comes back as the template's type.

Format 2: ``MAGIC`` (8 bytes) | version (uint32 LE) | header length H (uint64 LE) | payload
length P (uint64 LE) | SHA-256 (32 bytes) of all the rest | header (H bytes of JSON: ``meta``
and each leaf's key path, dtype, shape, offset) | payload (the leaves' little-endian bytes).
Writes are atomic ([`write_atomic`][fnn.checkpoint.write_atomic]). Reading refuses anything
but a regular file and checks the magic, the version, the lengths against the file's size
(before reading it) and the checksum, raising [`CheckpointError`][fnn.checkpoint.CheckpointError].
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import stat
import struct
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CHECKPOINT_NAME", "FORMAT_VERSION", "MAGIC", "CheckpointError", "load_checkpoint",
           "read_meta", "remove_stale_temporaries", "save_checkpoint", "write_atomic"]

CHECKPOINT_NAME = "checkpoint.fnn"
"""Default file name of a run's checkpoint; a directory given as ``path`` gets this name."""

MAGIC = b"FNNCKPT\x00"
"""First 8 bytes of every checkpoint file."""

FORMAT_VERSION = 2
"""Version of the on-disk format that this module writes and reads."""

_PREFIX = struct.Struct("<8sIQQ")  # magic, version, header length, payload length
_DATA_START = _PREFIX.size + hashlib.sha256().digest_size
_MAX_HEADER = 1 << 28


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted or used: not a regular file, truncated,
    corrupted, not a checkpoint, of another format version, or not matching the template."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {problem}")


def _resolve(path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    return os.path.join(path, CHECKPOINT_NAME) if os.path.isdir(path) else path


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _leaf_bytes(x: Any, where: str) -> tuple[dict[str, Any], bytes]:
    record: dict[str, Any] = {"path": where}
    if _is_key(x):
        record["key_impl"] = str(jax.random.key_impl(x))
        x = jax.random.key_data(x)
    arr = np.asarray(x)
    if arr.dtype.kind not in "biufcV" or arr.dtype.fields is not None:
        raise TypeError(f"cannot save the leaf at {where} of dtype {arr.dtype}")
    record.update(dtype=arr.dtype.name, shape=list(arr.shape))
    return record, np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()


def _fsync_directory(directory: str) -> None:
    with contextlib.suppress(OSError):  # some platforms cannot open or fsync directories
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(path: str | os.PathLike[str], tree: Any,
                    meta: dict[str, Any] | None = None) -> str:
    """Atomically write the leaves of ``tree`` and the JSON dict ``meta`` to ``path`` (a file,
    or a directory: then ``path/CHECKPOINT_NAME``); returns the path written.

    Raises ``TypeError`` or ``ValueError`` (nothing written) when a leaf or ``meta`` cannot
    be stored, ``OSError`` when writing fails (the previous file unchanged, no temporary left).
    """
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict or None, got {type(meta).__name__}")
    path = _resolve(path)
    records, chunks, offset = [], [], 0
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        record, data = _leaf_bytes(leaf, jax.tree_util.keystr(key_path))
        record.update(offset=offset, nbytes=len(data))
        records.append(record)
        chunks.append(data)
        offset += len(data)
    header = json.dumps({"format": "fnn-checkpoint", "meta": {} if meta is None else meta,
                         "leaves": records},
                        separators=(",", ":"), allow_nan=False).encode()
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), offset)
    digest = hashlib.sha256(prefix)
    for chunk in (header, *chunks):
        digest.update(chunk)
    return write_atomic(path, [prefix, digest.digest(), header, *chunks])


def write_atomic(path: str | os.PathLike[str], chunks: list[bytes]) -> str:
    """Write ``path`` whole or not at all: a temporary file in its folder, flushed and
    fsync-ed, ``os.replace``-d onto ``path``, the folder fsync-ed. On any failure the
    temporary file is removed and what was at ``path`` stays as it was. Returns ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):  # mkstemp makes the file private to its owner
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    return path


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary files that writes of the checkpoint ``path`` killed midway left.

    Returns the paths removed. Call it when no other process writes that checkpoint.
    """
    path = _resolve(path)
    pattern = os.path.join(glob.escape(os.path.dirname(os.path.abspath(path))),
                           f".{glob.escape(os.path.basename(path))}.*.tmp")
    removed = []
    for tmp in glob.glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
            removed.append(tmp)
    return removed


def _read_verified(path: str) -> tuple[dict[str, Any], bytes]:
    """The header and the payload of ``path``, after every check on the file as a whole."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(2, "no checkpoint file", path) from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(path, "not a regular file")
        head = f.read(_DATA_START)
        if head[: len(MAGIC)] != MAGIC[: len(head)] or not head:
            raise CheckpointError(path, "not an fnn checkpoint (its first bytes are not the "
                                  "magic)" if head else "truncated: the file is empty")
        if len(head) < _DATA_START:
            raise CheckpointError(path, f"truncated: {len(head)} bytes, shorter than the "
                                  f"{_DATA_START}-byte file header")
        _, version, header_len, payload_len = _PREFIX.unpack_from(head)
        if version != FORMAT_VERSION:
            raise CheckpointError(path, f"format version {version}; this fnn reads version "
                                  f"{FORMAT_VERSION} (retrain, or load it with the fnn that "
                                  "wrote it)")
        expected = _DATA_START + header_len + payload_len
        if info.st_size != expected or header_len > _MAX_HEADER:
            what = "truncated" if info.st_size < expected else "corrupted"
            raise CheckpointError(path, f"{what}: {info.st_size} bytes, the header says "
                                  f"{expected}")
        rest = f.read(expected - _DATA_START)
    digest = hashlib.sha256(head[: _PREFIX.size])
    digest.update(rest)
    if len(rest) != expected - _DATA_START or digest.digest() != head[_PREFIX.size:]:
        raise CheckpointError(path, "checksum mismatch: the file is corrupted")
    try:
        header = json.loads(rest[:header_len].decode("utf-8"))
        if not (isinstance(header, dict) and header.get("format") == "fnn-checkpoint"
                and isinstance(header.get("meta"), dict) and isinstance(header["leaves"], list)):
            raise ValueError("not an fnn checkpoint header")
    except (UnicodeDecodeError, ValueError, KeyError, RecursionError) as e:
        raise CheckpointError(path, f"malformed header: {e}") from None
    return header, rest[header_len:]


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta`` dict saved with the checkpoint ``path`` (a file, or a run directory).

    Raises:
      FileNotFoundError: no file; CheckpointError: the file fails a check (see the module).
    """
    return _read_verified(_resolve(path))[0]["meta"]


def _restore(record: Any, payload: bytes, want: Any, where: str) -> Any:
    """The stored leaf ``record`` as the type of the template leaf ``want``."""
    impl = str(jax.random.key_impl(want)) if _is_key(want) else None
    like = np.asarray(jax.random.key_data(want) if impl else want)
    shape, offset, nbytes = tuple(record["shape"]), record["offset"], record["nbytes"]
    if (record["dtype"], shape, record.get("key_impl")) != (like.dtype.name, like.shape, impl):
        stored = f"{record['dtype']}{list(shape)}" + (" key" if "key_impl" in record else "")
        raise ValueError(f"the leaf at {where} is {stored}, the template's {like.dtype}"
                         f"{list(like.shape)}" + (f" {impl} key" if impl else ""))
    if not (type(offset) is int and nbytes == like.nbytes and 0 <= offset
            and offset + nbytes <= len(payload)):
        raise ValueError(f"bad extent of the leaf at {where}")
    arr = np.frombuffer(payload, like.dtype.newbyteorder("<"), like.size, offset)
    arr = arr.astype(like.dtype).reshape(shape)  # a copy: native byte order, writable
    if impl:
        return jax.random.wrap_key_data(jnp.asarray(arr), impl=impl)
    if isinstance(want, jax.Array):
        return jnp.asarray(arr)
    return arr if isinstance(want, np.ndarray) else type(want)(arr[()])


def load_checkpoint(path: str | os.PathLike[str], like: Any) -> Any:
    """The pytree saved to ``path`` (a file, or a directory holding ``CHECKPOINT_NAME``), in
    the structure of the template ``like`` (say a fresh ``TrainState``: its leaves give the
    expected key paths, shapes, dtypes and types, not values).

    Raises ``FileNotFoundError`` without a file and ``CheckpointError`` when the file fails a
    check or does not match ``like``.
    """
    path = _resolve(path)
    header, payload = _read_verified(path)
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    wanted = [jax.tree_util.keystr(p) for p, _ in flat]
    try:
        stored = [r["path"] for r in header["leaves"]]
        if stored != wanted:
            diff = sorted(set(stored) ^ set(wanted))[:3] or "(the same paths, in another order)"
            raise ValueError(f"{len(stored)} stored leaves, {len(wanted)} in the template; "
                             f"differing: {diff}")
        leaves = [_restore(r, payload, leaf, w)
                  for r, (_, leaf), w in zip(header["leaves"], flat, wanted, strict=True)]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"does not match the template: {e}") from None
    return jax.tree_util.tree_unflatten(treedef, leaves)
