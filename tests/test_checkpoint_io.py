"""Checkpoint files on their own: atomic writes, checksums, pruning, no pickles."""

import h5py
import pytest
import torch

from qtrain.io.checkpoint import (
    CheckpointError,
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
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        start = ds.id.get_chunk_info(0).byte_offset
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
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint(tmp_path / "a.h5")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(CheckpointError, match="unreadable HDF5"):
        read_checkpoint(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f.attrs["format"] = "something else"
    with pytest.raises(CheckpointError, match="not a qtrain checkpoint"):
        read_checkpoint(tmp_path / "y.h5")
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
    assert len(warnings) == 1 and "step-0000020.h5" in warnings[0] and "checksum" in warnings[0]


def test_loading_never_unpickles(monkeypatch, tmp_path):
    import pickle

    write(tmp_path / "a.h5")

    def forbidden(*a, **k):
        raise AssertionError("unpickling during checkpoint load")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    read_checkpoint(tmp_path / "a.h5")
