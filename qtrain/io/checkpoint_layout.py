"""The layout a run's checkpoint must have (docs/hdf5-schema.md), checked item by item before
anything in it is used.

The whole-file digest proves that the bytes are the ones their writer sealed, and the guarded
walk (``guarded_hdf5``) that they hold nothing qtrain never writes. This is the third check: every
item the run needs is present, of its kind, dtype and shape, and in range, and nothing else is
there. Counters are integers (a step of 15.7 is refused, not truncated to 15), positions and
counts are not negative, learning rates are finite, every worker named in the root attributes has
its state (an empty ``/workers`` group no longer resets the workers silently), the algorithm's
state has exactly the algorithm's names, and the parameter layout covers the flat vector. What
the run expects of the algorithm comes from the checkpoint's own config (``CheckpointExpectation``,
built by ``engine.checkpoint_files``); whether the checkpoint fits *this* run (model, workers,
config) is the resume's check. Each failure is one ``CheckpointError`` line naming the file and
the item.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import torch

from qtrain.io.checkpoint import CheckpointError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RANK = re.compile(r"^(0|[1-9][0-9]{0,8})$")
STATS_COUNTERS = ("bytes_up", "bytes_down", "messages_up", "messages_down", "fp32_up", "fp32_down")
MT19937_WORDS = 624
DESCRIPTIVE = ("created", "hosts", "mpi_library", "qtrain_version", "roles", "torch_version")
TORCH_RNG_BYTES = torch.get_rng_state().numel()  # the CPU generator's state (5056 bytes)


@dataclass(frozen=True)
class CheckpointExpectation:
    """What the checkpoint's config says its state holds: the algorithm, the names of its server
    and worker rule state, and which sides keep an error-feedback buffer."""

    algorithm: str
    server_state: frozenset
    worker_state: frozenset
    server_error: bool
    worker_error: bool
    # server state a run may hold or not, by its param groups (the library's groups are not in the
    # checkpoint): an SGD-type rule's momentum buffer when only some groups use momentum
    server_optional: frozenset = frozenset()


class _Check:
    def __init__(self, path):
        self.path = path

    def fail(self, where: str, why: str):
        raise CheckpointError(f"{self.path}: {where}: {why}")

    def node(self, tree, where: str, name: str, required: bool = True):
        if name not in tree:
            if required:
                self.fail(f"{where}/{name}", "missing")
            return None
        return tree[name]

    def group(self, tree, where: str, name: str, required: bool = True) -> dict | None:
        value = self.node(tree, where, name, required)
        if value is not None and not isinstance(value, dict):
            self.fail(f"{where}/{name}", "a dataset where a group belongs")
        return value

    def only(self, tree: dict, where: str, allowed: set) -> None:
        odd = sorted(set(tree) - allowed)
        if odd:
            self.fail(f"{where}/{odd[0]}", "an item this checkpoint format does not have")

    def integer(self, tree, where: str, name: str, low: int = 0, high: int | None = None) -> int:
        value = self.node(tree, where, name)
        if type(value) is not int:
            self.fail(f"{where}/{name}", f"must be an integer scalar, found {_what(value)}")
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"in [{low}, {high}]"
            self.fail(f"{where}/{name}", f"{value} is out of range (must be {bound})")
        return value

    def number(self, tree, where: str, name: str, required: bool = True, low: float | None = 0.0, nan=False):
        """A float scalar, finite and at least ``low`` (``nan``: NaN allowed, the library's
        "no loss reported")."""
        value = self.node(tree, where, name, required)
        if value is None and not required:
            return None
        if type(value) is not float:
            self.fail(f"{where}/{name}", f"must be a float scalar, found {_what(value)}")
        if nan and math.isnan(value):
            return value
        if not math.isfinite(value) or (low is not None and value < low):
            bound = "a finite number" + (f" >= {low}" if low is not None else "")
            self.fail(f"{where}/{name}", f"{value} is out of range ({bound})")
        return value

    def text(self, tree, where: str, name: str) -> str:
        value = self.node(tree, where, name)
        if not isinstance(value, str):
            self.fail(f"{where}/{name}", f"must be text, found {_what(value)}")
        return value

    def vector(self, tree, where: str, name: str, n: int, dtype=torch.float32, required: bool = True):
        value = self.node(tree, where, name, required)
        if value is None and not required:
            return None
        if not isinstance(value, torch.Tensor) or value.dtype != dtype or tuple(value.shape) != (n,):
            self.fail(f"{where}/{name}", f"must be {_dtype(dtype)} of shape [{n}], found {_what(value)}")
        return value


def _dtype(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _what(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{_dtype(value.dtype)} of shape {list(value.shape)}"
    if isinstance(value, dict):
        return "a group"
    return f"{type(value).__name__} {value!r}"[:80]


def _check_aliases_text(c: _Check, text: str, names: set, buffers: dict | None) -> None:
    """``/aliases``: a JSON object mapping each other ``state_dict`` name of a tied parameter to
    its name in ``/layout``; an alias is neither a layout name nor a buffer's."""
    try:
        aliases = json.loads(text)
    except ValueError:
        c.fail("/aliases", "not JSON")
    if not isinstance(aliases, dict) or not aliases:
        c.fail("/aliases", "must be a JSON object of {alias: parameter name in /layout}")
    for alias, name in aliases.items():
        if not isinstance(name, str) or name not in names:
            c.fail("/aliases", f"{alias!r} names {name!r}, which is not a parameter in /layout")
        if alias in names or alias in (buffers or {}):
            c.fail("/aliases", f"{alias!r} is a {'parameter' if alias in names else 'buffer'} of its own")


def _check_layout_text(c: _Check, text: str, n: int) -> set:
    try:
        entries = json.loads(text)
    except ValueError:
        c.fail("/layout", "not JSON")
    if not isinstance(entries, list):
        c.fail("/layout", "must be a JSON list of [name, offset, shape]")
    offset, names = 0, set()
    for i, entry in enumerate(entries):
        ok = (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and type(entry[1]) is int
            and isinstance(entry[2], list)
            and all(type(d) is int and d >= 0 for d in entry[2])
        )
        if not ok:
            c.fail("/layout", f"entry {i} is not [name, offset, shape]")
        if entry[0] in names or entry[1] != offset:
            c.fail(
                "/layout",
                f"entry {i} ({entry[0]}) repeats a name or leaves a gap "
                f"(offset {entry[1]}, expected {offset})",
            )
        names.add(entry[0])
        offset += math.prod(entry[2])
    if offset != n:
        c.fail("/layout", f"covers {offset} parameters, /params holds {n}")
    return names


def _check_rng(c: _Check, tree, where: str) -> None:
    rng = c.group(tree, where, "rng")
    c.only(rng, f"{where}/rng", {"torch", "numpy"})
    c.vector(rng, f"{where}/rng", "torch", TORCH_RNG_BYTES, torch.uint8)
    numpy_state = c.group(rng, f"{where}/rng", "numpy")
    w = f"{where}/rng/numpy"
    c.only(numpy_state, w, {"keys", "pos", "has_gauss", "cached"})
    c.vector(numpy_state, w, "keys", MT19937_WORDS, torch.uint32)
    c.integer(numpy_state, w, "pos", 0, MT19937_WORDS)
    c.integer(numpy_state, w, "has_gauss", 0, 1)
    c.number(numpy_state, w, "cached", low=None)


def _check_engine(
    c: _Check, tree, where: str, n: int, names: frozenset, error: bool, step: int, optional=frozenset()
) -> None:
    c.only(tree, where, {"step", "algorithm", "error"})
    c.integer(tree, where, "step", 0, step)
    state = c.group(tree, where, "algorithm")
    missing = sorted(names - set(state))
    if missing:
        c.fail(f"{where}/algorithm/{missing[0]}", "missing")
    c.only(state, f"{where}/algorithm", set(names) | set(optional))
    for name in sorted(names | (set(optional) & set(state))):
        c.vector(state, f"{where}/algorithm", name, n)
    if error:
        c.vector(tree, where, "error", n)
    elif "error" in tree:
        c.fail(f"{where}/error", "present, but this run keeps no error-feedback buffer here")


def _check_buffers(c: _Check, buffers, where: str, reference: dict | None) -> dict:
    if not isinstance(buffers, dict):
        c.fail(where, "a dataset where a group belongs")
    for name, value in buffers.items():
        if not isinstance(value, torch.Tensor):
            c.fail(f"{where}/{name}", f"must be an array, found {_what(value)}")
        if reference is not None:
            ref = reference.get(name)
            if ref is None or ref.dtype != value.dtype or ref.shape != value.shape:
                c.fail(f"{where}/{name}", f"{_what(value)} where /buffers has {_what(ref)}")
    if reference is not None and set(reference) != set(buffers):
        missing = sorted(set(reference) - set(buffers))
        c.fail(f"{where}/{missing[0]}", "missing (it is in /buffers)")
    return buffers


def _check_worker(c: _Check, tree: dict, where: str, n: int, expect, step: int, buffers) -> None:
    c.only(
        tree,
        where,
        {
            "engine",
            "shards",
            "sampler",
            "rng",
            "lr",
            "initial_lr",
            "group_lrs",
            "group_initial_lrs",
            "buffers",
            "extra",
        },
    )
    engine = c.group(tree, where, "engine")
    _check_engine(c, engine, f"{where}/engine", n, expect.worker_state, expect.worker_error, step)
    shards = c.group(tree, where, "shards", required="sampler" not in tree)
    positions = {"0": tree["sampler"]} if shards is None else shards
    base = f"{where}/sampler" if shards is None else f"{where}/shards"
    if shards is not None and sorted(shards, key=lambda k: int(k) if k.isdigit() else -1) != [
        str(i) for i in range(len(shards))
    ]:
        c.fail(base, f"shards must be numbered 0..{len(shards) - 1}, found {sorted(shards)}")
    for key, position in positions.items():
        w = base if shards is None else f"{base}/{key}"
        if not isinstance(position, dict):
            c.fail(w, "a dataset where a group belongs")
        c.only(position, w, {"epoch", "position"})
        c.integer(position, w, "epoch")
        c.integer(position, w, "position")
    _check_rng(c, tree, where)
    c.number(tree, where, "lr")
    c.number(tree, where, "initial_lr", required=False)
    for key in ("group_lrs", "group_initial_lrs"):
        value = c.node(tree, where, key, False)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or value.dtype != torch.float64 or value.dim() != 1:
            c.fail(f"{where}/{key}", f"must be a float64 vector, found {_what(value)}")
        if value.numel() < 2 or not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
            c.fail(f"{where}/{key}", "must hold two or more finite learning rates >= 0 (one per param group)")
    if "buffers" in tree:
        if buffers is None:
            c.fail(f"{where}/buffers", "present, but the checkpoint has no /buffers")
        _check_buffers(c, tree["buffers"], f"{where}/buffers", buffers)
    if "extra" in tree and not isinstance(tree["extra"], dict):
        c.fail(f"{where}/extra", "a dataset where a group belongs")


def check_checkpoint_layout(tree: dict, meta: dict, path, expect: CheckpointExpectation) -> None:
    """Raise ``CheckpointError`` at the first item of ``tree`` (and root attribute of ``meta``)
    that is not what ``expect`` and docs/hdf5-schema.md say."""
    c = _Check(path)
    c.only(
        tree,
        "",
        {"step", "params", "replica_params", "layout", "config", "server", "workers", "stats", "buffers"}
        | {"aliases"},
    )
    step = c.integer(tree, "", "step")
    params = c.node(tree, "", "params")
    if not isinstance(params, torch.Tensor) or params.dtype != torch.float32 or params.dim() != 1:
        c.fail("/params", f"must be a 1-D float32 array, found {_what(params)}")
    n = params.numel()
    c.vector(tree, "", "replica_params", n)
    names = _check_layout_text(c, c.text(tree, "", "layout"), n)
    c.text(tree, "", "config")

    server = c.group(tree, "", "server")
    c.only(server, "/server", {"step", "algorithm", "error", "rng"})
    _check_engine(
        c,
        {k: v for k, v in server.items() if k != "rng"},
        "/server",
        n,
        expect.server_state,
        expect.server_error,
        step,
        expect.server_optional,
    )
    _check_rng(c, server, "/server")

    buffers = None
    if "buffers" in tree:
        buffers = _check_buffers(c, tree["buffers"], "/buffers", None)
    if "aliases" in tree:  # tied parameters' other names (written since issue 35; optional)
        _check_aliases_text(c, c.text(tree, "", "aliases"), names, buffers)
    workers = c.group(tree, "", "workers")
    for rank, worker in workers.items():
        if not _RANK.match(rank):
            c.fail(f"/workers/{rank}", "a worker's group is named by its MPI rank")
        if not isinstance(worker, dict):
            c.fail(f"/workers/{rank}", "a dataset where a group belongs")
        _check_worker(c, worker, f"/workers/{rank}", n, expect, step, buffers)

    stats = c.group(tree, "", "stats")
    c.only(stats, "/stats", {*STATS_COUNTERS, "last_batch_loss", "evals"})
    for name in STATS_COUNTERS:
        c.integer(stats, "/stats", name)
    c.number(stats, "/stats", "last_batch_loss", low=None, nan=True)
    try:
        evals = json.loads(c.text(stats, "/stats", "evals"))
    except ValueError:
        c.fail("/stats/evals", "not JSON")
    if not isinstance(evals, list) or not all(isinstance(e, dict) for e in evals):
        c.fail("/stats/evals", "must be a JSON list of evaluations")

    _check_meta(c, meta, step, len(workers), max((int(r) for r in workers), default=0), expect)


def _check_meta(c: _Check, meta: dict, step: int, workers: int, top_rank: int, expect) -> None:
    def integer(name: str, low: int) -> int:
        value = meta.get(name)
        if not isinstance(value, (int,)) and not hasattr(value, "dtype"):
            c.fail(f"attribute {name}", f"must be an integer, found {value!r}")
        if getattr(value, "dtype", None) is not None and value.dtype.kind not in "iu":
            c.fail(f"attribute {name}", f"must be an integer, found {value!r}")
        if int(value) < low:
            c.fail(f"attribute {name}", f"{int(value)} is out of range (at least {low})")
        return int(value)

    if integer("step", 0) != step:
        c.fail("attribute step", f"{int(meta['step'])}, where /step is {step}")
    if integer("workers", 1) != workers:
        c.fail(
            "/workers",
            f"holds {workers} workers' state, and the attribute workers says {int(meta['workers'])}",
        )
    world = integer("world_size", 2)
    colocated = bool(meta.get("colocated", 0))  # every rank worked and served: no serving rank apart
    if world <= top_rank or world < workers + (0 if colocated else 1):
        c.fail(
            "attribute world_size",
            f"{world} cannot hold {workers} workers up to rank {top_rank}"
            + ("" if colocated else " and a server"),
        )
    integer("segments", 1)
    if meta.get("algorithm") != expect.algorithm:
        c.fail("attribute algorithm", f"{meta.get('algorithm')!r}, where /config says {expect.algorithm!r}")
    if not isinstance(meta.get("params_sha256"), str) or not _SHA256.match(meta["params_sha256"]):
        c.fail("attribute params_sha256", "must be 64 hexadecimal digits")
    for name in DESCRIPTIVE:  # what inspect prints: text, as qtrain writes it
        if not isinstance(meta.get(name), str):
            c.fail(f"attribute {name}", f"must be text, found {meta.get(name)!r}")
    try:
        hosts = json.loads(meta["hosts"])
    except ValueError:
        hosts = None
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        c.fail("attribute hosts", "must be a JSON list of host names")
