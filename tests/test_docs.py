"""The docs describe the code as it is: every config key and every codec/algorithm name appears."""

import dataclasses
from pathlib import Path

from qtrain.algorithms import ALGORITHMS
from qtrain.codecs import CODECS
from qtrain.config import Config

DOCS = Path(__file__).resolve().parent.parent / "docs"


def keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            yield from keys(type(default), prefix + f.name + ".")
        else:
            yield prefix + f.name


def test_every_config_key_is_documented():
    text = (DOCS / "configuration.md").read_text()
    missing = [k for k in keys(Config) if f"`{k}`" not in text]
    assert not missing, missing


def test_every_codec_and_algorithm_is_documented():
    wire = (DOCS / "wire-format.md").read_text()
    algos = (DOCS / "algorithms.md").read_text()
    assert all(name in wire for name in CODECS)
    assert all(f"`{name}`" in algos for name in ALGORITHMS)
