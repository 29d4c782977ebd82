"""The docs describe the code as it is: every config key and every codec/algorithm name appears."""

import dataclasses
from pathlib import Path

from qtrain.algorithms import ALGORITHMS
from qtrain.codecs import CODECS
from qtrain.config import Config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


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


def _block_after(marker: str, text: str) -> str:
    """The fenced code block that follows ``<!-- marker -->`` in ``text``."""
    rest = text.split(f"<!-- {marker} -->", 1)[1]
    return rest.split("```", 2)[1].split("\n", 1)[1]


def test_the_librarys_example_and_ddp_diff_are_the_files():
    import difflib

    doc = (ROOT / "docs" / "library.md").read_text()
    assert _block_after("quickstart", doc) == (ROOT / "examples" / "quickstart.py").read_text()
    before = (ROOT / "examples" / "from_ddp" / "train_ddp.py").read_text().splitlines()
    after = (ROOT / "examples" / "from_ddp" / "train_qtrain.py").read_text().splitlines()
    diff = "\n".join(difflib.unified_diff(before, after, "train_ddp.py", "train_qtrain.py", lineterm=""))
    assert _block_after("ddp-diff", doc) == diff + "\n"
    assert len((ROOT / "examples" / "quickstart.py").read_text().splitlines()) <= 40
