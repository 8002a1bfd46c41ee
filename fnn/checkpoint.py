"""Checkpoints of a training run: one self-checking file holding an arbitrary pytree state.

A checkpoint stores a ``state`` dict with at least the entries

* ``"params"``: the network parameters, a tuple of dicts ``{"W": (n_out, n_in), "b": (n_out,)}``
  of JAX arrays (any floating dtype, bfloat16 included);
* ``"opt_state"``: an optax optimiser state, i.e. nested NamedTuples (``ScaleByAdamState``,
  ``TraceState``, ``EmptyState``, ...) and tuples whose leaves are arrays (int32 step counters,
  moment estimates shaped like the parameters);
* ``"epoch"``: a Python ``int``;

and any further entries, e.g. ``"key"`` (a raw ``uint32[2]`` key from ``jax.random.PRNGKey`` or a
typed key from ``jax.random.key``), ``"config"`` (a JSON-able dict), ``"history"`` or ``"step"``.

What is stored
--------------
Leaves are stored bit for bit as little-endian raw bytes together with their dtype name and
shape, so every dtype round-trips exactly: bool, (u)int8/16/32/64, float16, bfloat16, float32,
float64, complex64/128 and the float8/int4 types of ``ml_dtypes``. JAX arrays come back as JAX
arrays, NumPy arrays and scalars as NumPy arrays and scalars, typed PRNG keys as typed keys
(their ``jax.random.key_data`` and implementation name are stored and rebuilt with
``jax.random.wrap_key_data``), and Python ``bool``/``int``/``float``/``complex``/``str`` leaves as
themselves (floats bit for bit, NaN payloads included). 64-bit JAX arrays only load with
``jax_enable_x64`` on; JAX would silently truncate them otherwise, so that raises instead.

The tree structure is stored as well, in a small JSON description of its own: ``dict`` (insertion
order kept), ``list``, ``tuple``, ``None``, NamedTuples (by module, qualified name and field names)
and other registered pytree nodes (by type name and children). Nothing is pickled: loading a
checkpoint never runs code from the file. This is why ``load_checkpoint`` has a ``like``
argument:

* ``load_checkpoint(path, like=template)`` (what resuming a run does, with a freshly initialised
  state as template) takes the containers from ``template`` and the leaves from the file, so
  every type, optax NamedTuples and custom pytree nodes included, comes back exactly; the
  leaves' key paths, shapes and dtypes must match the template's. ``template`` may also hold only
  some top-level entries (say ``{"params": ..., "opt_state": ...}``); the others are then rebuilt
  as without a template.
* ``load_checkpoint(path)`` (inspecting a run) rebuilds dicts, lists, tuples and ``None`` from the
  description. A NamedTuple comes back as its own class when its module is already imported and
  the class has the stored fields (optax states do, once ``optax`` is imported); otherwise as an
  equivalent ``collections.namedtuple`` of the same name and fields. The module is never imported
  by the loader. Other custom pytree nodes come back as a tuple of their children.

On-disk format (version 1)
--------------------------
``MAGIC`` (8 bytes) | version (uint32 LE) | header length H (uint64 LE) | payload length P
(uint64 LE) | SHA-256 (32 bytes) of everything before it and after it | header (H bytes of UTF-8
JSON: tree description and per-leaf dtype, shape, offset, size and key path) | payload (P bytes:
the leaves' raw bytes, one after the other).

Writes are atomic: the file is written to a temporary file in the same directory, flushed and
fsync-ed, moved onto ``path`` with ``os.replace`` and the directory is fsync-ed; if anything fails,
the temporary file is removed and a previous checkpoint at ``path`` stays as it was. Reading
checks the magic, the version, the length and the checksum before it trusts any byte, and raises
``CheckpointError`` (a ``ValueError``) naming the file and the problem otherwise.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import math
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT_VERSION",
    "MAGIC",
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.fnn"
"""Default file name of a run's checkpoint; a directory given as ``path`` gets this name."""

MAGIC = b"FNNCKPT\x00"
"""First 8 bytes of every checkpoint file."""

FORMAT_VERSION = 1
"""Version of the on-disk format that this module writes (and the newest it reads)."""

REQUIRED_KEYS = ("params", "opt_state", "epoch")
"""Entries that every saved state must have."""

_PREFIX = struct.Struct("<8sIQQ")  # magic, version, header length, payload length
_DIGEST_SIZE = hashlib.sha256().digest_size
_DATA_START = _PREFIX.size + _DIGEST_SIZE

_DTYPE_NAMES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e4m3b11fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "int4",
    "uint4",
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted or used: truncated, corrupted, not a checkpoint,
    of an unknown format version, or not matching the template given to ``load_checkpoint``.

    Attributes:
        path: the file concerned.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {problem}")


def _known_dtypes() -> dict[str, np.dtype]:
    known = {}
    for name in _DTYPE_NAMES:
        try:
            known[name] = np.dtype(jnp.dtype(name))
        except TypeError:  # an older ml_dtypes without this type
            continue
    return known


_DTYPES = _known_dtypes()
_WIDE_DTYPES = frozenset({"int64", "uint64", "float64", "complex128"})


def _resolve(path: str | os.PathLike[str]) -> str:
    """``path`` itself, or ``path/CHECKPOINT_NAME`` when ``path`` is a directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.join(path, CHECKPOINT_NAME)
    return path


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _is_typed_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _encode_key(k: Any) -> Any:
    if type(k) is str:
        return ["s", k]
    if type(k) is int:
        return ["i", k]
    raise TypeError(f"dict keys must be str or int to be saved, got {type(k).__name__}: {k!r}")


def _decode_key(k: Any) -> Any:
    tag, value = k
    if (tag == "s" and type(value) is str) or (tag == "i" and type(value) is int):
        return value
    raise ValueError(f"bad dict key {k!r}")


def _array_record(arr: np.ndarray, kind: str) -> tuple[dict[str, Any], bytes]:
    name = arr.dtype.name
    if name not in _DTYPES or np.dtype(_DTYPES[name]) != arr.dtype.newbyteorder("="):
        raise TypeError(f"cannot save arrays of dtype {arr.dtype}")
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return {"kind": kind, "dtype": name, "shape": list(arr.shape)}, data


def _scalar_record(x: Any) -> dict[str, Any] | None:
    """The record of a Python scalar leaf, or None if ``x`` is none."""
    if type(x) is bool:
        return {"kind": "bool", "value": x}
    if type(x) is int:
        return {"kind": "int", "value": str(x)}
    if type(x) is float:  # the IEEE bits, so that NaN payloads and signs survive
        return {"kind": "float", "value": struct.pack("<d", x).hex()}
    if type(x) is complex:
        return {"kind": "complex", "value": struct.pack("<dd", x.real, x.imag).hex()}
    if type(x) is str:
        return {"kind": "str", "value": x}
    return None


class _Encoder:
    """Walks a pytree in JAX's leaf order, describing its structure and collecting its leaves."""

    def __init__(self) -> None:
        self.leaves: list[Any] = []
        self.records: list[dict[str, Any]] = []
        self.chunks: list[bytes] = []
        self.offset = 0

    def leaf(self, x: Any, where: str) -> dict[str, Any]:
        if _is_typed_key(x):
            record, data = _array_record(np.asarray(jax.random.key_data(x)), "key")
            record["impl"] = str(jax.random.key_impl(x))
        elif isinstance(x, jax.Array):
            record, data = _array_record(np.asarray(x), "jax")
        elif isinstance(x, np.ndarray):
            record, data = _array_record(x, "numpy")
        elif isinstance(x, np.generic):
            record, data = _array_record(np.asarray(x), "numpy_scalar")
        else:
            scalar = _scalar_record(x)
            if scalar is None:
                raise TypeError(f"cannot save leaf of type {type(x).__qualname__} at {where}")
            record, data = scalar, b""
        if "dtype" in record:
            record["offset"] = self.offset
            record["nbytes"] = len(data)
            self.chunks.append(data)
            self.offset += len(data)
        index = len(self.records)
        self.records.append(record)
        self.leaves.append(x)
        return {"t": "leaf", "i": index}

    def node(self, x: Any, where: str) -> dict[str, Any]:
        if x is None:
            return {"t": "none"}
        if type(x) is dict or type(x) is collections.OrderedDict:
            keys = list(x)
            # JAX orders the leaves of a dict by sorted key, those of an OrderedDict by position.
            try:
                order = sorted(keys) if type(x) is dict else keys
            except TypeError:
                raise TypeError(f"the keys of the dict at {where} cannot be sorted") from None
            done = {k: self.node(x[k], f"{where}[{k!r}]") for k in order}
            return {
                "t": "dict" if type(x) is dict else "ordereddict",
                "keys": [_encode_key(k) for k in keys],
                "items": [done[k] for k in keys],
            }
        if type(x) is list or type(x) is tuple:
            items = [self.node(v, f"{where}[{i}]") for i, v in enumerate(x)]
            return {"t": type(x).__name__, "items": items}
        if _is_namedtuple(x):
            cls = type(x)
            items = [self.node(v, f"{where}.{f}") for f, v in zip(cls._fields, x, strict=True)]
            return {
                "t": "namedtuple",
                "module": cls.__module__,
                "name": cls.__qualname__,
                "fields": list(cls._fields),
                "items": items,
            }
        if isinstance(x, jax.Array | np.ndarray | np.generic) or _scalar_record(x) is not None:
            return self.leaf(x, where)
        # Any other registered pytree node: flatten it by one level, children in JAX's order.
        children, _ = jax.tree_util.tree_flatten(x, is_leaf=lambda y: y is not x)
        if len(children) == 1 and children[0] is x:  # not a node: a leaf of unknown type
            return self.leaf(x, where)
        cls = type(x)
        items = [self.node(v, f"{where}<{i}>") for i, v in enumerate(children)]
        return {"t": "node", "type": f"{cls.__module__}:{cls.__qualname__}", "items": items}


def _serialise(state: Mapping[str, Any]) -> list[bytes]:
    """The checkpoint file's contents, as a list of byte strings to write one after the other."""
    encoder = _Encoder()
    tree = encoder.node(state, "state")
    with_paths, _ = jax.tree_util.tree_flatten_with_path(state)
    if len(with_paths) != len(encoder.leaves) or any(
        leaf is not mine for (_, leaf), mine in zip(with_paths, encoder.leaves, strict=False)
    ):  # cannot happen for the node types handled above; never write a file that won't load
        raise TypeError("state has a pytree structure that fnn.checkpoint cannot describe")
    for record, (key_path, _) in zip(encoder.records, with_paths, strict=True):
        record["path"] = jax.tree_util.keystr(key_path)
    header = json.dumps(
        {"format": "fnn-checkpoint", "tree": tree, "leaves": encoder.records},
        separators=(",", ":"),
        allow_nan=False,
    ).encode("utf-8")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), encoder.offset)
    digest = hashlib.sha256(prefix)
    digest.update(header)
    for chunk in encoder.chunks:
        digest.update(chunk)
    return [prefix, digest.digest(), header, *encoder.chunks]


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _fsync_directory(directory: str) -> None:
    """Make a rename inside ``directory`` durable (where the platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> str:
    """Atomically write ``state`` to the checkpoint file ``path``.

    Args:
        path: the file to write (replaced if it exists), or a directory, in which case the file
            is ``path/CHECKPOINT_NAME``. Its directory must exist.
        state: a dict with at least ``"params"``, ``"opt_state"`` and ``"epoch"`` (see the module
            docstring) and any further entries. Its leaves must be JAX arrays (typed PRNG keys
            included), NumPy arrays or scalars, or Python ``bool``/``int``/``float``/``complex``/
            ``str``; its nodes dicts (with ``str`` or ``int`` keys), lists, tuples, ``None``,
            NamedTuples or other registered pytree nodes.

    Returns:
        The path of the file written.

    Raises:
        TypeError: ``state`` is not a dict or holds something that cannot be stored; nothing is
            written then.
        ValueError: a required entry is missing; nothing is written then.
        OSError: writing failed; ``path`` then still holds its previous checkpoint (if any), and
            no temporary file is left behind.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"state lacks the required entries {missing}")
    path = _resolve(path)
    chunks = _serialise(state)  # everything that can fail on the contents fails here

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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _read_verified(path: str) -> tuple[dict[str, Any], memoryview]:
    """The header and the payload of the checkpoint file ``path``, after all integrity checks."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(e.errno, "no checkpoint file", path) from None
    size = len(data)
    if size == 0:
        raise CheckpointError(path, "truncated: the file is empty (0 bytes)")
    if data[: len(MAGIC)] != MAGIC[: min(size, len(MAGIC))]:
        raise CheckpointError(path, "not an fnn checkpoint (its first bytes are not the magic)")
    if size < _DATA_START:
        raise CheckpointError(
            path, f"truncated: {size} bytes, shorter than the {_DATA_START}-byte file header"
        )
    _, version, header_len, payload_len = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            path, f"unsupported format version {version} (this fnn reads {FORMAT_VERSION})"
        )
    expected = _DATA_START + header_len + payload_len
    if size < expected:
        raise CheckpointError(path, f"truncated: {size} of {expected} bytes")
    if size > expected:
        raise CheckpointError(
            path, f"corrupted: {size - expected} bytes of trailing data after {expected} bytes"
        )
    view = memoryview(data)
    digest = hashlib.sha256(view[: _PREFIX.size])
    digest.update(view[_DATA_START:])
    if digest.digest() != data[_PREFIX.size : _DATA_START]:
        raise CheckpointError(path, "checksum mismatch: the file is corrupted")
    try:
        header = json.loads(bytes(view[_DATA_START : _DATA_START + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(path, f"malformed header: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict) or header.get("format") != "fnn-checkpoint":
        raise CheckpointError(path, "malformed header: not an fnn checkpoint header")
    return header, view[_DATA_START + header_len :]


def _decode_array(record: dict[str, Any], payload: memoryview) -> np.ndarray:
    dtype = _DTYPES.get(record["dtype"])
    if dtype is None:
        raise ValueError(f"unknown dtype {record['dtype']!r}")
    shape = tuple(record["shape"])
    if not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"bad shape {record['shape']!r}")
    offset, nbytes = record["offset"], record["nbytes"]
    count = math.prod(shape)
    if (
        type(offset) is not int
        or type(nbytes) is not int
        or nbytes != count * dtype.itemsize
        or not 0 <= offset <= offset + nbytes <= len(payload)
    ):
        raise ValueError(f"bad extent of a {record['dtype']}{list(shape)} leaf")
    flat = np.frombuffer(payload, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
    return flat.astype(dtype).reshape(shape)  # astype copies: native order, writable, aligned


def _decode_leaf(record: dict[str, Any], payload: memoryview) -> Any:
    kind = record["kind"]
    value = record.get("value")
    if kind == "bool" and type(value) is bool:
        return value
    if kind == "int" and type(value) is str:
        return int(value)
    if kind == "float" and type(value) is str:
        return struct.unpack("<d", bytes.fromhex(value))[0]
    if kind == "complex" and type(value) is str:
        return complex(*struct.unpack("<dd", bytes.fromhex(value)))
    if kind == "str" and type(value) is str:
        return value
    if kind in ("jax", "key", "numpy", "numpy_scalar"):
        arr = _decode_array(record, payload)
        if kind == "numpy":
            return arr
        if kind == "numpy_scalar":
            return arr[()]
        if record["dtype"] in _WIDE_DTYPES and not jax.config.jax_enable_x64:
            raise _NeedsX64(record["dtype"])
        if kind == "key":
            impl = record["impl"]
            if type(impl) is not str:
                raise ValueError("bad PRNG key implementation name")
            return jax.random.wrap_key_data(jnp.asarray(arr), impl=impl)
        return jnp.asarray(arr)
    raise ValueError(f"bad leaf record of kind {kind!r}")


class _NeedsX64(Exception):
    pass


def _find_namedtuple(module: str, name: str, fields: list[str]) -> Callable[..., Any]:
    """The NamedTuple class ``module.name`` if already imported and fitting, else a stand-in."""
    obj: Any = sys.modules.get(module)
    for part in name.split("."):
        obj = getattr(obj, part, None)
    if (
        isinstance(obj, type)
        and issubclass(obj, tuple)
        and list(getattr(obj, "_fields", ())) == (fields)
    ):
        return obj
    short = name.rsplit(".", 1)[-1]
    return collections.namedtuple(short if short.isidentifier() else "Record", fields)


def _build(node: Any, leaves: list[Any]) -> Any:
    """The pytree that the stored description ``node`` describes, leaves taken from ``leaves``."""
    t = node["t"]
    if t == "leaf":
        i = node["i"]
        if type(i) is not int or not 0 <= i < len(leaves):
            raise ValueError(f"bad leaf index {i!r}")
        return leaves[i]
    if t == "none":
        return None
    items = [_build(child, leaves) for child in node["items"]]
    if t in ("dict", "ordereddict"):
        keys = [_decode_key(k) for k in node["keys"]]
        if len(keys) != len(items):
            raise ValueError("dict with unequal numbers of keys and values")
        return (dict if t == "dict" else collections.OrderedDict)(zip(keys, items, strict=True))
    if t == "list":
        return items
    if t in ("tuple", "node"):
        return tuple(items)
    if t == "namedtuple":
        fields = node["fields"]
        if not (isinstance(fields, list) and all(type(f) is str for f in fields)):
            raise ValueError("bad NamedTuple fields")
        if len(fields) != len(items):
            raise ValueError("NamedTuple with unequal numbers of fields and values")
        return _find_namedtuple(str(node["module"]), str(node["name"]), fields)(*items)
    raise ValueError(f"unknown node type {t!r}")


def _leaf_indices(node: Any) -> list[int]:
    if node["t"] == "leaf":
        return [node["i"]]
    if node["t"] == "none":
        return []
    return sorted(i for child in node["items"] for i in _leaf_indices(child))


def _restore_like(
    path: str,
    template: Any,
    prefix: Callable[[Any], Any],
    indices: list[int],
    records: list[dict[str, Any]],
    leaves: list[Any],
) -> Any:
    """``template``'s structure filled with the stored leaves ``indices``, after checking that
    their key paths (within ``prefix(template)``), shapes and dtypes agree."""
    with_paths, _ = jax.tree_util.tree_flatten_with_path(prefix(template))
    wanted = [jax.tree_util.keystr(p) for p, _ in with_paths]
    stored = [records[i]["path"] for i in indices]
    if wanted != stored:
        only_stored = sorted(set(stored) - set(wanted))[:3]
        only_wanted = sorted(set(wanted) - set(stored))[:3]
        raise CheckpointError(
            path,
            "does not match the template `like`: stored leaves "
            f"{only_stored or '(same set)'} vs template leaves {only_wanted or '(same set)'}"
            f" ({len(stored)} stored, {len(wanted)} in the template)",
        )
    out = []
    for (key_path, want), i in zip(with_paths, indices, strict=True):
        got = leaves[i]
        if hasattr(want, "shape") and hasattr(want, "dtype"):
            if (
                not hasattr(got, "shape")
                or tuple(got.shape) != tuple(want.shape)
                or got.dtype != want.dtype
            ):
                got_desc = f"{got.dtype}{list(got.shape)}" if hasattr(got, "shape") else repr(got)
                raise CheckpointError(
                    path,
                    f"does not match the template `like` at {jax.tree_util.keystr(key_path)}: "
                    f"stored {got_desc}, template {want.dtype}{list(want.shape)}",
                )
        out.append(got)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), out)


def load_checkpoint(path: str | os.PathLike[str], like: Any = None) -> dict[str, Any]:
    """Read the state dict saved by :func:`save_checkpoint` to ``path``.

    Args:
        path: the checkpoint file, or a directory holding ``CHECKPOINT_NAME``.
        like: optional template: a pytree of the saved state's structure (e.g. the state of a
            freshly initialised run), or a dict with only some of its top-level entries. Its
            containers are used for the result, so exact types come back; its leaves only give
            the expected key paths, shapes and dtypes. Without it (or for the entries it lacks)
            the structure is rebuilt from the file (see the module docstring).

    Returns:
        The saved state: ``params`` as the tuple of dicts of JAX arrays it was saved as,
        ``opt_state``, ``epoch`` and the other entries, every leaf bitwise equal to the saved one.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        CheckpointError: the file is empty or truncated, fails its checksum, is not an fnn
            checkpoint, has an unknown format version, holds 64-bit JAX arrays while
            ``jax_enable_x64`` is off, or does not match ``like``.
    """
    path = _resolve(path)
    header, payload = _read_verified(path)
    try:
        records = header["leaves"]
        leaves = [_decode_leaf(record, payload) for record in records]
        tree = header["tree"]
        generic = _build(tree, leaves)
        if not all(type(r.get("path")) is str for r in records):
            raise ValueError("leaf records without key paths")
    except _NeedsX64 as e:
        raise CheckpointError(
            path, f"holds {e} JAX arrays; enable jax_enable_x64 to load them bit for bit"
        ) from None
    except (
        KeyError,
        TypeError,
        ValueError,
        IndexError,
        AttributeError,
        RecursionError,
        struct.error,
    ) as e:
        raise CheckpointError(path, f"malformed header: {type(e).__name__}: {e}") from None
    if not isinstance(generic, dict):
        raise CheckpointError(path, "malformed header: the saved state is not a dict")
    if like is None:
        return generic
    if isinstance(like, dict):
        extra = [k for k in like if k not in generic]
        if extra:
            raise CheckpointError(
                path, f"does not match the template `like`: no saved entries {extra}"
            )
        result = dict(generic)
        keys = [_decode_key(k) for k in tree["keys"]]
        for key, child in zip(keys, tree["items"], strict=True):
            if key in like:
                result[key] = _restore_like(
                    path,
                    like[key],
                    lambda t, key=key: {key: t},
                    _leaf_indices(child),
                    records,
                    leaves,
                )
        return result
    restored = _restore_like(path, like, lambda t: t, list(range(len(leaves))), records, leaves)
    if not isinstance(restored, dict):
        raise CheckpointError(path, "does not match the template `like`: it is not a dict")
    return restored
