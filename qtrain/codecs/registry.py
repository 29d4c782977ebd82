"""Codec names users type, and the factory that builds them."""

from __future__ import annotations

from qtrain.codecs.base import Codec
from qtrain.codecs.entropy import DEFAULT_LEVEL, EntropyCoded
from qtrain.codecs.floats import Bf16Codec, Fp16Codec, NoneCodec
from qtrain.codecs.sign import SignCodec
from qtrain.codecs.sparse import SparseCodec
from qtrain.codecs.threshold import ThresholdCodec
from qtrain.codecs.topk import TopKCodec
from qtrain.codecs.uniform import TernaryCodec, UniformCodec

CODECS: dict[str, type[Codec]] = {
    cls.name: cls
    for cls in (
        NoneCodec,
        Fp16Codec,
        Bf16Codec,
        SignCodec,
        UniformCodec,
        TernaryCodec,
        ThresholdCodec,
        TopKCodec,
        SparseCodec,
    )
}


ENTROPY_PARAMS = ("entropy", "entropy_level")  # every codec takes them (codecs.entropy)


def get_codec(name: str, **params) -> Codec:
    """Build the codec called ``name`` with its parameters, e.g. ``get_codec("uniform", bits=2)``;
    ``entropy="zstd"`` (and ``entropy_level``) adds the lossless stage of :mod:`qtrain.codecs.entropy`.

    Unknown names and parameters raise ``ValueError`` naming the culprit and the valid choices.
    """
    entropy = params.pop("entropy", None)
    level = params.pop("entropy_level", None)
    if entropy is None:
        if level is not None:
            raise ValueError(f"codec {name!r}: entropy_level={level!r} needs entropy (e.g. entropy='zstd')")
        return _plain_codec(name, **params)
    return EntropyCoded(_plain_codec(name, **params), entropy, DEFAULT_LEVEL if level is None else level)


def _plain_codec(name: str, **params) -> Codec:
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}")
    cls = CODECS[name]
    try:
        return cls(**params)
    except TypeError as exc:
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(
            f"codec {name!r} got parameters {sorted(params)}; it takes {valid or 'no parameters'}"
        ) from exc
