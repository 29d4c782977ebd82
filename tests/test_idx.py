"""The idx reader (MNIST / Fashion-MNIST files) and the datasets on it."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtrain.config import load_config
from qtrain.data.idx import FASHION_MNIST_DIR, read_idx
from qtrain.data.registry import load_dataset

CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def idx_bytes(a: np.ndarray, code: int) -> bytes:
    return bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(list(CODES)),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    zipped=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip(tmp_path_factory, dtype, shape, zipped, seed):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(shape) * 50).astype(dtype)
    raw = idx_bytes(a, CODES[dtype])
    path = tmp_path_factory.mktemp("idx") / ("a.gz" if zipped else "a")
    path.write_bytes(gzip.compress(raw) if zipped else raw)
    b = read_idx(path)
    assert b.shape == a.shape and np.array_equal(b, a.astype(dtype.newbyteorder("=")))


def test_damaged_files_are_refused_naming_the_file(tmp_path):
    good = idx_bytes(np.arange(6, dtype="u1").reshape(2, 3), 0x08)
    cases = {
        "magic": (b"\x01" + good[1:], "not an idx file"),
        "type": (good[:2] + b"\x07" + good[3:], "not an idx file"),
        "short": (good[:-1], "needs 6 bytes of values, the file has 5"),
        "header": (good[:6], "cut short"),
    }
    for name, (raw, message) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(ValueError, match=message) as err:
            read_idx(tmp_path / name)
        assert name in str(err.value)
    (tmp_path / "zip").write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(ValueError, match="damaged gzip"):
        read_idx(tmp_path / "zip")


def write_mnist_layout(directory: Path, n_train: int, n_test: int, train_labels: int | None = None):
    rng = np.random.default_rng(0)
    for prefix, n, m in (("train", n_train, train_labels or n_train), ("t10k", n_test, n_test)):
        images = rng.integers(0, 256, size=(n, 4, 5), dtype=np.uint8)
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images, 0x08)))
        (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(m, dtype="u1") % 3, 0x08))


def test_idx_dataset_shapes_scaling_and_mismatch(tmp_path):
    write_mnist_layout(tmp_path, 12, 6)
    ds = load_dataset(load_config(None, ["data.name=idx", f"data.path={tmp_path}"]).data, 0)
    assert ds.x_train.shape == (12, 1, 4, 5) and ds.x_test.shape == (6, 1, 4, 5) and ds.outputs == 3
    assert float(ds.x_train.min()) >= -1.0 and float(ds.x_train.max()) <= 1.0  # (p/255 - 0.5) / 0.5
    write_mnist_layout(tmp_path, 12, 6, train_labels=11)
    with pytest.raises(ValueError, match=r"train images \(12, 4, 5\) and labels \(11,\) do not match"):
        load_dataset(load_config(None, ["data.name=idx", f"data.path={tmp_path}"]).data, 0)
    with pytest.raises(ValueError, match="needs data.path"):
        load_dataset(load_config(None, ["data.name=idx"]).data, 0)


def test_fashion_mnist_from_the_debian_package():
    if not Path(FASHION_MNIST_DIR).is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's dataset-fashion-mnist (make sysdeps as root)")
        pytest.skip("needs Debian's dataset-fashion-mnist (make sysdeps as root)")
    ds = load_dataset(load_config(None, ["data.name=fashion-mnist"]).data, 0)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert (
        ds.outputs == 10 and abs(float(ds.x_train.mean())) < 0.01 and abs(float(ds.x_train.std()) - 1) < 0.01
    )
    assert np.bincount(ds.y_train.numpy()).tolist() == [6000] * 10


def test_fashion_mnist_missing_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(load_config(None, ["data.name=fashion-mnist", f"data.path={tmp_path / 'none'}"]).data, 0)
