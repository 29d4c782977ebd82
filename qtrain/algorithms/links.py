"""Resolve the ``uplink``/``downlink`` config sections and the algorithm's defaults into codecs.

Rules: with ``codec`` unset, the algorithm's default codec and parameters apply, and any parameter
set in the config overrides one of them (``uplink.bits=4`` on ``ecq-sgd`` gives 4-bit uniform).
With ``codec`` set, only the config's parameters apply. ``bucket`` goes to every codec that has
buckets. ``error_feedback`` unset means the algorithm's default. A parameter the codec does not
take is an error naming the key.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from qtrain.algorithms.base import Algorithm
from qtrain.algorithms.registry import get_algorithm
from qtrain.codecs import CODECS, Codec, get_codec
from qtrain.codecs.registry import ENTROPY_PARAMS

CODEC_FIELDS = (
    "bits",
    "levels",
    "norm",
    "rounding",
    "kappa",
    "reference",
    "layout",
    "k",
    "ratio",
    "values",
    *ENTROPY_PARAMS,
)


@dataclass(frozen=True)
class Link:
    direction: str  # "uplink" | "downlink"
    codec: Codec
    error_feedback: bool

    def describe(self) -> str:
        ef = "with error feedback" if self.error_feedback else "no error feedback"
        return f"{self.codec.name} {self.codec.params()} ({ef})"


def resolve_link(section, direction: str, default_codec: dict, default_ef: bool) -> Link:
    """Build the Link for ``direction`` from its config ``section``. Raises ValueError."""
    if section.codec is None or section.codec == default_codec["codec"]:
        name = default_codec["codec"]
        params = {k: v for k, v in default_codec.items() if k != "codec"}
    else:
        name, params = section.codec, {}
    if name not in CODECS:
        raise ValueError(f"{direction}.codec: unknown codec {name!r}; choose one of {', '.join(CODECS)}")
    accepted = set(inspect.signature(CODECS[name].__init__).parameters) - {"self"} | set(ENTROPY_PARAMS)
    explicit = {f: getattr(section, f) for f in CODEC_FIELDS if getattr(section, f) is not None}
    if "levels" in explicit:
        params.pop("bits", None)
    for key, value in explicit.items():
        if key == "bits" and "bits" not in accepted:
            continue  # checked against the codec's fixed width below
        if key not in accepted:
            raise ValueError(
                f"{direction}.{key} is not a parameter of codec {name!r} "
                f"(unset it: --set {direction}.{key}=null)"
            )
        params[key] = value
    if "bucket" in accepted:
        params["bucket"] = section.bucket
    try:
        codec = get_codec(name, **params)
    except ValueError as exc:
        raise ValueError(f"{direction}: {exc}") from exc
    if "bits" in explicit and explicit["bits"] != codec.bits:
        raise ValueError(
            f"{direction}.bits={explicit['bits']}, but codec {name!r} sends {codec.bits} bits per element"
        )
    ef = default_ef if section.error_feedback is None else section.error_feedback
    return Link(direction, codec, ef)


def resolve_links(cfg) -> tuple[Algorithm, Link, Link]:
    """The algorithm and both links, with the cross-checks a config must pass. Raises ValueError."""
    algorithm = get_algorithm(cfg.algorithm)
    uplink = resolve_link(cfg.uplink, "uplink", algorithm.uplink_codec, algorithm.uplink_ef)
    downlink = resolve_link(cfg.downlink, "downlink", algorithm.downlink_codec, algorithm.downlink_ef)
    if algorithm.downlink_mode == "weights" and downlink.error_feedback:
        raise ValueError(
            f"downlink.error_feedback: {algorithm.name} sends weights on the downlink (the server keeps "
            "full-precision masters), so there is no downlink residual to feed back"
        )
    return algorithm, uplink, downlink
