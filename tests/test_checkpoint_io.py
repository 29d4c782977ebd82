"""Checkpoint files on their own: atomic writes, the whole-file digest, checksums, pruning, no
pickles, and single-bit flips anywhere in a real checkpoint."""

import random

import h5py
import pytest
import torch

from qtrain.io.checkpoint import (
    USERBLOCK,
    CheckpointError,
    _seal,
    checkpoint_name,
    list_checkpoints,
    newest_valid,
    prune,
    read_checkpoint,
    write_checkpoint,
)
from qtrain.io.run_dir import params_sha256


def tree(step=3, n=1000):
    p = torch.randn(n, generator=torch.Generator().manual_seed(step))
    return {
        "step": step,
        "params": p,
        "config": "seed: 0\n",
        "server": {"algorithm": {"m": torch.ones(n)}, "error": None, "lr": 0.5, "flag": True},
        "workers": {"1": {"x": torch.zeros(0)}},
    }


def write(path, step=3):
    t = tree(step)
    return write_checkpoint(path, t, {"params_sha256": params_sha256(t["params"]), "workers": 1})


def flip_byte_in(path, dataset, offset=10):
    """Flip one bit of ``dataset``'s stored chunk. The chunk is found by its bytes: HDF5 before
    1.14.4 reports chunk addresses without the user block in front of them."""
    with h5py.File(path, "r") as f:
        _, chunk = f[dataset].id.read_direct_chunk((0,) * f[dataset].ndim)
    raw = path.read_bytes()
    start = raw.find(chunk)
    assert start > 0 and raw.find(chunk, start + 1) < 0, "the chunk's bytes are not unique in the file"
    with open(path, "r+b") as fh:
        fh.seek(start + offset)
        b = fh.read(1)
        fh.seek(start + offset)
        fh.write(bytes([b[0] ^ 0x01]))


def test_round_trip_types(tmp_path):
    write(tmp_path / "a.h5")
    t, meta = read_checkpoint(tmp_path / "a.h5")
    assert (
        t["step"] == 3
        and t["config"] == "seed: 0\n"
        and t["server"]["lr"] == 0.5
        and t["server"]["flag"] is True
    )
    assert "error" not in t["server"]  # None is simply absent
    assert torch.equal(t["params"], tree()["params"]) and t["workers"]["1"]["x"].numel() == 0
    assert not list(tmp_path.glob("*.tmp")), "the temporary file is renamed away"


@pytest.mark.parametrize("dataset", ["params", "server/algorithm/m", "step", "config"])
def test_a_flipped_byte_in_any_dataset_is_rejected(tmp_path, dataset):
    write(tmp_path / "a.h5")
    flip_byte_in(tmp_path / "a.h5", dataset, offset=0)
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        read_checkpoint(tmp_path / "a.h5")
    _seal(tmp_path / "a.h5")  # a digest that agrees: the datasets' own checksums still catch it
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint(tmp_path / "a.h5")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(CheckpointError, match="not a qtrain checkpoint"):
        read_checkpoint(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f.attrs["format"] = "something else"
    with pytest.raises(CheckpointError, match="an HDF5 file without qtrain's file digest"):
        read_checkpoint(tmp_path / "y.h5")
    with h5py.File(tmp_path / "z.h5", "w", userblock_size=USERBLOCK) as f:
        f.attrs["format"] = "something else"
    _seal(tmp_path / "z.h5")
    with pytest.raises(CheckpointError, match="not a qtrain checkpoint"):
        read_checkpoint(tmp_path / "z.h5")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.h5")


def test_a_crash_mid_write_never_leaves_a_file_under_the_real_name(tmp_path):
    bad = tree()
    bad["server"]["oops"] = object()  # fails after some datasets are already written
    with pytest.raises(TypeError):
        write_checkpoint(tmp_path / checkpoint_name(5), bad, {"params_sha256": "x"})
    assert not (tmp_path / checkpoint_name(5)).exists()
    prune(tmp_path, keep=3)
    assert not list(tmp_path.glob("*.tmp")), "prune removes stale temporary files"


def test_prune_and_newest_valid_skips_damaged(tmp_path):
    for step in (5, 10, 15, 20):
        write(tmp_path / checkpoint_name(step), step)
    prune(tmp_path, keep=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 15, 10]
    flip_byte_in(tmp_path / checkpoint_name(20), "params")
    warnings = []
    t, _, path = newest_valid(tmp_path, warnings.append)
    assert t["step"] == 15 and path.name == checkpoint_name(15)
    assert len(warnings) == 1 and "step-0000020.h5" in warnings[0] and "SHA-256" in warnings[0]


def test_loading_never_unpickles(monkeypatch, tmp_path):
    import pickle

    write(tmp_path / "a.h5")

    def forbidden(*a, **k):
        raise AssertionError("unpickling during checkpoint load")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    read_checkpoint(tmp_path / "a.h5")


def test_single_bit_flips_anywhere_are_rejected(real_checkpoint, tmp_path):
    """Once 6 of 23,300 flips in HDF5's bookkeeping crashed the reader, 4 hung it and 243 loaded
    different contents without an error. Now the digest is checked before HDF5 parses anything:
    every bit of the digest text, one bit of every byte of the rest of the user block and of the
    first 4 KiB of HDF5 (superblock, root object header) and of the last 512 bytes, and 1,000
    random bits elsewhere; ``make soak`` sweeps every byte."""
    data = real_checkpoint.read_bytes()
    original, _ = read_checkpoint(real_checkpoint)
    rng = random.Random(0)
    every_byte = [*range(128, USERBLOCK + 4096), *range(len(data) - 512, len(data))]
    bits = [*range(8 * 128), *(8 * i + i % 8 for i in every_byte)]
    bits += rng.sample(range(8 * (USERBLOCK + 4096), 8 * (len(data) - 512)), 1000)
    target = tmp_path / real_checkpoint.name
    for bit in bits:
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        target.write_bytes(damaged)
        with pytest.raises(CheckpointError):
            read_checkpoint(target)
    target.write_bytes(data)
    again, _ = read_checkpoint(target)
    assert torch.equal(again["params"], original["params"])
