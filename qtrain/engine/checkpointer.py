"""Writes a run's checkpoints: ``OUT/checkpoints/step-N.h5``, atomically, keeping the newest
``checkpoint.keep`` of this run's own: the ones it wrote and, after a resume, the ones up to the
step it resumed from (its own past). Checkpoints past that step (a later branch of the same run,
left by --resume PATH) are never pruned. Shared by the MPI server and the simulator, so their files
have one layout (docs/hdf5-schema.md)."""

from __future__ import annotations

from pathlib import Path

from qtrain.engine.divergence import require_finite
from qtrain.engine.snapshots import checkpoint_contents
from qtrain.io.checkpoint import checkpoint_name, prune, write_checkpoint


class Checkpointer:
    def __init__(self, out_dir: Path, plan, mpi_library: str, hosts: list, log=None, resume_step: int = 0):
        self.plan, self.mpi_library, self.hosts, self.log = plan, mpi_library, hosts, log
        self.resume_step, self.written = resume_step, set()
        self.dir = Path(out_dir) / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)

    def write(
        self, step: int, server, worker_snaps: list, recorder, replica_params, buffers: dict | None = None
    ) -> None:
        """``server``: the ServerEngine (master weights and state); ``worker_snaps`` in worker
        order; ``recorder``: whose statistics go in; ``replica_params``: what every worker holds;
        ``buffers``: the model buffers every replica continues from (None: the model has none)."""
        tree, meta = checkpoint_contents(
            step,
            server,
            replica_params,
            worker_snaps,
            recorder.state_dict(),
            self.plan,
            self.mpi_library,
            self.hosts,
            buffers,
        )
        require_finite(step, tree)
        write_checkpoint(self.dir / checkpoint_name(step), tree, meta)
        self.written.add(step)
        prune(self.dir, self.plan.cfg.checkpoint.keep, lambda s: s in self.written or s <= self.resume_step)
        if self.log is not None:
            self.log.info("checkpoint step %d written", step)
