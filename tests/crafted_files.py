"""Crafted HDF5 files for the hostile-file tests (issue 22, deliverable 3): a real checkpoint or
trace with one item replaced, each checkpoint resealed with a valid digest, so only the guarded
reader and the layout checks stand between the file and the run.

``variants(f)`` lists, for every item of an open file, the ways to replace it that qtrain must
refuse: another dtype, another shape, a group for a dataset (and the reverse), a soft, hard or
external link, external storage, a compression filter, data declared but not stored."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from qtrain.io.checkpoint import _seal


def craft(source: Path, target: Path, edit: Callable[[h5py.File], None], seal: bool = True) -> Path:
    """Copy ``source`` to ``target``, apply ``edit`` to it in place, and reseal its digest."""
    shutil.copyfile(source, target)
    with h5py.File(target, "r+") as f:
        edit(f)
    if seal:
        _seal(target)
    return target


def replace(f: h5py.File, path: str, data, attrs: dict | None = None, **kwargs) -> None:
    """Replace the dataset at ``path`` by ``data`` (its old attributes unless ``attrs``)."""
    old = dict(f[path].attrs) if attrs is None and path in f else attrs or {}
    if path in f:
        del f[path]
    ds = f.create_dataset(path, data=data, **kwargs)
    for k, v in old.items():
        ds.attrs[k] = v


def _other_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.names is not None:  # a compound row without its first column (/steps without its last
        return np.dtype([(n, dtype.fields[n][0]) for n in dtype.names[1:]])  # is an older trace's)
    return {
        "f": np.dtype(np.float64) if dtype != np.float64 else np.dtype(np.float32),
        "i": np.dtype(np.float64),
        "u": np.dtype(np.int8) if dtype == np.uint8 else np.dtype(np.int64),
        "b": np.dtype(np.int8),
    }[dtype.kind]


def _cast(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.names is not None:
        out = np.zeros(data.shape, dtype=dtype)
        for n in dtype.names:
            out[n] = data[n]
        return out
    return data.astype(dtype)


def _side_file(f: h5py.File, suffix: str) -> Path:
    return Path(f.filename).with_suffix(f".{suffix}.side")


def dataset_variants(f: h5py.File, path: str, others: list[str], checkpoint: bool) -> dict[str, Callable]:
    """name -> edit, each replacing the dataset at ``path`` in a way qtrain must refuse
    (``checkpoint``: also the item attributes only checkpoints have)."""
    ds = f[path]
    data, dtype, attrs = ds[()], ds.dtype, dict(ds.attrs)
    sibling = next(o for o in others if o != path)

    def wrong_dtype(g):
        replace(g, path, _cast(np.asarray(data), _other_dtype(dtype)))

    def extra_dimension(g):
        replace(g, path, np.asarray(data).reshape(1, *np.shape(data)))

    def group(g):
        del g[path]
        g.create_group(path)

    def soft_link(g):
        del g[path]
        g[path] = h5py.SoftLink(sibling)

    def hard_link(g):
        del g[path]
        g[path] = g[sibling]

    def external_link(g):
        side = _side_file(g, "link")
        with h5py.File(side, "w") as s:
            s.create_dataset("x", data=data)
            for k, v in attrs.items():
                s["x"].attrs[k] = v
        del g[path]
        g[path] = h5py.ExternalLink(str(side), "x")

    def external_storage(g):
        side = _side_file(g, "raw")
        raw = np.ascontiguousarray(data)
        side.write_bytes(raw.tobytes())
        attrs = dict(g[path].attrs)
        del g[path]
        new = g.create_dataset(path, shape=raw.shape, dtype=raw.dtype, external=[(str(side), 0, raw.nbytes)])
        for k, v in attrs.items():
            new.attrs[k] = v

    def compressed(g):
        replace(g, path, np.asarray(data), compression="gzip", chunks=np.shape(data) or None)

    def declared_not_stored(g):
        attrs = dict(g[path].attrs)
        del g[path]
        shape = (1 << 28,) + tuple(np.shape(data)[1:])
        new = g.create_dataset(path, shape=shape, dtype=dtype, chunks=(4096,) + shape[1:])
        for k, v in attrs.items():
            new.attrs[k] = v

    def deleted(g):
        del g[path]

    def longer(g):
        flat = np.asarray(data)
        replace(g, path, np.concatenate([flat, flat[:1]]))

    def other_kind(g):
        g[path].attrs["kind"] = {"str": "array", "array": "str", "scalar": "str"}.get(
            attrs.get("kind"), "str"
        )

    def kind_not_text(g):
        g[path].attrs["kind"] = 5

    def unknown_attribute(g):
        g[path].attrs["origin"] = "crafted"

    def negative(g):
        replace(g, path, -np.abs(np.asarray(data)) - 5)

    def not_a_number(g):
        replace(g, path, np.full(np.shape(data), np.nan, dtype=dtype))

    out = {
        "deleted": deleted,
        "wrong dtype": wrong_dtype,
        "extra dimension": extra_dimension,
        "group": group,
        "soft link": soft_link,
        "hard link": hard_link,
        "external link": external_link,
        "external storage": external_storage,
    }
    if np.size(data):
        out["gzip"] = compressed
    if checkpoint:
        out |= {
            "other kind": other_kind,
            "kind not text": kind_not_text,
            "unknown attribute": unknown_attribute,
        }
    if np.ndim(data) == 1 and dtype.names is None and np.size(data):
        out["one element more"] = longer
    if attrs.get("type") == "int":
        out["negative"] = negative
    if attrs.get("type") == "float":
        out["NaN"] = not_a_number
    out["declared, not stored"] = declared_not_stored
    return out


def group_variants(f: h5py.File, path: str, others: list[str]) -> dict[str, Callable]:
    """name -> edit, each replacing the group at ``path`` in a way qtrain must refuse."""
    sibling = next((o for o in others if o != path and not o.startswith(path + "/")), None)

    def dataset(g):
        del g[path]
        g.create_dataset(path, data=np.zeros(3, dtype=np.float32))

    def soft_link(g):
        del g[path]
        g[path] = h5py.SoftLink(sibling)

    def cycle(g):
        for name in list(g[path]):
            del g[f"{path}/{name}"]
        g[f"{path}/loop"] = g[path]  # a hard link to itself

    def emptied(g):
        for name in list(g[path]):
            del g[f"{path}/{name}"]

    def deleted(g):
        del g[path]

    out = {"dataset": dataset, "cycle": cycle, "deleted": deleted}
    if len(f[path]):
        out["emptied"] = emptied
    if sibling is not None:
        out["soft link"] = soft_link
    return out


def items(f: h5py.File) -> tuple[list[str], list[str]]:
    """(dataset paths, group paths) of an open file, root excluded."""
    datasets, groups = [], []
    f.visititems(lambda name, obj: (datasets if isinstance(obj, h5py.Dataset) else groups).append("/" + name))
    return datasets, groups


def all_variants(source: Path, checkpoint: bool = True) -> list[tuple[str, str, Callable]]:
    """(item, variant name, edit) for every item of the file at ``source``."""
    with h5py.File(source, "r") as f:
        datasets, groups = items(f)
        out = []
        for path in datasets:
            same_kind = [d for d in datasets if f[d].dtype == f[path].dtype] + datasets
            out += [
                (path, name, edit) for name, edit in dataset_variants(f, path, same_kind, checkpoint).items()
            ]
        for path in groups:
            out += [(path, name, edit) for name, edit in group_variants(f, path, groups).items()]
    return out


def attribute_variants(source: Path) -> list[tuple[str, str, Callable]]:
    """(attribute, variant name, edit) for every root attribute: deleted, or of another type
    (text for a number, a number for text, a list for a JSON text)."""
    with h5py.File(source, "r") as f:
        values = dict(f.attrs)
    out = []
    for name, value in values.items():

        def deleted(g, name=name):
            del g.attrs[name]

        def retyped(g, name=name, value=value):
            g.attrs[name] = 7 if isinstance(value, str) else "seven"

        out += [(f"attribute {name}", "deleted", deleted), (f"attribute {name}", "other type", retyped)]
        if isinstance(value, str) and value[:1] in "[{":

            def wrong_json(g, name=name, value=value):
                g.attrs[name] = "{}" if value[:1] == "[" else "[]"

            out.append((f"attribute {name}", "other JSON", wrong_json))
    return out


def expanding_configs(text: str) -> dict[str, str]:
    """name -> a checkpoint's resolved config ``text`` made to expand when parsed (issue 37): nested
    YAML aliases in ``model.kwargs`` ("billion laughs": 9^9 leaves from under 1 KB), 100,000 nested
    brackets in ``model.hidden``, and a config padded past any config's size (8 MiB)."""
    assert "  kwargs: {}\n" in text and "  hidden:\n" in text, "not a resolved config with an MLP"
    levels = ["    l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        levels.append(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    laughs = text.replace("  kwargs: {}\n", "  kwargs:\n" + "\n".join(levels) + "\n")
    depth = 100_000
    nested = text.replace("  hidden:\n", "  hidden: " + "[" * depth + "]" * depth + "\n  old_hidden:\n", 1)
    padded = text + "#" + "x" * (8 << 20) + "\n"
    return {"billion laughs": laughs, "100,000 nested brackets": nested, "8 MiB config": padded}


def with_config(text: str) -> Callable[[h5py.File], None]:
    """An edit that stores ``text`` as the checkpoint's /config, as qtrain writes it."""

    def edit(f: h5py.File) -> None:
        kind = dict(f["config"].attrs)
        del f["config"]
        ds = f.create_dataset("config", data=np.frombuffer(text.encode(), dtype=np.uint8), fletcher32=True)
        for k, v in kind.items():
            ds.attrs[k] = v

    return edit
