"""``qtrain info``: versions, MPI library, CUDA-aware decision, GPUs, threads."""

from __future__ import annotations

import platform

import typer

from qtrain.io import strict_json


def collect() -> dict:
    import h5py
    import numpy
    import torch

    import qtrain
    from qtrain.engine.backend import DeviceBuffers
    from qtrain.runtime.backends import mpi

    missing = mpi.unavailable()
    if missing is None:
        library, cuda = mpi.library_version(), mpi.device_buffers("auto")
    else:
        library, cuda = f"none: {missing}", DeviceBuffers("no", "no MPI library")
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    from qtrain.runtime.backends import torch_dist

    torch_missing = torch_dist.missing_library()
    return {
        "qtrain": qtrain.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "mpi4py": mpi.mpi4py_version(),
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "mpi_library": library,
        "cuda_aware_mpi": cuda.answer,
        "cuda_aware_how": cuda.how,
        "torch_backend": f"none: {torch_missing}"
        if torch_missing
        else "gloo (runtime.backend: torch, torchrun)",
        "torch_cuda": torch.version.cuda,
        "gpus": gpus,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }


def info(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Print versions, the MPI library, whether it is CUDA-aware (and how that was decided), GPUs."""
    data = collect()
    if as_json:
        typer.echo(strict_json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        if key == "gpus":
            value = ", ".join(value) if value else "none visible"
        typer.echo(f"{key:<{width}}  {value}")
