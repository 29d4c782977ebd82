"""Untrusted config text (issue 37, part 1 and 4): every YAML parse of a config goes through the
bounded reader (``qtrain/config/bounded_yaml.py``), so a config file, a ``--set`` value and a
checkpoint's stored /config are refused in one line naming the source, the item and the bound:
nested anchors that expand without bound, nesting deeper than Python's stack, a key set twice, a
file that is not a regular file or is too big to be a config."""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from crafted_files import craft, replace
from typer.testing import CliRunner

from qtrain.cli.app import app
from qtrain.config import ConfigError, dump_yaml, load_config
from qtrain.config.bounded_yaml import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_NODES, RESOLVED_MARGIN_BYTES
from qtrain.config.loader import from_yaml_text
from qtrain.config.schema import Config, ModelConfig
from qtrain.io.checkpoint import CheckpointError


def laughs(levels: int) -> str:
    """``model.kwargs`` holding a0 (9 strings) and a_i = nine aliases of a_(i-1): 9^(levels+1)
    strings once expanded, in about 50 bytes per level (the "billion laughs")."""
    lines = ["model:", "  kwargs:", '    a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"    a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def refused(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


def test_nested_anchors_are_refused_with_the_item_and_the_bound(tmp_path):
    p = tmp_path / "laughs.yaml"
    p.write_text(laughs(8))  # 9^9 = 387 million strings: grew past 1 GB before anything was checked
    assert len(p.read_bytes()) < 700
    assert refused(p) == (
        f"{p}: model.kwargs.a5 (line 8) expands to 597871 YAML nodes through its aliases; "
        f"a config holds at most {MAX_NODES}"
    )


def test_anchors_within_the_bound_still_work(tmp_path):
    """YAML's own way to repeat a block stays: an anchor, aliases, a merge key that a key overrides."""
    p = tmp_path / "c.yaml"
    p.write_text(
        "uplink: &link {codec: uniform, bits: 4, bucket: 256}\n"
        "downlink: {<<: *link, bits: 8}\n"
        "model: {name: pkg:fn, kwargs: {a: &a [1, 2, 3], b: *a, c: [*a, *a]}}\n"
    )
    cfg = load_config(p)
    assert (cfg.uplink.bits, cfg.downlink.bits, cfg.downlink.bucket) == (4, 8, 256)
    assert cfg.model.kwargs == {"a": [1, 2, 3], "b": [1, 2, 3], "c": [[1, 2, 3], [1, 2, 3]]}


def test_the_node_bound_counts_the_file_and_every_set_value_together(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {name: pkg:fn, kwargs: {a: [" + ",".join(["1"] * 60_000) + "]}}\n")
    # 60,009 nodes: within the bound on its own
    big = "[" + ",".join(["2"] * 45_000) + "]"
    assert refused(p, [f"model.kwargs.b={big}"]) == (
        f"--set model.kwargs.b: more than {MAX_NODES} YAML nodes (at model.kwargs.b[39990], line 1); "
        f"a config holds at most {MAX_NODES}"
    )


def test_a_self_referencing_alias_is_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  kwargs:\n    a: &a [1, *a]\n")
    assert (
        refused(p)
        == f"{p}: model.kwargs.a[1] (line 3) contains itself through an alias: it would expand without end"
    )


def test_deep_nesting_is_refused_while_parsing(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "model:\n  kwargs:\n    x: " + "[" * 100_000 + "]" * 100_000 + "\n"
    )  # a RecursionError before
    assert refused(p) == (
        f"{p}: model.kwargs.x[0][0][0][0][0]... (line 3) is nested more than {MAX_DEPTH} levels deep; "
        f"a config nests at most {MAX_DEPTH}"
    )
    hidden = "[" * 5000 + "]" * 5000
    assert refused(None, [f"model.hidden={hidden}"]) == (
        f"--set model.hidden: model.hidden[0][0][0][0][0][0]... (line 1) is nested more than {MAX_DEPTH} "
        f"levels deep; a config nests at most {MAX_DEPTH}"
    )


def test_the_depth_bound_is_exact_and_counts_aliases_and_set_keys(tmp_path):
    """100 levels load (and survive the copies and the dump a run makes); 101 do not, whether
    written out, reached through a chain of aliases or through the dots of a --set key."""

    def nested(depth: int) -> str:  # model (1), kwargs (2), x's lists from 3 on
        return "model:\n  name: pkg:fn\n  kwargs:\n    x: " + "[" * (depth - 2) + "]" * (depth - 2) + "\n"

    ok = tmp_path / "ok.yaml"
    ok.write_text(nested(MAX_DEPTH))
    cfg = load_config(ok, ["seed=1"])  # --set: the loader copies the config
    assert from_yaml_text(dump_yaml(cfg)) == cfg
    deep = tmp_path / "deep.yaml"
    deep.write_text(nested(MAX_DEPTH + 1))
    assert refused(deep).startswith(f"{deep}: model.kwargs.x[0][0][0][0][0]... (line 4) is nested more than")
    chain = tmp_path / "chain.yaml"  # every line shallow, 120 levels once expanded
    chain.write_text(
        "model:\n  kwargs:\n    a0: &a0 [1]\n"
        + "".join(f"    a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 120))
    )
    assert refused(chain) == (
        f"{chain}: model.kwargs.a97[0] (line 99) is nested more than {MAX_DEPTH} levels deep once its "
        f"aliases are expanded; a config nests at most {MAX_DEPTH}"
    )
    key = "model.kwargs." + ".".join(["k"] * (MAX_DEPTH - 1))
    assert refused(None, [f"{key}=1"]) == (
        f"--set {key}: the key is nested more than {MAX_DEPTH} levels deep; a config nests at most "
        f"{MAX_DEPTH}"
    )


def test_a_key_set_twice_is_refused_with_both_lines(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("algorithm:\n  lr: 0.1\n  name: sgd\n  lr: 0.5\n")  # the last one won silently
    assert (
        refused(p)
        == f"{p}: algorithm.lr is set twice, at line 2 and at line 4; a key appears once per mapping"
    )
    assert refused(None, ["model.kwargs={a: 1, a: 2}"]) == (
        "--set model.kwargs: model.kwargs.a is set twice, at line 1 and at line 1; a key appears once per "
        "mapping"
    )


def test_a_fifo_a_device_or_a_huge_file_is_named_and_not_read(tmp_path):
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)  # reading it would block for ever; it was "does not exist"
    assert refused(fifo) == f"config file {str(fifo)!r} is a FIFO, not a regular file"
    assert refused("/dev/zero") == "config file '/dev/zero' is a character device, not a regular file"
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")  # valid YAML (a comment), one byte too many
    assert refused(big) == (
        f"config file {str(big)!r} is {MAX_CONFIG_BYTES + 3} bytes: a config is at most {MAX_CONFIG_BYTES} "
        "bytes (1 MiB)"
    )
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB that is never read (a MemoryError traceback before)
    assert (
        refused(huge)
        == f"config file {str(huge)!r} is {1 << 30} bytes: a config is at most 1048576 bytes (1 MiB)"
    )


def test_a_config_that_would_not_read_back_written_out_is_refused_when_loaded(tmp_path):
    """A run writes its config out whole (config.yaml, every checkpoint's /config) and reads it
    back on --resume: what the loader accepts must read back, or a run could not be resumed. A
    12 kB file nesting a long list 97 levels deep writes a megabyte of indentation."""
    deep = "[" * 95 + ",".join(["1"] * 6_000) + "]" * 95
    p = tmp_path / "c.yaml"
    p.write_text(f"model:\n  name: pkg:fn\n  kwargs:\n    x: {deep}\n")
    written = dump_yaml(Config(model=ModelConfig(name="pkg:fn", kwargs={"x": yaml.safe_load(deep)})))
    limit = MAX_CONFIG_BYTES - RESOLVED_MARGIN_BYTES
    assert len(p.read_bytes()) < 13_000 and len(written) > limit
    assert refused(p) == (
        f"{p}: written out (aliases expanded, every level indented) the config is {len(written)} bytes; a "
        f"config is at most {limit} bytes written out (so that config.yaml and checkpoints read back)"
    )
    # within the bounds, what the loader accepts reads back as it was: aliases, --set keys and all
    p.write_text("model: {name: pkg:fn, kwargs: {a: &a [1, 2, 3], b: [*a, *a]}}\n")
    cfg = load_config(p, ["model.kwargs.c.d.e=[1, 2]", "model.kwargs.f={g: 1}"])
    assert from_yaml_text(dump_yaml(cfg)) == cfg
    again = tmp_path / "config.yaml"
    again.write_text(dump_yaml(cfg))
    assert load_config(again) == cfg


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from qtrain.engine.simulator import simulate

    out = tmp_path_factory.mktemp("run")
    simulate(load_config(None, ["train.steps=1", "model.hidden=[4]"]), 1, out, log=lambda s: None)
    (path,) = (out / "checkpoints").glob("*.h5")
    return path


def stored_config(path) -> str:
    with h5py.File(path) as f:
        return bytes(f["config"][()]).decode()


def with_config(text: str):
    def edit(f):  # stored as qtrain stores text: uint8, kind "str"
        replace(f, "config", np.frombuffer(text.encode(), dtype=np.uint8))

    return edit


def test_a_resealed_checkpoint_with_nested_anchors_is_refused_by_inspect_and_resume(checkpoint, tmp_path):
    from qtrain.engine.checkpoint_files import load_run_checkpoint
    from qtrain.runtime.resume import load_for_resume

    text = stored_config(checkpoint)
    assert "\n  kwargs: {}\n" in text
    bad = craft(
        checkpoint, tmp_path / "laughs.h5", with_config(text.replace("  kwargs: {}\n", laughs(8)[7:]))
    )
    line = (
        f"{bad}: /config: model.kwargs.a5 (line 13) expands to 597871 YAML nodes through its aliases; "
        f"a config holds at most {MAX_NODES}"
    )
    with pytest.raises(CheckpointError) as info:
        load_run_checkpoint(bad)  # what inspect, export and --resume read through
    assert str(info.value) == line
    with pytest.raises(CheckpointError) as info:  # --resume FILE: hung until killed
        load_for_resume(str(bad), tmp_path, dump_yaml(load_config(None)), 1, False, warn=print)
    assert str(info.value) == line
    result = CliRunner().invoke(app, ["checkpoint", "inspect", str(bad)])  # said "verified"
    assert result.exit_code == 2 and "verified" not in result.output
    assert result.output.strip().splitlines()[-1] == f"qtrain: error: {line}"


def test_a_resealed_checkpoint_with_deep_nesting_or_duplicate_keys_is_refused(checkpoint, tmp_path):
    from qtrain.engine.checkpoint_files import load_run_checkpoint

    text = stored_config(checkpoint)
    deep = craft(
        checkpoint, tmp_path / "deep.h5", with_config(text.replace("kwargs: {}", "kwargs: " + "[" * 50_000))
    )
    with pytest.raises(CheckpointError) as info:
        load_run_checkpoint(deep)
    assert str(info.value).startswith(f"{deep}: /config: model.kwargs[0][0][0][0][0][0]... (line ")
    assert str(info.value).endswith(
        f"is nested more than {MAX_DEPTH} levels deep; a config nests at most {MAX_DEPTH}"
    )
    twice = craft(
        checkpoint, tmp_path / "twice.h5", with_config(text.replace("seed: 0\n", "seed: 0\nseed: 7\n"))
    )
    with pytest.raises(CheckpointError) as info:
        load_run_checkpoint(twice)
    assert (
        str(info.value)
        == f"{twice}: /config: seed is set twice, at line 1 and at line 2; a key appears once per mapping"
    )
