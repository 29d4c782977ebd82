"""The one bounded reader for data files: nothing a file declares is allocated before it is
checked against the memory this process may take (``qtrain.memory.require_fits``).

- ``read_file``: a regular file (never a FIFO or a device) whose size, times the copies its loader
  makes per byte, must fit;
- ``gunzip``: a gzip stream decompressed in pieces, never past the size its reader computed
  from the header it found first (an idx ``.gz`` of 3.8 MB that expands to 3.9 GB stops at the
  header's size, and the header's size must fit);
- ``npz_members``: the uncompressed sizes an ``.npz`` archive's directory declares for its
  arrays, which must fit before numpy inflates one (a 4.2 MB zip bomb declares 4 GiB);
- ``dense_bytes``: what densifying an (n, features) float32 matrix takes, checked before it is
  made (a libsvm feature index of 10^12 once raised OverflowError from deep inside).

Each refusal is one ``MemoryBoundError`` (a ValueError) naming the file, what it declares, and the
memory available.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

from qtrain.data.base import regular_file
from qtrain.memory import require_fits


def read_file(path, key: str, copies_per_byte: float = 1.0) -> tuple[Path, bytes]:
    """(path, contents) of a regular file, once its size times ``copies_per_byte`` (what its loader
    makes of each byte) fits in memory."""
    path = regular_file(path, key)
    size = path.stat().st_size
    require_fits(int(size * copies_per_byte), f"{key} {str(path)!r} ({size} bytes)")
    return path, path.read_bytes()


class GzipReader:
    """A gzip stream read in pieces: ``take(n)`` returns at most the next ``n`` decompressed bytes;
    ``finish()`` checks that nothing follows them."""

    def __init__(self, raw: bytes, path: Path):
        self.path = path
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = raw

    def take(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            try:
                chunk = self._d.decompress(self._pending, n - len(out))
            except zlib.error as exc:
                raise ValueError(f"{self.path}: damaged gzip stream ({exc})") from None
            self._pending = self._d.unconsumed_tail
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def finish(self, what: str) -> None:
        """Check that the stream ends here: ``what`` (the bytes its reader took) is all of it, and
        the gzip trailer (CRC and length) is present and right."""
        if self.take(1) or self._d.unused_data:
            raise ValueError(f"{self.path}: the gzip stream holds more than {what}")
        if not self._d.eof:
            raise ValueError(f"{self.path}: damaged gzip stream (cut short before its end)")


def npz_members(archive, path: Path, names, copies: float = 1.0) -> None:
    """Check the uncompressed sizes that the ``.npz`` archive (``np.load``'s NpzFile) declares for
    ``names`` against memory, times ``copies`` (what the loader makes of them), before any is read.
    A member that inflates past its declared size is cut there by zipfile, and numpy then finds
    the array short."""
    declared = 0
    for name in names:
        info = archive.zip.getinfo(f"{name}.npy")
        declared += info.file_size
    require_fits(int(declared * copies), f"data.path {str(path)!r} (its arrays declare {declared} bytes)")


def dense_bytes(rows: int, columns: int, what: str, itemsize: int = 4) -> int:
    """Bytes of a dense (rows, columns) matrix, checked against memory first."""
    need = math.prod((rows, columns, itemsize))
    require_fits(need, f"{what} as a dense {rows} x {columns} float32 matrix")
    return need
