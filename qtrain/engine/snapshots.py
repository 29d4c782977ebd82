"""Snapshots of a rank's complete state for checkpoints, restoring them (bit-exact resume), and
the checkpoint file's contents; shared by the MPI server role and the simulator."""

from __future__ import annotations

import json

import numpy as np
import torch

import qtrain
from qtrain.io.run_dir import params_sha256


def rng_snapshot() -> dict:
    """The process-global torch and numpy generators (qtrain's own randomness uses explicit
    generators, but user plug-in models may draw from the global ones)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": np.asarray(keys),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }


def rng_restore(snap: dict) -> None:
    torch.set_rng_state(snap["torch"])
    n = snap["numpy"]
    np.random.set_state(
        ("MT19937", np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )


def to_cpu(tree):
    """A copy of a nested dict with every tensor on the CPU (for MPI transfer and HDF5)."""
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    return tree


def to_numpy(tree):
    """Tensors -> numpy arrays, for pickled MPI transfer (mpi4py's pickle-5 path cannot carry torch
    storages). Only used at start-up and at checkpoints, never on the hot path."""
    if isinstance(tree, dict):
        return {k: to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        return {"__tensor__": tree.detach().cpu().numpy()}
    return tree


def to_torch(tree):
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return torch.from_numpy(tree["__tensor__"])
        return {k: to_torch(v) for k, v in tree.items()}
    return tree


def worker_snapshot(
    engine, positions: list, lrs: list[float], buffers=None, extra=None, initial_lrs: list | None = None
) -> dict:
    """A worker's complete state for a checkpoint (``qtrain train``, the library and the
    simulator alike): its engine, its data positions (each shard's ``state_dict``, in the order
    the loop made them), the process RNGs, every param group's learning rate of its last step
    (``lr``: the first group's; ``group_lrs``: all of them, with several groups), and when present
    its replica's own model buffers, the user's ``extra`` (packed) and the param groups'
    ``initial_lr`` (``initial_lr``, ``group_initial_lrs``)."""
    snap = {
        "engine": engine.state_dict(),
        "shards": {str(i): p for i, p in enumerate(positions)},
        "rng": rng_snapshot(),
        "lr": float(lrs[0]),
    }
    if len(lrs) > 1:
        snap["group_lrs"] = torch.tensor([float(v) for v in lrs], dtype=torch.float64)
    if initial_lrs is not None and initial_lrs[0] is not None:
        snap["initial_lr"] = float(initial_lrs[0])
        if len(initial_lrs) > 1:
            snap["group_initial_lrs"] = torch.tensor([float(v) for v in initial_lrs], dtype=torch.float64)
    if buffers is not None:
        snap["buffers"] = buffers
    if extra is not None:
        snap["extra"] = extra
    return to_cpu(snap)


def snapshot_lrs(snap: dict, key: str = "lr") -> list[float] | None:
    """Every group's learning rate (``key`` "lr") or ``initial_lr`` (``key`` "initial_lr") of a
    worker snapshot; None when it has none."""
    if key not in snap:
        return None
    many = snap.get("group_lrs" if key == "lr" else "group_initial_lrs")
    return [float(v) for v in many] if many is not None else [float(snap[key])]


def worker_positions(snap: dict) -> list:
    """The data positions of a worker snapshot, in order (a checkpoint from before the library
    kept the built-in sampler's alone, as ``sampler``)."""
    if "shards" not in snap:
        return [snap["sampler"]]
    return [snap["shards"][k] for k in sorted(snap["shards"], key=int)]


def worker_restore(snap: dict, engine, samplers: list) -> None:
    """Restore ``worker_snapshot``'s engine, RNGs and the positions of ``samplers``."""
    engine.load_state_dict(snap["engine"])
    for sampler, position in zip(samplers, worker_positions(snap), strict=False):
        sampler.load_state_dict(position)
    rng_restore(snap["rng"])


def is_eval_step(cfg, step: int, steps: int, stopping: bool) -> bool:
    """Where the server evaluates: every ``train.eval_every`` steps, at the last step, and at an
    agreed stop."""
    return step % cfg.train.eval_every == 0 or step == steps or stopping


def is_checkpoint_step(cfg, step: int, steps: int, stopping: bool) -> bool:
    """Every ``checkpoint.every`` steps, at the last step, and at an agreed stop."""
    every = cfg.checkpoint.every
    return stopping or step == steps or (every > 0 and step % every == 0)


def checkpoint_contents(
    step: int,
    server,
    replica,
    worker_snaps: list,
    stats: dict,
    plan,
    mpi_library: str,
    hosts: list,
    buffers: dict | None = None,
) -> tuple[dict, dict]:
    """(tree, root attributes) of a checkpoint; see docs/hdf5-schema.md. Worker snapshots are in
    worker order and keyed by the worker's rank; ``buffers`` (models that have them) by name."""
    topology, setup = plan.topology, plan.setup
    master = server.master
    tree = {
        "step": step,
        "params": master.detach().cpu().clone(),
        "replica_params": replica.detach().cpu().clone(),
        "layout": json.dumps(plan.layout),
        "config": plan.config_text,
        "server": to_cpu({**server.state_dict(), "rng": rng_snapshot()}),
        "workers": {str(topology.worker_rank(i)): snap for i, snap in enumerate(worker_snaps)},
        "stats": stats,
    }
    if buffers is not None:
        tree["buffers"] = to_cpu(buffers)
    aliases = getattr(plan.layout, "aliases", None)  # tied parameters' other names (engine/flat.py)
    if aliases:
        tree["aliases"] = json.dumps(aliases)
    meta = {
        "params_sha256": params_sha256(master),
        "step": step,
        "workers": topology.num_workers,
        "world_size": topology.world_size,
        "segments": len(plan.partition),
        "algorithm": setup.algorithm.name,
        "roles": topology.describe(),
        "qtrain_version": qtrain.__version__,
        "torch_version": torch.__version__,
        "mpi_library": mpi_library,
        "hosts": json.dumps(hosts),
    }
    if topology.colocated:  # every rank worked and served (the file's contents do not depend on it)
        meta["colocated"] = 1
    return tree, meta
