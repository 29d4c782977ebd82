"""``--resume PATH|auto``: pick and verify a checkpoint on rank 0, check that it fits this run."""

from __future__ import annotations

from pathlib import Path

import yaml

from qtrain.io.checkpoint import CheckpointError, newest_valid, read_checkpoint

# sections a resumed run may change: how long and how it logs, where it runs, how it checkpoints
MAY_CHANGE = {"train", "runtime", "checkpoint", "trace", "workers"}


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def load_for_resume(spec: str, out_dir: Path, config_text: str, workers: int, reset_worker_state: bool, warn):
    """Return (tree, path). ``spec`` is a path or ``auto`` (newest checkpoint in OUT/checkpoints
    that verifies). Raises CheckpointError with a one-line reason."""
    if spec == "auto":
        tree, meta, path = newest_valid(out_dir / "checkpoints", warn)
    else:
        path = Path(spec)
        tree, meta = read_checkpoint(path)
    saved = yaml.safe_load(tree["config"])
    now = yaml.safe_load(config_text)
    changed = [k for k in _diff(saved, now) if k.split(".")[0] not in MAY_CHANGE]
    if changed:
        raise CheckpointError(
            f"{path}: the run's config differs from the checkpoint's in {', '.join(changed)} "
            "(only train.*, runtime.*, checkpoint.*, trace.* may change on resume)"
        )
    saved_workers = int(meta["workers"])
    if saved_workers != workers and not reset_worker_state:
        raise CheckpointError(
            f"{path} was written by {saved_workers} workers, this run has {workers}: resume with "
            f"mpiexec -n {saved_workers + 1}, or pass --reset-worker-state to start the workers' moments "
            "and error buffers from zero (the server state is kept)"
        )
    if tree["step"] < 0:
        raise CheckpointError(f"{path}: negative step")
    return tree, path
