"""The job's backend (``engine/backend.py``): which one this process uses, and the one instance.

The backend is chosen before any config is read (the config is agreed over it):

1. ``QTRAIN_BACKEND=mpi|torch`` in the environment (``qtrain slurm render`` sets it for
   ``runtime.backend: torch``);
2. ``torch`` when ``torchrun`` started the process (it sets ``TORCHELASTIC_RUN_ID``);
3. ``mpi`` otherwise (``mpiexec``, ``mpirun``, ``srun``).

The config's ``runtime.backend`` (auto, mpi, torch) must then agree with it: start-up refuses a
config that names the other one, saying how to launch it (``runtime/startup.py``).
"""

from __future__ import annotations

import os

from qtrain.engine.backend import Backend

NAMES = ("mpi", "torch")
ENV = "QTRAIN_BACKEND"
_WORLD: Backend | None = None


def chosen() -> str:
    """The backend this process uses (see the module's docstring); a bad ``QTRAIN_BACKEND`` is a
    ValueError naming it."""
    name = os.environ.get(ENV, "")
    if name:
        if name not in NAMES:
            raise ValueError(f"{ENV}={name!r}: it must be one of {', '.join(NAMES)}")
        return name
    return "torch" if os.environ.get("TORCHELASTIC_RUN_ID") else "mpi"


def unavailable(name: str | None = None) -> str | None:
    """None when backend ``name`` (default: the chosen one) can start in this process; else one
    line saying why not and what to do (a bad ``QTRAIN_BACKEND`` included)."""
    if name is None:
        try:
            name = chosen()
        except ValueError as exc:
            return str(exc)
    if name == "mpi":
        from qtrain.runtime.backends.mpi import unavailable as mpi_unavailable

        return mpi_unavailable()
    from qtrain.runtime.backends.torch_dist import unavailable as torch_unavailable

    return torch_unavailable()


def world() -> Backend:
    """This process's backend over the whole job, started on first use."""
    global _WORLD
    if _WORLD is None:
        if chosen() == "mpi":
            from qtrain.runtime.backends.mpi import MpiBackend

            _WORLD = MpiBackend()
        else:
            from qtrain.runtime.backends.torch_dist import TorchBackend

            _WORLD = TorchBackend.from_env()
    return _WORLD


def started() -> Backend | None:
    """The backend if :func:`world` started it, else None (an abort before start-up)."""
    return _WORLD
