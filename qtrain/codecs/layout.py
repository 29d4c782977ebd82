"""The declarative layout of a message's payload: an ordered list of typed sections.

Each codec states its layout once, in ``Codec.sections(numel, flags, aux)``; that one list drives
``wire_bytes`` (the byte count), encoding (where each array goes in the message) and decoding
(what the reader cuts out, with every length checked). A section is one of:

- ``per="message"``: ``count`` items for the whole message (indices, kept values);
- ``per="bucket"``: one item per codec bucket (the bucket scales);
- ``per="element"``: ``bits`` bits per element, packed (codes) or one item per element (values).

Layouts made only of bucket and element sections can be cut into bucket-aligned chunks of
elements, which is how ``Codec.decode_add_`` works through a message in cache-sized pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ITEMSIZE = {
    torch.uint8: 1,
    torch.uint16: 2,
    torch.int32: 4,
    torch.float16: 2,
    torch.bfloat16: 2,
    torch.float32: 4,
}


@dataclass(frozen=True)
class Section:
    name: str
    dtype: torch.dtype
    count: int  # items of ``dtype``
    per: str = "message"  # "message" | "bucket" | "element"
    bits: int = 0  # per="element": bits per element

    @property
    def nbytes(self) -> int:
        return self.count * ITEMSIZE[self.dtype]

    def items(self, start: int, stop: int, bucket: int) -> tuple[int, int]:
        """The items of this section that elements ``[start, stop)`` use; ``start`` must be a
        multiple of 8 and of the bucket (a chunk boundary)."""
        if self.per == "bucket":
            return start // bucket, -(-stop // bucket)
        if self.per == "element":
            size = ITEMSIZE[self.dtype]
            return start * self.bits // (8 * size), -(-stop * self.bits // (8 * size))
        raise ValueError(f"section {self.name!r} holds the whole message; it cannot be cut into chunks")


def payload_bytes(sections: list[Section]) -> int:
    return sum(s.nbytes for s in sections)


def chunkable(sections: list[Section]) -> bool:
    return all(s.per in ("bucket", "element") for s in sections)
