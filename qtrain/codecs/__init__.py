"""Codecs: quantizers + bit packing + the wire format. No knowledge of MPI or algorithms.

Public API::

    from qtrain.codecs import get_codec, WireFormatError
    codec = get_codec("sign", bucket=512)
    packed = codec.encode(x)            # 1-D uint8 tensor, len == codec.wire_bytes(x.numel())
    y = codec.decode(packed)            # float32, raises WireFormatError on a bad message
"""

from qtrain.codecs.base import Codec
from qtrain.codecs.errors import WireFormatError
from qtrain.codecs.philox import CounterStream
from qtrain.codecs.registry import CODECS, get_codec
from qtrain.codecs.wire import HEADER_SIZE, Header, read_header

__all__ = [
    "CODECS",
    "Codec",
    "CounterStream",
    "HEADER_SIZE",
    "Header",
    "WireFormatError",
    "get_codec",
    "read_header",
]
