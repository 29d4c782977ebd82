"""The machine a benchmark ran on, recorded beside its results.

Absolute times and even ratios to the copy floor move with the host: the same "2-core" VM measured
41 GB/s copy with torch's AVX-512 kernels on 2026-11-25 and 12-14 GB/s with AVX2 on 2026-12-01,
and 1-bit Efficient-Adam's speed-up over fp32 on the 1 Gbit/s bench went from 9.5x to 3.6x with the
same code. Every benchmark's output names the CPU, torch's kernel capability, the cores and the
copy bandwidth it measured, so that runs on different hosts are not compared unawares.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

from qtrain.bench.timing import median_seconds

COPY_NUMEL = 1 << 24  # 64 MiB of float32 each way: well beyond the caches


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name as the kernel reports it, else ``platform.processor()`` or "unknown"."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def copy_bandwidth(numel: int = COPY_NUMEL, repeats: int = 5) -> float:
    """Bytes per second of ``y.copy_(x)`` on float32 CPU tensors (8n bytes moved), median of repeats,
    with torch's current thread count."""
    x = torch.ones(numel)
    y = torch.empty_like(x)
    return 8 * numel / median_seconds(lambda: y.copy_(x), torch.device("cpu"), repeats)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_host(copy_gbps: float | None = None) -> dict:
    """The host: CPU model, torch's CPU capability, cores, versions and copy bandwidth in GB/s with
    torch's thread count (measured here unless the caller measured it already)."""
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "numba": _version("numba"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "copy_gbps": copy_gbps if copy_gbps is not None else copy_bandwidth() / 1e9,
    }


def host_line(host: dict) -> str:
    """One line for a benchmark's header."""
    gpu = f", GPU {host['gpu']}" if host.get("gpu") else ""
    threads = host["torch_threads"]
    return (
        f"host: {host['cpu_model']} ({host['cpu_capability']}, {host['cores']} cores{gpu}), "
        f"copy {host['copy_gbps']:.1f} GB/s ({threads} thread{'s' if threads != 1 else ''}), "
        f"torch {host['torch']}"
    )
