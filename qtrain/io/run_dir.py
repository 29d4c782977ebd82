"""The run directory: ``OUT/config.yaml`` (resolved config) and ``OUT/summary.json``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch


def params_sha256(params: torch.Tensor) -> str:
    """SHA-256 of the flat float32 parameter bytes (little-endian), the run's fingerprint."""
    return hashlib.sha256(params.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare_out_dir(out: str | Path) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create output directory {str(path)!r}: {exc.strerror}") from exc
    return path


def write_config(out: Path, yaml_text: str) -> None:
    write_atomic(out / "config.yaml", yaml_text)


def write_summary(out: Path, summary: dict) -> None:
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
