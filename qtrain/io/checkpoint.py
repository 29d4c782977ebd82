"""HDF5 checkpoints: the whole run state in one file, written atomically, checksummed, no pickles.

Layout (``docs/hdf5-schema.md`` documents every dataset): a nested dict of arrays and scalars
becomes groups and datasets. Every array *and every scalar* is a dataset with HDF5's fletcher32
checksum filter (scalars as 1-element arrays), so a flipped byte anywhere in the data is caught on
load; strings (the resolved config) are stored as uint8 datasets for the same reason. Root
attributes carry descriptive metadata only (format, versions, creation time).

Writing goes to ``NAME.tmp`` in the same directory, is flushed and fsynced, then renamed, so a
crash never leaves a half-written file under the real name.

Whole-file digest (format 3): the file starts with a 512-byte HDF5 user block, which the HDF5
library skips (h5dump and h5py read the file as usual). qtrain writes into it, after the HDF5 part
is closed, ``DIGEST_MAGIC``, the file's size and the SHA-256 of every byte after the user block;
the rest of the block is zeros. A reader checks all of that *before HDF5 parses anything*, so a
damaged byte anywhere (HDF5's own bookkeeping included: object headers, attributes, datatypes,
B-trees, which fletcher32 does not cover and whose damage once crashed, hung or silently changed
what was read) is a one-line ``CheckpointError``, and ``--resume auto`` falls back to the next
older checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from qtrain.io.disk_errors import write_error
from qtrain.io.guarded_hdf5 import FLETCHER32, UntrustedItem, catalogue
from qtrain.memory import MemoryBoundError

FORMAT = "qtrain-checkpoint"
VERSION = 3  # 2: no generator states (counter-based Philox); 3: the whole-file digest in the user block
USERBLOCK = 512  # bytes before the HDF5 superblock (HDF5's smallest user block)
DIGEST_MAGIC = b"qtrain checkpoint sha256\n"
_DIGEST_LINE = re.compile(rb"^size (\d{1,20})\nsha256 ([0-9a-f]{64})\n$")
NAME = re.compile(r"^step-(\d{7,})\.h5$")


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or does not fit the run."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}.h5"


def _to_array(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, bool):
        return np.array([value], dtype=np.bool_)
    if isinstance(value, int):
        return np.array([value], dtype=np.int64)
    if isinstance(value, float):
        return np.array([value], dtype=np.float64)
    if isinstance(value, str):
        return np.frombuffer(value.encode(), dtype=np.uint8)
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def _write(group: h5py.Group, tree: dict) -> None:
    for key, value in tree.items():
        if value is None:
            continue
        if isinstance(value, dict):
            _write(group.create_group(key), value)
            continue
        arr = _to_array(value)
        kind = (
            "str"
            if isinstance(value, str)
            else "scalar"
            if not isinstance(value, (torch.Tensor, np.ndarray))
            else "array"
        )
        zero_dim = arr.ndim == 0  # a 0-d tensor (BatchNorm's num_batches_tracked): HDF5 cannot
        arr = arr.reshape(1) if zero_dim else arr  # chunk or checksum a scalar dataset
        if arr.size:
            ds = group.create_dataset(key, data=arr, chunks=arr.shape, fletcher32=True)
        else:
            ds = group.create_dataset(key, data=arr)
        ds.attrs["kind"] = kind
        if zero_dim:
            ds.attrs["ndim"] = 0
        if kind == "scalar":
            ds.attrs["type"] = type(value).__name__


_SCALAR_DTYPES = {"int": np.dtype(np.int64), "float": np.dtype(np.float64), "bool": np.dtype(np.bool_)}
_ITEM_ATTRIBUTES = {"kind", "type", "ndim"}


def _text_attribute(ds, name: str, where: str):
    value = ds.attrs.get(name)
    if value is not None and not isinstance(value, str):
        raise CheckpointError(f"{where}: attribute {name!r} is {value!r}, not text")
    return value


def _read_item(ds, where: str):
    """One dataset as ``_write`` stored it, after checking that its attributes, dtype and shape
    are those of its ``kind``: an array, a scalar (``type`` int, float or bool, one element of
    int64, float64 or bool: an "int" stored as 15.7 is refused, not truncated) or UTF-8 text."""
    odd = set(ds.attrs) - _ITEM_ATTRIBUTES
    if odd:
        raise CheckpointError(f"{where}: attribute {sorted(odd)[0]!r}, which qtrain never writes")
    kind = _text_attribute(ds, "kind", where) or "array"
    dtype, shape = ds.dtype, ds.shape
    if kind == "str":
        if dtype != np.uint8 or len(shape) != 1:
            raise CheckpointError(f"{where}: text must be a 1-D uint8 dataset, found {dtype} {list(shape)}")
    elif kind == "scalar":
        t = _text_attribute(ds, "type", where)
        if t not in _SCALAR_DTYPES:
            raise CheckpointError(f"{where}: a scalar of type {t!r} (int, float or bool expected)")
        if dtype != _SCALAR_DTYPES[t] or shape != (1,):
            raise CheckpointError(
                f"{where}: a {t} scalar must be one {_SCALAR_DTYPES[t]} element, found {dtype} {list(shape)}"
            )
    elif kind == "array":
        if dtype.names is not None or not shape:
            raise CheckpointError(f"{where}: an array must be an N-D array of numbers, found {dtype} {shape}")
    else:
        raise CheckpointError(f"{where}: kind {kind!r} (array, scalar or str expected)")
    ndim = ds.attrs.get("ndim")
    if ndim is not None and (
        kind != "array" or not isinstance(ndim, np.integer) or ndim != 0 or shape != (1,)
    ):
        raise CheckpointError(f"{where}: attribute ndim={ndim!r} on a {kind} of shape {list(shape)}")
    try:
        arr = ds[()]
    except OSError as exc:
        raise CheckpointError(f"dataset {where} fails its checksum ({exc})") from exc
    if kind == "str":
        try:
            return bytes(arr).decode()
        except UnicodeDecodeError:
            raise CheckpointError(f"{where}: not UTF-8 text") from None
    if kind == "scalar":
        return {"int": int, "float": float, "bool": bool}[t](arr[0])
    arr = np.array(arr)
    return torch.from_numpy(arr.reshape(()) if ndim is not None else arr)


def _read(f: h5py.File, what: str) -> dict:
    """The nested dict ``_write`` stored, read through the guarded walk (no links, no external or
    virtual storage, no filter but fletcher32, nothing declared that the file does not store, all
    of it within memory) and with every item checked against its kind."""
    cat = catalogue(f, frozenset({FLETCHER32}), what)
    out: dict = {}

    def node(path: str) -> dict:
        tree = out
        for part in path.strip("/").split("/")[:-1]:
            tree = tree.setdefault(part, {})
        return tree

    for where in cat.groups:
        node(where)[where.rsplit("/", 1)[1]] = {}
    for where, ds in cat.datasets.items():
        node(where)[where.rsplit("/", 1)[1]] = _read_item(ds, where)
    return out


def write_checkpoint(path: Path, tree: dict, meta: dict) -> Path:
    """Write ``tree`` atomically to ``path``; ``meta`` becomes root attributes.

    The HDF5 image is built in memory, sealed with its digest, then written with plain file I/O,
    so a full disk is an ``OSError`` (ENOSPC) naming the file (HDF5 itself reports it as
    unrelated RuntimeErrors), and the temporary file is removed on any failure."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=USERBLOCK) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = VERSION
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for k, v in meta.items():
            f.attrs[k] = str(v) if isinstance(v, str) else v  # numpy str_ has no HDF5 conversion
        _write(f, tree)
    image = bytearray(buffer.getbuffer())
    body = memoryview(image)[USERBLOCK:]
    block = DIGEST_MAGIC + f"size {len(image)}\nsha256 {hashlib.sha256(body).hexdigest()}\n".encode()
    del body
    image[:USERBLOCK] = block.ljust(USERBLOCK, b"\0")
    try:
        with open(tmp, "wb") as f:
            f.write(image)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(exc, path, "writing checkpoint") from None
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def _digest(f, size: int) -> str:
    """SHA-256 of the bytes after the user block of the open file ``f`` (``size`` bytes long)."""
    h = hashlib.sha256()
    f.seek(USERBLOCK)
    while chunk := f.read(1 << 22):
        h.update(chunk)
    if f.tell() != size:
        raise CheckpointError(f"the file changed size while it was read ({f.tell()} != {size})")
    return h.hexdigest()


def _seal(path: Path) -> None:
    """Write the digest block into the (zeroed) user block of a closed HDF5 file."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        block = DIGEST_MAGIC + f"size {size}\nsha256 {_digest(f, size)}\n".encode()
        f.seek(0)
        f.write(block.ljust(USERBLOCK, b"\0"))
        f.flush()


def verify_file(path: Path) -> None:
    """The whole-file check that runs before HDF5 opens ``path``: the user block's magic, size and
    SHA-256, and zeros after them. Raises CheckpointError naming what does not match."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        block = f.read(USERBLOCK)
        if not block.startswith(DIGEST_MAGIC):
            if block.startswith(b"\x89HDF\r\n\x1a\n"):
                raise CheckpointError(
                    f"{path}: an HDF5 file without qtrain's file digest (not a qtrain checkpoint, or "
                    f"one written before checkpoint format {VERSION})"
                )
            raise CheckpointError(f"{path}: not a qtrain checkpoint (no digest block at the start)")
        text, _, padding = block[len(DIGEST_MAGIC) :].partition(b"\n\0")
        m = _DIGEST_LINE.match(text + b"\n")
        if m is None or padding.strip(b"\0"):
            raise CheckpointError(f"{path}: the digest block is damaged")
        if int(m.group(1)) != size:
            raise CheckpointError(
                f"{path}: the file is {size} bytes, its digest block says {int(m.group(1))}"
            )
        if _digest(f, size) != m.group(2).decode():
            raise CheckpointError(f"{path}: damaged (its SHA-256 does not match the digest block)")


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """Load and verify: the whole-file digest (before HDF5 parses anything), every dataset's
    checksum, the format, and the parameter fingerprint. Returns (tree, root attributes). Raises
    CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        verify_file(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        with h5py.File(path, "r") as f:
            tree = _read(f, str(path))  # the guarded walk checks the root attributes too
            meta = dict(f.attrs)
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a qtrain checkpoint (format {meta.get('format')!r})")
            version = meta.get("format_version")
            if not isinstance(version, np.integer) or version != VERSION:
                raise CheckpointError(f"{path}: checkpoint format version {version!r} unsupported")
    except CheckpointError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise CheckpointError(f"{path}: {exc}") from None
    except (UntrustedItem, MemoryBoundError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (OSError, KeyError, ValueError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: unreadable HDF5 file ({exc})") from exc
    from qtrain.io.run_dir import params_sha256

    params = tree.get("params")
    if not isinstance(params, torch.Tensor) or params_sha256(params) != meta.get("params_sha256"):
        raise CheckpointError(f"{path}: parameters do not match the recorded params_sha256")
    return tree, meta


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``directory``, newest first."""
    if not Path(directory).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(directory).iterdir() if (m := NAME.match(p.name))]
    return sorted(found, reverse=True)


def prune(directory: Path, keep: int, mine=None) -> None:
    """Delete all but the newest ``keep`` checkpoints among those ``mine(step)`` accepts (default:
    all), and stale temporary files; other checkpoints are never touched."""
    ours = [(s, p) for s, p in list_checkpoints(directory) if mine is None or mine(s)]
    for _, p in ours[keep:]:
        p.unlink(missing_ok=True)
    for p in Path(directory).glob("*.h5.tmp"):
        p.unlink(missing_ok=True)


def newest_valid(directory: Path, warn, read=read_checkpoint) -> tuple[dict, dict, Path]:
    """The newest checkpoint in ``directory`` that ``read`` (default ``read_checkpoint``; a run's
    resume passes ``engine.checkpoint_files.load_run_checkpoint``) loads and verifies; the others
    are skipped with a warning. Raises CheckpointError when there is none."""
    candidates = list_checkpoints(directory)
    if not candidates:
        raise CheckpointError(f"--resume auto: no checkpoints in {directory}")
    for _, path in candidates:
        try:
            tree, meta = read(path)
            return tree, meta, path
        except CheckpointError as exc:
            warn(f"skipping damaged checkpoint: {exc}")
    raise CheckpointError(f"--resume auto: none of the {len(candidates)} checkpoints in {directory} verifies")
