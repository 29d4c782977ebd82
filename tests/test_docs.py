"""The docs describe the code as it is: every config key appears, and the codec and algorithm
tables list exactly the registered names."""

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


def _table(text: str, header: str) -> list[list[str]]:
    """The body rows (cells stripped) of the markdown table in ``text`` whose header row starts
    with the cell ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2 :]:  # after the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_the_wire_formats_codec_tables_list_exactly_the_registered_codecs():
    """Both tables of docs/wire-format.md, compared with the code both ways: the header's codec
    ids (``none 0, fp16 1, ...``) equal ``wire.CODEC_IDS``, and the payload table's codec column
    (``fp16, bf16``; ``threshold, dense``: a codec and its layout) names every registered codec
    and nothing else."""
    from qtrain.codecs.wire import CODEC_IDS

    wire = (DOCS / "wire-format.md").read_text()
    (ids,) = [row[4] for row in _table(wire, "offset") if row[3] == "codec id"]
    documented = {name: int(code) for name, code in (pair.split() for pair in ids.split(", "))}
    assert documented == CODEC_IDS
    layouts = {"dense", "dense layout", "sparse layout"}  # ``threshold, dense``, ``sparse, dense layout``
    names = {cell for row in _table(wire, "codec") for cell in row[0].split(", ") if cell not in layouts}
    assert names == set(CODECS)


def test_the_algorithms_table_lists_exactly_the_registered_algorithms():
    """The first cell of each row of docs/algorithms.md's table starts with the algorithm's name
    in backticks (a second mode's row, qadam with weight_quantization, names it again)."""
    rows = _table((DOCS / "algorithms.md").read_text(), "name")
    assert {row[0].split("`")[1] for row in rows} == set(ALGORITHMS)


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
