"""One training step as pure, device-agnostic tensor code on flat vectors.

Driven by the in-process simulator (:mod:`qtrain.engine.simulator`) or by the MPI runtime
(:mod:`qtrain.runtime`); both call the same :class:`WorkerEngine` and :class:`ServerEngine`.
"""

from qtrain.engine.server import ServerEngine
from qtrain.engine.worker import WorkerEngine

__all__ = ["ServerEngine", "WorkerEngine"]
