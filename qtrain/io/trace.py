"""The communication trace ``OUT/trace.h5``: one row per step per rank, written by rank 0.

Datasets (chunked, resizable, written in SWMR mode so readers can follow a live run):
  /steps  compound rows, columns in ``TRACE_DTYPE`` (units in the dataset's ``units`` attribute)
  /evals  (step, test_loss, test_accuracy) after every evaluation
  /timeline_server, /timeline_workers  (MPI runs, every ``trace.timeline_every`` steps) when each
          segment of a step was ready, sent, aggregated, broadcast, arrived and applied, per rank
Root attributes describe the run (algorithm, codecs, bits per element, world size, numel, fp32
message size). Rows are buffered and flushed every ``trace.flush_every`` steps; a run killed at
any point leaves a file readable (with ``swmr=True``) up to its last flush.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
from pathlib import Path

import h5py
import numpy as np

from qtrain.io import abandoned_files, strict_json
from qtrain.io.disk_errors import write_error
from qtrain.io.guarded_hdf5 import UntrustedItem, catalogue, open_swmr
from qtrain.memory import MemoryBoundError

TRACE_DTYPE = np.dtype(
    [
        ("step", "<u4"),
        ("rank", "<u2"),
        ("role", "u1"),  # 0 server, 1 worker
        ("bytes_sent", "<u8"),
        ("bytes_recv", "<u8"),
        ("compute_s", "<f8"),
        ("encode_s", "<f8"),
        ("comm_s", "<f8"),
        ("decode_s", "<f8"),
        ("wait_s", "<f8"),
        ("loss", "<f8"),
        ("up_rel_error", "<f8"),
        ("up_ef_norm", "<f8"),
        ("down_rel_error", "<f8"),
        ("down_ef_norm", "<f8"),
        ("wall_s", "<f8"),
        ("wire_recv_bytes", "<u8"),
        ("wire_sent_bytes", "<u8"),
        ("decode_cpu_s", "<f8"),
    ]
)
# /steps as written before decode_cpu_s (qtrain 2026-12-03 and earlier): read as today's rows, with 0
STEPS_BEFORE_DECODE_CPU = np.dtype(
    [(n, TRACE_DTYPE.fields[n][0]) for n in TRACE_DTYPE.names if n != "decode_cpu_s"]
)
UNITS = {
    "step": "step (1-based)",
    "rank": "MPI rank (the root attribute server_ranks names the serving ranks)",
    "role": "0 server, 1 worker",
    "bytes_sent": "bytes (packed messages; the server counts one downlink copy per worker)",
    "bytes_recv": "bytes",
    "compute_s": "seconds (worker: forward+backward; server: evaluation)",
    "encode_s": "seconds (worker: worker rule + uplink encode; server: server rule + downlink encode)",
    "comm_s": "seconds (worker: uplink send until the downlink arrived; server: broadcast)",
    "decode_s": "seconds (worker: decode + apply downlink; server: decode + average uplinks)",
    "wait_s": "seconds (server: waiting for the uplinks; worker: 0, its waiting is inside comm_s)",
    "loss": "training loss of the worker's batch (server: mean over workers)",
    "up_rel_error": "||Q(v) - v|| / ||v|| of the uplink (server: mean over workers)",
    "up_ef_norm": "||e|| worker error buffer after the step (0 without EF; server: mean)",
    "down_rel_error": "||Q(v) - v|| / ||v|| of the downlink",
    "down_ef_norm": "||E|| server error buffer after the step (0 without EF)",
    "wall_s": "seconds since the run (this process) started, at the end of the step",
    "wire_recv_bytes": "bytes the server's network interface received in the step, headers included "
    "(QTRAIN_WIRE_DEVICE; 0 when not measured)",
    "wire_sent_bytes": "bytes the server's network interface sent in the step (as wire_recv_bytes)",
    "decode_cpu_s": "CPU seconds of this serving process (all its threads) while decode_s was timed "
    "(decode_s is wall time, which also counts time the OS gave the core to another process; with "
    "runtime.threads > 1 this can exceed it; GPU work not counted); worker: 0; 0 in traces written "
    "before it existed",
}
# The timeline (MPI runs): instants of each segment's journey through one step, in seconds since
# the server began the step, on the server's clock (workers' clocks are mapped onto it with the
# offsets measured at start-up, runtime/clock_sync.py).
TIMELINE_SERVER_DTYPE = np.dtype(
    [
        ("step", "<u4"),
        ("segment", "<u2"),
        ("uplinks_in_s", "<f8"),
        ("aggregated_s", "<f8"),
        ("encoded_s", "<f8"),
        ("posted_s", "<f8"),
        ("done_s", "<f8"),
    ]
)
TIMELINE_WORKER_DTYPE = np.dtype(
    [
        ("step", "<u4"),
        ("rank", "<u2"),
        ("segment", "<u2"),
        ("start_s", "<f8"),
        ("encode_start_s", "<f8"),
        ("posted_s", "<f8"),
        ("backward_end_s", "<f8"),
        ("arrived_s", "<f8"),
        ("applied_s", "<f8"),
    ]
)
TIMELINE_UNITS = {
    "timeline_server": {
        "uplinks_in_s": "every worker's uplink of the segment has arrived",
        "aggregated_s": "the uplinks are decoded and averaged",
        "encoded_s": "server rule + downlink encode done",
        "posted_s": "its downlink broadcast was posted (after those of all lower segments)",
        "done_s": "the broadcast completed at the server",
    },
    "timeline_workers": {
        "start_s": "the worker began the step (forward pass)",
        "encode_start_s": "backward had completed the segment: worker rule + encode began",
        "posted_s": "the encoded segment was handed to MPI (Isend)",
        "backward_end_s": "the worker's backward pass ended (the same for every segment)",
        "arrived_s": "the segment's downlink arrived",
        "applied_s": "the downlink was decoded into the worker's parameters",
    },
}
TIMELINE_DTYPES = {"timeline_server": TIMELINE_SERVER_DTYPE, "timeline_workers": TIMELINE_WORKER_DTYPE}
EVAL_DTYPE = np.dtype([("step", "<u4"), ("test_loss", "<f8"), ("test_accuracy", "<f8")])
# what a library user logs (``session.log(name=value)``): one row per worker, name and step
METRIC_NAME_BYTES = 64
METRIC_DTYPE = np.dtype(
    [("step", "<u4"), ("rank", "<u4"), ("name", f"S{METRIC_NAME_BYTES}"), ("value", "<f8")]
)


class TraceWriter:
    def __init__(self, path: Path, attrs: dict, flush_every: int, resume_step: int | None = None, echo=print):
        """A trace at ``path``; with ``resume_step`` an existing one keeps its rows up to that step,
        unless other ranks wrote them (a resume with another world size or other serving ranks):
        that file is kept whole beside as ``trace-before-resume-at-step-N.h5`` and a new trace
        begins (``echo`` says so). An existing trace that does not read is refused
        (``read_for_resume``), never begun anew over its rows."""
        self.path = Path(path)
        self.flush_every = flush_every
        self._rows: list[np.ndarray] = []
        self._evals: list[tuple] = []
        self._timeline: dict[str, list[np.ndarray]] = {name: [] for name in TIMELINE_DTYPES}
        self._metrics: list[np.ndarray] = []
        kept_steps = kept_evals = None
        kept_timeline: dict = {}
        if resume_step is not None and self.path.exists():
            s, e, old = read_for_resume(self.path, resume_step)
            if _same(old, attrs, ("world_size", "server_ranks")):
                kept_steps, kept_evals = s[s["step"] <= resume_step], e[e["step"] <= resume_step]
                if _same(old, attrs, ("segments", "segment_owners")):  # else rows of another cut
                    for name, rows in read_timeline(self.path).items():
                        kept_timeline[name] = rows[rows["step"] <= resume_step]
                m = read_metrics(self.path)
                kept_timeline["metrics"] = m[m["step"] <= resume_step]
            else:
                aside = _aside_name(self.path, resume_step)
                os.replace(self.path, aside)
                echo(
                    f"qtrain: {self.path.name} was written by {old['world_size']} ranks, ranks "
                    f"{_value(old, 'server_ranks')} serving; this run has {attrs['world_size']}, ranks "
                    f"{_value(attrs, 'server_ranks')} serving: kept as {aside.name}, a new trace begins"
                )
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self._create(tmp, attrs, kept_steps, kept_evals, kept_timeline)
        except BaseException as exc:
            self._discard(exc)
            tmp.unlink(missing_ok=True)
            if isinstance(exc, (OSError, RuntimeError, ValueError)):
                raise write_error(exc, self.path, "creating the trace") from None
            raise

    def _create(self, tmp: Path, attrs: dict, kept_steps, kept_evals, kept_timeline: dict) -> None:
        self.file = None
        self.file = h5py.File(tmp, "w", libver=("v110", "v110"))  # SWMR needs >= 1.10; Debian h5dump is 1.10
        for k, v in attrs.items():
            self.file.attrs[k] = v if not isinstance(v, (dict, list)) else strict_json.dumps(v)
        self.steps = self.file.create_dataset(
            "steps", shape=(0,), maxshape=(None,), dtype=TRACE_DTYPE, chunks=(4096,)
        )
        self.steps.attrs["units"] = json.dumps(UNITS)
        self.evals = self.file.create_dataset(
            "evals", shape=(0,), maxshape=(None,), dtype=EVAL_DTYPE, chunks=(256,)
        )
        self.evals.attrs["units"] = json.dumps(
            {
                "step": "step",
                "test_loss": "mean loss on the test split",
                "test_accuracy": "fraction correct (NaN for regression)",
            }
        )
        self.timeline = {}
        for name, dtype in TIMELINE_DTYPES.items():
            ds = self.file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,))
            ds.attrs["units"] = json.dumps(
                {"step": "step", "segment": "segment index", **TIMELINE_UNITS[name]}
                | ({"rank": "MPI rank"} if "rank" in dtype.names else {})
            )
            self.timeline[name] = ds
        self.metrics = self.file.create_dataset(
            "metrics", shape=(0,), maxshape=(None,), dtype=METRIC_DTYPE, chunks=(1024,)
        )
        self.metrics.attrs["units"] = json.dumps(
            {
                "step": "steps done when logged",
                "rank": "MPI rank",
                "name": "session.log key",
                "value": "as logged",
            }
        )
        kept_metrics = kept_timeline.pop("metrics", None)
        if kept_metrics is not None:
            self._append(self.metrics, kept_metrics)
        if kept_steps is not None:
            self._append(self.steps, kept_steps)
            self._append(self.evals, kept_evals)
            for name, rows in kept_timeline.items():
                self._append(self.timeline[name], rows)
        self.file.flush()
        os.replace(tmp, self.path)
        self.file.swmr_mode = True

    @staticmethod
    def _append(ds, rows: np.ndarray) -> None:
        if len(rows):
            n = ds.shape[0]
            ds.resize((n + len(rows),))
            ds[n:] = rows

    def add_rows(self, rows: np.ndarray) -> None:
        self._rows.append(rows)

    def add_timeline(self, name: str, rows: np.ndarray) -> None:
        """Rows of ``timeline_server`` or ``timeline_workers``."""
        self._timeline[name].append(rows)

    def add_metrics(self, rank: int, rows: list[tuple[int, str, float]]) -> None:
        """A worker's ``session.log`` rows: (step, name, value)."""
        if rows:
            out = np.zeros(len(rows), dtype=METRIC_DTYPE)
            out["step"] = [r[0] for r in rows]
            out["rank"] = rank
            out["name"] = [r[1].encode()[:METRIC_NAME_BYTES] for r in rows]
            out["value"] = [r[2] for r in rows]
            self._metrics.append(out)

    def add_eval(self, step: int, loss: float, accuracy: float | None) -> None:
        self._evals.append((step, loss, np.nan if accuracy is None else accuracy))

    def maybe_flush(self, step: int) -> None:
        if step % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        try:
            self._flush()
        except (OSError, RuntimeError, ValueError) as exc:
            self._discard(exc)
            raise write_error(exc, self.path, "writing the trace") from None

    def _discard(self, exc: BaseException) -> None:
        """Give up a file HDF5 can no longer write, after ``exc``: drop the handles that the
        failure's traceback holds and close the file, with HDF5's complaints silenced (freeing a
        dataset flushes its chunk cache, which fails again and would print tracebacks after the one
        line that says what happened). When even the close fails, HDF5 still holds the file: its
        handles go to ``abandoned_files``, never freed, and the process ends without tearing the
        library down (see that module)."""
        hook = sys.unraisablehook
        sys.unraisablehook = lambda _: None
        try:
            traceback.clear_frames(exc.__traceback__)
            handles = (
                self.__dict__.get("file"),
                self.__dict__.get("steps"),
                self.__dict__.get("evals"),
                self.__dict__.get("timeline"),
                self.__dict__.get("metrics"),
            )
            self.file = self.steps = self.evals = self.metrics = None
            self.timeline = {}
            if handles[0] is not None:
                try:
                    handles[0].close()
                except Exception:  # noqa: BLE001 - HDF5 kept the file open: never free its handles
                    abandoned_files.keep(*handles)
                    return
            del handles
            gc.collect()
        finally:
            sys.unraisablehook = hook

    def _flush(self) -> None:
        if self._rows:
            self._append(self.steps, np.concatenate(self._rows))
            self._rows = []
        if self._evals:
            self._append(self.evals, np.array(self._evals, dtype=EVAL_DTYPE))
            self._evals = []
        for name, parts in self._timeline.items():
            if parts:
                self._append(self.timeline[name], np.concatenate(parts))
                self._timeline[name] = []
            self.timeline[name].flush()
        if self._metrics:
            self._append(self.metrics, np.concatenate(self._metrics))
            self._metrics = []
        self.metrics.flush()
        self.steps.flush()
        self.evals.flush()
        self.file.flush()

    def close(self) -> None:
        self.flush()
        try:
            self.file.close()
        except (OSError, RuntimeError, ValueError) as exc:
            self._discard(exc)
            raise write_error(exc, self.path, "closing the trace") from None


def server_row(
    step: int,
    rank: int,
    sizes,
    down_bytes: int,
    worker_ranks,
    times: dict,
    loss: float,
    up_errors,
    up_ef,
    down_stats: dict,
    wire: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """The server's row of one step. ``sizes``: each worker's uplink bytes this step; ``down_bytes``:
    the downlink bytes one worker receives; ``times`` has wait_s, decode_s, encode_s, comm_s,
    compute_s and wall_s; ``wire``: (received, sent) bytes on the server's interface."""
    row = np.zeros(1, dtype=TRACE_DTYPE)
    row["wire_recv_bytes"], row["wire_sent_bytes"] = wire
    row["step"], row["rank"], row["role"] = step, rank, 0
    row["bytes_sent"], row["bytes_recv"] = down_bytes * len(worker_ranks), int(np.sum(sizes))
    for key, value in times.items():
        row[key] = value
    row["loss"] = loss
    row["up_rel_error"], row["up_ef_norm"] = float(np.mean(up_errors)), float(np.mean(up_ef))
    row["down_rel_error"] = down_stats.get("down_rel_error", 0.0)
    row["down_ef_norm"] = down_stats.get("down_ef_norm", 0.0)
    return row


def worker_rows(
    step: int,
    worker_ranks,
    sizes,
    down_bytes: int,
    compute_s,
    encode_s,
    losses,
    up_errors,
    up_ef,
    down_stats: dict,
) -> np.ndarray:
    """One row per worker, in worker order; comm_s and decode_s are filled in when they are known."""
    rows = np.zeros(len(worker_ranks), dtype=TRACE_DTYPE)
    rows["step"], rows["rank"], rows["role"] = step, worker_ranks, 1
    rows["bytes_sent"], rows["bytes_recv"] = sizes, down_bytes
    rows["compute_s"], rows["encode_s"], rows["loss"] = compute_s, encode_s, losses
    rows["up_rel_error"], rows["up_ef_norm"] = up_errors, up_ef
    rows["down_rel_error"] = down_stats.get("down_rel_error", 0.0)
    rows["down_ef_norm"] = down_stats.get("down_ef_norm", 0.0)
    return rows


TRACE_DATASETS = {"steps": TRACE_DTYPE, "evals": EVAL_DTYPE, **TIMELINE_DTYPES, "metrics": METRIC_DTYPE}
_REQUIRED_DATASETS = ("steps", "evals")
# root attributes (engine.accounting.trace_attrs) -> (type, lowest value or JSON kind)
_INT_ATTRS = {
    "fp32_message_bytes": 0,
    "numel": 0,
    "segments": 1,
    "world_size": 2,
    "workers": 1,
    "steps_planned": 0,
}
_FLOAT_ATTRS = ("uplink_bits_per_element", "downlink_bits_per_element")
_JSON_ATTRS = {"uplink_codec": dict, "downlink_codec": dict, "server_ranks": list}
_OPTIONAL_JSON_ATTRS = ("segment_owners",)  # traces before several servers lack it (all the lead's)


class TraceError(ValueError):
    """A trace is missing, unreadable or not the layout qtrain writes; the message names the file
    and the item."""


def _check_attributes(f, path: Path) -> dict:
    """The root attributes, each of the type and range qtrain writes, JSON ones decoded."""
    out = {}
    for name, value in f.attrs.items():
        if isinstance(value, str) and (name in _JSON_ATTRS or name in _OPTIONAL_JSON_ATTRS):
            try:
                value = json.loads(value)
            except ValueError:
                raise TraceError(f"{path}: attribute {name} is not JSON") from None
        out[name] = value
    for name, low in _INT_ATTRS.items():
        v = out.get(name)
        if not isinstance(v, np.integer) or v < low:
            raise TraceError(f"{path}: attribute {name} must be an integer >= {low}, found {v!r}")
        out[name] = int(v)
    for name in _FLOAT_ATTRS:
        v = out.get(name)
        if not isinstance(v, np.floating) or not np.isfinite(v) or v < 0:
            raise TraceError(f"{path}: attribute {name} must be a finite number >= 0, found {v!r}")
    for name, kind in _JSON_ATTRS.items():
        if not isinstance(out.get(name), kind):
            raise TraceError(
                f"{path}: attribute {name} must be a JSON {kind.__name__}, found {out.get(name)!r}"
            )
    ranks = out["server_ranks"]
    if not ranks or not all(type(r) is int and 0 <= r < out["world_size"] for r in ranks):
        raise TraceError(f"{path}: attribute server_ranks must list ranks below world_size, found {ranks!r}")
    owners = out.get("segment_owners", [])
    if "segment_owners" in out and (
        not isinstance(owners, list)
        or len(owners) != out["segments"]
        or not all(type(r) is int and r in ranks for r in owners)
    ):
        raise TraceError(
            f"{path}: attribute segment_owners must list one of server_ranks per segment, found {owners!r}"
        )
    for name in ("algorithm", "qtrain_version"):
        if not isinstance(out.get(name), str):
            raise TraceError(f"{path}: attribute {name} must be text, found {out.get(name)!r}")
    return out


def _checked(f, path: Path) -> dict:
    """Check an open trace through the guarded walk (no links, filters or outside storage, nothing
    declared that is not stored, within memory) and against the trace layout: only the datasets
    in ``TRACE_DATASETS``, each 1-D rows of exactly its columns, and the root attributes. Returns
    the attributes. Raises TraceError naming the item."""
    try:
        cat = catalogue(f, frozenset(), f"trace {path}")
        for ds in cat.datasets.values():
            ds.refresh()  # a live run's rows up to its last flush
        cat = catalogue(f, frozenset(), f"trace {path}")
    except (UntrustedItem, MemoryBoundError) as exc:
        raise TraceError(f"{path}: {exc}") from None
    if cat.groups:
        raise TraceError(f"{path}: {cat.groups[0]} is a group, which a trace does not have")
    for where, ds in cat.datasets.items():
        dtype = TRACE_DATASETS.get(where[1:])
        if dtype is None:
            raise TraceError(f"{path}: {where} is not a dataset a trace has")
        older = where == "/steps" and ds.dtype == STEPS_BEFORE_DECODE_CPU
        if (ds.dtype != dtype and not older) or ds.ndim != 1:
            raise TraceError(
                f"{path}: {where} holds {ds.dtype} of shape {list(ds.shape)}, where a trace has 1-D rows "
                f"of the columns {', '.join(dtype.names)}"
            )
    for name in _REQUIRED_DATASETS:
        if f"/{name}" not in cat.datasets:
            raise TraceError(f"{path}: /{name} is missing")
    return _check_attributes(f, path)


def _read_checked(path: Path, read):
    """``read(f, attrs)`` on the checked trace at ``path`` (SWMR: a live run's file too)."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace {str(path)!r} does not exist")
    try:
        with open_swmr(path) as f:
            return read(f, _checked(f, path))
    except TraceError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, RecursionError) as exc:
        raise TraceError(f"{path}: not a readable qtrain trace ({exc})") from None


def _check_rows(rows: np.ndarray, attrs: dict, path: Path) -> None:
    """Every row's role and rank as the run's attributes say: role 0 exactly on the serving ranks
    (on every rank when co-located),
    ranks below world_size, and a server row for every step that has worker rows."""
    servers = np.asarray(attrs["server_ranks"])
    if len(rows) == 0:
        return
    bad = (rows["role"] > 1) | (rows["rank"] >= attrs["world_size"])
    if not attrs.get("colocated", 0):  # co-located: every rank has a worker row and a server row
        bad |= (rows["role"] == 0) != np.isin(rows["rank"], servers)
    if bad.any():
        i = int(np.argmax(bad))
        r = rows[i]
        raise TraceError(
            f"{path}: /steps row {i} (step {r['step']}, rank {r['rank']}, role {r['role']}) "
            f"does not fit world_size {attrs['world_size']} and server_ranks {servers.tolist()}"
        )
    missing = np.setdiff1d(rows["step"][rows["role"] == 1], rows["step"][rows["role"] == 0])
    if len(missing):
        raise TraceError(f"{path}: /steps has worker rows but no server row for step {int(missing[0])}")


def _aside_name(path: Path, step: int) -> Path:
    """Where a resumed run keeps a trace other ranks wrote (a free name: an earlier one stays)."""
    aside = path.with_name(f"{path.stem}-before-resume-at-step-{step}{path.suffix}")
    n = 1
    while aside.exists():
        aside, n = path.with_name(f"{path.stem}-before-resume-at-step-{step}.{n}{path.suffix}"), n + 1
    return aside


def _value(attrs: dict, key: str):
    """An attribute as Python data, whether read (decoded) or about to be written (JSON text); a
    trace from before ``segment_owners`` had every segment on its one serving rank."""
    if key == "segment_owners" and key not in attrs:
        return [_value(attrs, "server_ranks")[0]] * int(attrs["segments"])
    v = attrs.get(key)
    return json.loads(v) if isinstance(v, str) else (v.tolist() if hasattr(v, "tolist") else v)


def _same(old: dict, new: dict, keys: tuple[str, ...]) -> bool:
    """Whether a trace's attributes (read) and a resumed run's (to write) agree on ``keys``."""
    return all(_value(old, k) == _value(new, k) for k in keys)


def read_trace(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(steps rows, eval rows, run attributes) of a trace, live or finished."""

    def read(f, attrs):
        rows = f["steps"][()]
        if rows.dtype != TRACE_DTYPE:  # an older trace (STEPS_BEFORE_DECODE_CPU): its missing column is 0
            upgraded = np.zeros(rows.shape, dtype=TRACE_DTYPE)
            for name in rows.dtype.names:
                upgraded[name] = rows[name]
            rows = upgraded
        _check_rows(rows, attrs, path)
        return rows, f["evals"][()], attrs

    return _read_checked(path, read)


def read_for_resume(path: Path, resume_step: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """``read_trace`` of the trace a run resumed at ``resume_step`` continues. One that does not
    read (truncated, damaged, not a trace) is refused with what to do: a resumed run once began a
    new trace over it, its rows lost without a word, and read a truncated one's missing evaluations
    as zeros. Checked before training (``runtime.resume``) and again by ``TraceWriter``."""
    try:
        return read_trace(path)
    except TraceError as exc:
        raise TraceError(
            f"{exc}; resuming at step {resume_step} continues this trace: move {Path(path).name} aside "
            "to begin a new one"
        ) from None


def read_timeline(path: Path) -> dict[str, np.ndarray]:
    """The trace's timeline rows (``timeline_server``, ``timeline_workers``); empty arrays for a
    simulator run or a trace written before the timeline existed."""

    def read(f, _):
        return {
            name: f[name][()] if name in f else np.zeros(0, dtype=dtype)
            for name, dtype in TIMELINE_DTYPES.items()
        }

    return _read_checked(path, read)


def read_metrics(path: Path) -> np.ndarray:
    """The trace's ``session.log`` rows (``METRIC_DTYPE``); empty for a run that logged none or a
    trace written before the library existed."""
    return _read_checked(
        path, lambda f, _: f["metrics"][()] if "metrics" in f else np.zeros(0, dtype=METRIC_DTYPE)
    )
