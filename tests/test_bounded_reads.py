"""Nothing reads without a bound (issue 22, deliverable 2): what a data file declares (an npz
member's size, an idx header's dimensions, a gzip stream's length, a libsvm feature index) is
checked against this rank's share of the memory available before anything is allocated, and a
refusal is one line naming the file. The bombs here are small (tens of MB expanded) and the
available memory is pretended to be 64 MiB, so the tests allocate nothing large."""

import gzip
import io
import struct
import zipfile

import numpy as np
import pytest

import qtrain.memory as memory
from qtrain.config import DataConfig
from qtrain.data.idx import read_idx
from qtrain.data.registry import load_dataset
from qtrain.memory import MemoryBoundError

EXPANDED = 96 << 20  # what each bomb expands to


@pytest.fixture
def little_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 << 20)
    monkeypatch.delenv("MPI_LOCALNRANKS", raising=False)


def _npy_header(shape, descr="|u1") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def test_an_npz_zip_bomb_is_refused_by_its_declared_size(tmp_path, little_memory):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x_train.npy", "w") as f:
            f.write(_npy_header((EXPANDED // 64, 64)))
            f.write(bytes(EXPANDED))
        for k in ("y_train", "x_test", "y_test"):
            b = io.BytesIO()
            np.save(b, np.zeros((4, 64) if k[0] == "x" else 4, np.uint8))
            z.writestr(f"{k}.npy", b.getvalue())
    assert path.stat().st_size < EXPANDED // 200
    with pytest.raises(MemoryBoundError, match=rf"data.path '{path}' \(its arrays declare \d+ bytes\) needs"):
        load_dataset(DataConfig(name="npz", path=str(path)), 0)


def _idx_header(shape) -> bytes:
    return b"\0\0\x08" + bytes([len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def test_an_idx_gzip_bomb_stops_at_its_header_and_the_header_must_fit(tmp_path, little_memory):
    shape = (EXPANDED // 784, 28, 28)
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(_idx_header(shape) + bytes(EXPANDED // 784 * 784)))
    with pytest.raises(MemoryBoundError, match=rf"idx file '{bomb}' \(shape \[{shape[0]}, 28, 28\]\) needs"):
        read_idx(bomb)
    # a stream longer than its header says is refused after the header's bytes, not inflated
    longer = tmp_path / "longer.gz"
    longer.write_bytes(gzip.compress(_idx_header((4, 2)) + bytes(8) + bytes(EXPANDED)))
    with pytest.raises(ValueError, match="the gzip stream holds more than the 8 bytes of values"):
        read_idx(longer)


def test_declared_dimensions_beyond_the_file_are_refused_before_any_allocation(tmp_path, little_memory):
    """A 226 KB file whose header declares 64 GiB."""
    path = tmp_path / "dims"
    path.write_bytes(_idx_header((1 << 16, 1 << 10, 1 << 10)) + bytes(226_000))
    with pytest.raises(ValueError, match=r"needs 68719476736 bytes of values, the file has 226000"):
        read_idx(path)


def test_libsvm_feature_indices_are_bounded(tmp_path, little_memory):
    huge = tmp_path / "huge.svm"
    huge.write_text("1 1:0.5 1000000000000:1\n0 2:1\n")  # once an OverflowError traceback
    with pytest.raises(ValueError, match=rf"{huge}: a feature index above 2147483647"):
        load_dataset(DataConfig(name="libsvm", path=str(huge)), 0)
    wide = tmp_path / "wide.svm"
    wide.write_text("1 1:0.5 1000000000:1\n0 2:1\n")  # fits 32 bits; dense it is 2 x 1e9 floats
    with pytest.raises(
        MemoryBoundError, match=r"data.path .* as a dense 2 x 1000000000 float32 matrix needs 7.5 GiB"
    ):
        load_dataset(DataConfig(name="libsvm", path=str(wide)), 0)


def test_text_and_files_of_any_loader_are_checked_by_their_size(tmp_path, little_memory):
    big = tmp_path / "big.txt"
    big.write_bytes(b"ab" * (2 << 20))  # 4 MiB of text: about 24 bytes of memory per byte
    with pytest.raises(MemoryBoundError, match=rf"data.path '{big}' \(4194304 bytes\) needs 96.0 MiB"):
        load_dataset(DataConfig(name="text", path=str(big), context=8), 0)


def test_the_plan_refuses_a_model_that_cannot_fit_with_the_numbers(monkeypatch):
    """A 1e9-parameter model once failed inside torch ("can't allocate memory: you tried to
    allocate 4054053940 bytes") with no estimate. The plan's estimate is checked first; here a
    85k-parameter MLP against a pretended 1 MiB."""
    from qtrain.config import load_config
    from qtrain.engine.memory_estimate import describe_estimate, estimate
    from qtrain.engine.simulator import simulate

    cfg = load_config("configs/default.yaml", ["model.hidden=[256,256]", "train.steps=1"])
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)
    monkeypatch.delenv("MPI_LOCALNRANKS", raising=False)
    with pytest.raises(MemoryBoundError) as info:
        simulate(cfg, 2, None, log=lambda line: None)
    message = str(info.value)
    assert message.startswith(
        "the simulator (2 workers and the server in one process, 85002 parameters) needs"
    )
    assert message.endswith("and this rank has 1.0 MiB available")
    # efficient-adam: a worker holds params, grads, m, v, its error buffer and a scratch vector;
    # the server its master, sum, scratch, error buffer and the model it evaluates
    from qtrain.engine.partition import Partition
    from qtrain.engine.setup import build_setup

    setup = build_setup(cfg, 2)
    part = Partition.build(85002, (512, 512), 1)
    worker, server = estimate(setup, part, 2)
    up = part.wire_bytes(setup.uplink.codec)
    assert worker == 4 * 85002 * 6 + 2 * up and server == 4 * 85002 * 5 + 3 * up
    assert "memory: each worker about 2.0 MiB, the server about 1.7 MiB" in describe_estimate(setup, part, 2)
