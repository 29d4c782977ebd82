"""One guarded reader for qtrain's HDF5 files (checkpoints and traces): what HDF5 may do when it
opens a crafted file is settled before any item is read.

A checkpoint's digest proves that its bytes are the ones its writer sealed, not who the writer
was: anyone can recompute a SHA-256. So every file is walked once, by its links alone, and refused
(one ``UntrustedItem`` line naming the item) when it holds anything qtrain never writes:

- a soft, external or user-defined link (an external link reads another file; soft links and
  hard links can form cycles);
- an object reachable from more than one place (a hard link: HDF5's reference count above 1);
- a dataset whose data lives outside the file (external storage: ``inspect --config`` once
  printed /etc/passwd) or in other files (a virtual dataset);
- a filter other than the ones the format allows (qtrain writes fletcher32 in checkpoints and no
  filter in traces), so no compressed dataset can expand: a gzip bomb is refused by its filter;
- a dataset that declares more bytes than the file stores for it (unallocated chunks read as the
  fill value: 2^40 declared rows in a 4 KB file), or a chunk above 64 MiB;
- a dataset whose stored data lies, in part, beyond the end of the file: a truncated file (a copy
  cut short, a full disk). HDF5 opens one in SWMR mode, which skips its end-of-file check, and
  reads the missing bytes as zeros: a trace cut in half once read as six evaluations of step 0;
- a datatype other than numbers, booleans and fixed-length byte strings (compound rows of those
  included): no variable-length data, references or opaque types;
- attributes above 1 MiB or with more than 4096 elements; more than 100,000 objects; groups nested
  deeper than 32.

``open_swmr`` opens a file that a run may still be writing (a trace) with HDF5's retries on a bad
metadata checksum bounded: its default for such readers, 100 attempts with an exponentially
growing wait, kept ``qtrain analyze`` of a trace cut short at byte 100 asleep for hours.

The walk adds up what the datasets declare and ``qtrain.memory.require_fits`` checks it against
the memory this process may take. What passes can be read without surprises; whether it is the
layout a run expects is the format's own check (``checkpoint_layout``, ``trace``).
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from qtrain.memory import require_fits

MAX_OBJECTS = 100_000
MAX_DEPTH = 32
MAX_CHUNK_BYTES = 64 << 20
MAX_ATTRIBUTE_BYTES = 1 << 20
MAX_ATTRIBUTE_ELEMENTS = 4096
FLETCHER32 = h5py.h5z.FILTER_FLETCHER32
# a SWMR reader's attempts at a metadata block whose checksum fails (the writer may be writing it):
# HDF5 waits longer after each, about 1 s in all for 30 (and hours for its default, 100)
SWMR_READ_ATTEMPTS = 30
_NUMBER_KINDS = "biuf"


class UntrustedItem(ValueError):
    """An item of an HDF5 file is something qtrain never writes; the message names the item."""


@dataclass
class Catalogue:
    """What the walk found: every dataset by its path (``/a/b``), every group's path, and the bytes
    the datasets declare."""

    datasets: dict[str, h5py.Dataset] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    declared_bytes: int = 0


@functools.cache
def _set_read_attempts():
    """HDF5's ``H5Pset_metadata_read_attempts`` from the library h5py loaded (h5py has no binding
    for it), or None where it cannot be found (not Linux): HDF5's own retries then apply."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    paths = {line.split(maxsplit=5)[5] for line in maps if len(line.split(maxsplit=5)) == 6}
    libraries = sorted(
        (p for p in paths if os.path.basename(p).startswith("libhdf5") and "_hl" not in os.path.basename(p)),
        key=lambda p: os.path.dirname(h5py.__file__) not in p,  # h5py's own copy first
    )
    for path in libraries:
        try:
            function = ctypes.CDLL(path).H5Pset_metadata_read_attempts
        except (OSError, AttributeError):
            continue
        function.argtypes, function.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int
        return function
    return None


def open_swmr(path: Path) -> h5py.File:
    """``h5py.File(path, "r", swmr=True)`` with at most ``SWMR_READ_ATTEMPTS`` reads of a metadata
    block whose checksum fails."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)  # as h5py.File's own
    set_attempts = _set_read_attempts()
    if set_attempts is not None:
        set_attempts(fapl.id, SWMR_READ_ATTEMPTS)
    flags = h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ
    return h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=fapl))


def _plain_dtype(dtype: np.dtype) -> bool:
    if dtype.names is not None:
        return all(_plain_field(dtype.fields[name][0]) for name in dtype.names)
    return dtype.kind in _NUMBER_KINDS and dtype.metadata is None and dtype.subdtype is None


def _plain_field(dtype: np.dtype) -> bool:
    if dtype.kind == "S":  # fixed-length bytes (h5py marks their encoding in the metadata)
        return h5py.check_vlen_dtype(dtype) is None
    return _plain_dtype(dtype)


def _describe_link(link) -> str | None:
    if isinstance(link, h5py.SoftLink):
        return f"a soft link (to {link.path})"
    if isinstance(link, h5py.ExternalLink):
        return f"an external link (to {link.filename}:{link.path})"
    if not isinstance(link, h5py.HardLink):
        return "a user-defined link"
    return None


def _check_attributes(obj, where: str) -> None:
    for name in obj.attrs:  # names only: nothing is read yet
        try:
            aid = h5py.h5a.open(obj.id, name.encode("utf-8", "surrogateescape"))
            dtype, shape, stored = aid.dtype, aid.shape, aid.get_storage_size()
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise UntrustedItem(f"{where} attribute {name!r}: unreadable ({exc})") from None
        elements = int(np.prod(shape, dtype=object)) if shape else 1
        if elements > MAX_ATTRIBUTE_ELEMENTS or stored > MAX_ATTRIBUTE_BYTES:
            raise UntrustedItem(
                f"{where} attribute {name!r} holds {elements} elements ({stored} bytes): qtrain's "
                f"attributes are at most {MAX_ATTRIBUTE_ELEMENTS} elements"
            )
        if h5py.check_string_dtype(dtype) is None and not _plain_field(dtype):
            raise UntrustedItem(f"{where} attribute {name!r} has datatype {dtype}, which qtrain never writes")


def _file_length(f: h5py.File) -> int:
    """The bytes the file holds on disk now (not HDF5's idea of its end, which a truncation leaves
    as it was)."""
    try:
        return os.fstat(f.id.get_vfd_handle()).st_size
    except (OSError, ValueError, TypeError):  # a driver without a file descriptor
        return os.path.getsize(f.filename)


def _storage_end(ds: h5py.Dataset, layout: int) -> int:
    """The file offset just past the dataset's stored data (0 when it keeps none outside its
    header): contiguous data's one extent, or the furthest chunk."""
    if layout == h5py.h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        return 0 if offset is None else offset + ds.id.get_storage_size()
    if layout != h5py.h5d.CHUNKED:
        return 0  # compact: the data is in the object header, which HDF5 has read already
    ends = [0]
    ds.id.chunk_iter(lambda info: ends.append(info.byte_offset + info.size))
    return max(ends)


def _check_dataset(ds: h5py.Dataset, where: str, allowed_filters: frozenset, length: int) -> int:
    """Refuse what qtrain never writes or what lies beyond the file's ``length`` bytes; return the
    bytes the dataset declares."""
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        raise UntrustedItem(f"{where} is a virtual dataset (its data lives in other files)")
    if dcpl.get_external_count():
        name = dcpl.get_external(0)[0].decode(errors="replace")
        raise UntrustedItem(f"{where} keeps its data in an external file ({name})")
    for i in range(dcpl.get_nfilters()):
        code, _, _, name = dcpl.get_filter(i)
        if code not in allowed_filters:
            label = name.decode(errors="replace") or f"filter {code}"
            raise UntrustedItem(f"{where} uses the HDF5 filter {label!r}, which this file kind never has")
    dtype = ds.dtype
    if not _plain_dtype(dtype):
        raise UntrustedItem(f"{where} has datatype {dtype}, which qtrain never writes")
    shape = ds.shape
    if shape is None:
        raise UntrustedItem(f"{where} has a null dataspace, which qtrain never writes")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize if shape else dtype.itemsize
    stored = ds.id.get_storage_size()
    if declared > stored:
        raise UntrustedItem(
            f"{where} declares {declared} bytes (shape {list(shape)}) but the file stores {stored} "
            "for it (unwritten data that HDF5 would make up)"
        )
    end = _storage_end(ds, dcpl.get_layout())
    if end > length:
        raise UntrustedItem(
            f"{where} is stored up to byte {end}, but the file ends at byte {length}: the file is "
            "truncated (HDF5 would read the missing data as zeros)"
        )
    if ds.chunks is not None:
        chunk = int(np.prod(ds.chunks, dtype=object)) * dtype.itemsize
        if chunk > MAX_CHUNK_BYTES:
            raise UntrustedItem(f"{where} has {chunk}-byte chunks: qtrain's are at most {MAX_CHUNK_BYTES}")
    return declared


def catalogue(f: h5py.File, allowed_filters: frozenset, what: str) -> Catalogue:
    """Walk ``f`` by its links and check every object (module docstring); ``what`` names the file
    in the memory check. Raises ``UntrustedItem`` or ``qtrain.memory.MemoryBoundError``."""
    cat = Catalogue()
    count = 0
    length = _file_length(f)
    _check_attributes(f, "/")

    def walk(group, prefix: str, depth: int) -> None:
        nonlocal count
        if depth > MAX_DEPTH:
            raise UntrustedItem(
                f"{prefix} is nested {depth} groups deep: qtrain's files nest at most {MAX_DEPTH}"
            )
        for name in group:  # link names only: nothing is resolved yet
            where = f"{prefix}/{name}"
            count += 1
            if count > MAX_OBJECTS:
                raise UntrustedItem(f"{where}: the file holds more than {MAX_OBJECTS} objects")
            link = group.get(name, getlink=True)
            kind = _describe_link(link)
            if kind is not None:
                raise UntrustedItem(f"{where} is {kind}: qtrain's files hold no links")
            obj = group[name]
            refs = h5py.h5o.get_info(obj.id).rc
            if refs != 1:
                raise UntrustedItem(
                    f"{where} is reachable from {refs} places (a hard link): qtrain writes each item once"
                )
            _check_attributes(obj, where)
            if isinstance(obj, h5py.Group):
                cat.groups.append(where)
                walk(obj, where, depth + 1)
            elif isinstance(obj, h5py.Dataset):
                cat.declared_bytes += _check_dataset(obj, where, allowed_filters, length)
                cat.datasets[where] = obj
            else:
                raise UntrustedItem(f"{where} is a {type(obj).__name__}, which qtrain never writes")

    walk(f, "", 1)
    require_fits(cat.declared_bytes, f"reading {what}")
    return cat
