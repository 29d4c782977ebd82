"""``--resume PATH|auto``: the serving rank picks and verifies a checkpoint and checks that it fits
this run; every worker gets the replica weights and its own state."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from qtrain.config.loader import from_yaml_text, to_dict
from qtrain.engine.checkpoint_files import load_run_checkpoint
from qtrain.io.checkpoint import CheckpointError, newest_valid

# sections a resumed run may change: how long and how it logs, where it runs, how it checkpoints,
# how the vector is cut (segments and serving ranks change no bit: every rule is elementwise, every
# state vector flat, every random draw keyed by the element's flat index)
MAY_CHANGE = {"train", "runtime", "checkpoint", "trace", "workers"}
# keys outside those sections that a user legitimately changes mid-run (a manual learning-rate drop)
MAY_CHANGE_KEYS = {"algorithm.lr"}


@dataclass
class ResumePoint:
    step: int
    path: Path | None
    tree: dict | None = None  # the whole checkpoint (serving rank)
    replica_params: object = None  # what every worker holds (working ranks)
    worker: dict | None = None  # this worker's saved state; None with --reset-worker-state
    worker_state_reset: bool = False
    buffers: dict | None = None  # the model buffers every worker continues from (working ranks)
    saved_lr: float | None = None  # algorithm.lr of the checkpoint's run (every rank)
    changes: dict | None = None  # key -> [checkpoint's value, this run's] (serving rank)
    serving: ResumePoint | None = None  # a co-located rank's serving side (the worker's is this one)


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def config_changes(saved_text: str, config_text: str) -> list[str]:
    """The keys a resume may not change that differ between the checkpoint's resolved config and
    this run's. The saved text is read through the config schema first, so a key the checkpoint's
    qtrain did not have yet counts as its default (``model.buffers``: checkpoints written before
    it existed resume)."""
    saved = to_dict(from_yaml_text(saved_text))
    now = yaml.safe_load(config_text)
    return [k for k in _diff(saved, now) if k.split(".")[0] not in MAY_CHANGE and k not in MAY_CHANGE_KEYS]


def resume_changes(saved_text: str, config_text: str) -> dict:
    """Every key the resumed run changes: key -> [the checkpoint's value, this run's] (what the
    log and ``summary.json`` list)."""
    saved = to_dict(from_yaml_text(saved_text))
    now = yaml.safe_load(config_text)

    def get(tree, key):
        for part in key.split("."):
            tree = tree.get(part) if isinstance(tree, dict) else None
        return tree

    return {k: [get(saved, k), get(now, k)] for k in _diff(saved, now)}


def load_for_resume(
    spec: str,
    out_dir: Path,
    config_text: str,
    workers: int,
    reset_worker_state: bool,
    warn,
    servers: int = 1,
    steps: int | None = None,
    layout: list | None = None,
):
    """Return (tree, path). ``spec`` is a path or ``auto`` (newest checkpoint in OUT/checkpoints
    that verifies). Raises CheckpointError with a one-line reason."""
    if spec == "auto":
        tree, meta, path = newest_valid(out_dir / "checkpoints", warn, read=load_run_checkpoint)
    else:
        path = Path(spec)
        tree, meta = load_run_checkpoint(path)
    changed = config_changes(tree["config"], config_text)
    if changed:
        raise CheckpointError(
            f"{path}: the run's config differs from the checkpoint's in {', '.join(changed)} "
            "(only train.*, runtime.*, checkpoint.*, trace.* and algorithm.lr may change on resume)"
        )
    if layout is not None:
        saved = [(n, int(o), tuple(shape)) for n, o, shape in json.loads(tree["layout"])]
        now = [(n, int(o), tuple(shape)) for n, o, shape in layout]
        if saved != now:
            first = next(
                (
                    f"{a[0]} {list(a[2])} there, {b[0]} {list(b[2])} here"
                    for a, b in zip(saved, now, strict=False)
                    if a != b
                ),
                None,
            )
            raise CheckpointError(
                f"{path} holds another model: {len(saved)} parameters against {len(now)} here"
                + (f", first difference {first}" if first else "")
            )
    saved_workers = int(meta["workers"])
    if saved_workers != workers and not reset_worker_state:
        raise CheckpointError(
            f"{path} was written by {saved_workers} workers, this run has {workers}: resume with "
            f"{saved_workers + servers} ranks, or pass --reset-worker-state to start the workers' "
            "moments and error buffers from zero (the server state is kept)"
        )
    if tree["step"] < 0:
        raise CheckpointError(f"{path}: negative step")
    if steps is not None and tree["step"] >= steps:
        raise CheckpointError(
            f"{path} is at step {tree['step']} and this run ends at step {steps}: nothing left to "
            f"train (raise train.steps above {tree['step']} to continue it)"
        )
    return tree, path


def distribute_checkpoint(topology, plan, request, out_dir: Path, echo) -> ResumePoint:
    """The serving rank loads and verifies the checkpoint, and the trace the run continues;
    workers get the replica parameters and their own state (numpy over MPI). Raises ``Refused``
    on every rank when either does not fit."""
    from qtrain.engine.snapshots import to_numpy, to_torch
    from qtrain.io.trace import read_for_resume
    from qtrain.runtime.startup import Refused

    backend, server = topology.backend, topology.server
    loaded = error = None
    if topology.is_lead:
        try:
            loaded = load_for_resume(
                request.resume,
                out_dir,
                plan.config_text,
                topology.num_workers,
                request.reset_worker_state,
                warn=lambda m: echo(f"qtrain: warning: {m}"),
                servers=0 if topology.colocated else len(topology.servers),
                steps=plan.setup.steps or None,  # 0: a library run, whose loop decides
                layout=plan.layout,
            )
            trace = out_dir / "trace.h5" if out_dir is not None and plan.cfg.trace.enabled else None
            if trace is not None and trace.exists():  # refused now, on every rank, rather than lost
                read_for_resume(trace, loaded[0]["step"])
        except (ValueError, OSError) as exc:
            error = str(exc)
    error = backend.bcast(error, root=server)
    if error:
        raise Refused(error)
    reset = request.reset_worker_state
    parts = common = None
    if topology.is_lead:
        tree, path = loaded
        same = len(tree["workers"]) == topology.num_workers and not reset
        parts = [None] * topology.world_size
        saved = sorted(tree["workers"], key=int)  # worker i's state whatever ranks served then
        for i, r in enumerate(topology.workers):
            parts[r] = to_numpy(tree["workers"][saved[i]]) if same else None
        for owner, r in enumerate(topology.servers[1:], start=1):  # the other serving ranks' shards
            cut = to_numpy(shard_of(tree, plan.partition.shard(owner)))
            parts[r] = {"worker": parts[r], "shard": cut} if topology.colocated else cut
        saved_lr = float(from_yaml_text(tree["config"]).algorithm.lr)
        common = to_numpy(
            {
                "step": tree["step"],
                "replica_params": tree["replica_params"],
                "buffers": tree.get("buffers"),
                "saved_lr": saved_lr,
                "path": str(path),  # the workers name it (session.shard's count of positions)
            }
        )
    mine = backend.scatter(parts, root=server)
    common = backend.bcast(common, root=server)
    if topology.colocated:  # this rank's worker state, and its serving side's cut (the lead: all)
        if topology.is_lead:
            lead = _lead_point(tree, path, plan, reset, saved_lr, echo)
            return _worker_point(to_numpy(common), parts[topology.rank], reset, lead)
        owner = ResumePoint(common["step"], None, tree=to_torch(mine["shard"]), worker_state_reset=reset)
        return _worker_point(common, mine["worker"], reset, owner)
    if topology.is_server and not topology.is_lead:
        return ResumePoint(common["step"], None, tree=to_torch(mine), worker_state_reset=reset)
    if topology.is_server:
        return _lead_point(tree, path, plan, reset, saved_lr, echo)
    return _worker_point(common, mine, reset)


def _lead_point(tree: dict, path: Path, plan, reset: bool, saved_lr: float, echo) -> ResumePoint:
    """The lead serving rank's: the whole checkpoint, and what the resume changes (said here)."""
    changes = resume_changes(tree["config"], plan.config_text)
    for key, (then, now) in changes.items():
        echo(f"qtrain: resume changes {key}: {then} -> {now}")
    return ResumePoint(
        tree["step"], path, tree=tree, worker_state_reset=reset, saved_lr=saved_lr, changes=changes
    )


def _worker_point(common: dict, mine, reset: bool, serving: ResumePoint | None = None) -> ResumePoint:
    """A worker's: the replica every worker holds and its own state (None: reset or refitted)."""
    from qtrain.engine.snapshots import to_torch

    c = to_torch(common)
    return ResumePoint(
        c["step"],
        Path(c["path"]),
        replica_params=c["replica_params"],
        worker=to_torch(mine) if mine is not None else None,
        worker_state_reset=reset,
        buffers=c["buffers"],
        saved_lr=float(c["saved_lr"]),
        serving=serving,
    )


def shard_of(tree: dict, shard: slice) -> dict:
    """What a serving rank other than the lead resumes from: its shard of the master copy, the
    replica and the server's state (engine/shards.cut_state), and the run's statistics."""
    from qtrain.engine.shards import cut_state

    server = {k: v for k, v in tree["server"].items() if k != "rng"}
    return {
        "params": tree["params"][shard],
        "replica_params": tree["replica_params"][shard],
        "server": cut_state(server, shard),
    }
