"""The run directory: ``OUT/config.yaml`` (resolved config) and ``OUT/summary.json``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from qtrain.io import strict_json
from qtrain.io.disk_errors import write_error


def params_sha256(params: torch.Tensor) -> str:
    """SHA-256 of the flat float32 parameter bytes (little-endian), the run's fingerprint."""
    return hashlib.sha256(params.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``path.tmp`` and a rename; the temporary file is removed
    when the write fails (a full disk: an OSError naming ``path``)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(exc, path, f"writing {path.name}") from None


def run_files(path: Path) -> list[Path]:
    """The files a run writes that are in ``path``: config.yaml, summary.json, trace.h5 (and their
    .tmp, and the traces a resume set aside), checkpoints/step-*.h5(.tmp), logs/rank-*.log, and
    the live metrics metrics/rank-*.csv and tensorboard/rank-*/events.out.tfevents.*. Nothing else
    is ever touched."""
    found = [path / n for n in ("config.yaml", "summary.json", "trace.h5") if (path / n).is_file()]
    found += [p for n in ("config.yaml", "summary.json", "trace.h5") for p in path.glob(f"{n}.tmp")]
    found += sorted(p for p in path.glob("trace-before-resume-at-step-*.h5") if p.is_file())
    for sub, pattern in (
        ("checkpoints", "step-*.h5*"),
        ("logs", "rank-*.log"),
        ("metrics", "rank-*.csv"),
        ("tensorboard", "rank-*/events.out.tfevents.*"),
    ):
        if (path / sub).is_dir():
            found += sorted(p for p in (path / sub).glob(pattern) if p.is_file())
    return found


def _top(path: Path, f: Path) -> str:
    return f.relative_to(path).parts[0]


def checkpoint_files(path: Path, files: list[Path]) -> list[Path]:
    """The checkpoints among ``files`` (of :func:`run_files`)."""
    return [f for f in files if _top(path, f) == "checkpoints" and f.suffix == ".h5"]


def describe_files(path: Path, files: list[Path]) -> str:
    def top(f: Path) -> str:
        return _top(path, f)

    ckpts = checkpoint_files(path, files)
    counted = ("logs", "metrics", "tensorboard")
    others = [str(f.relative_to(path)) for f in files if f not in ckpts and top(f) not in counted]
    logs = sum(1 for f in files if top(f) == "logs")
    live = sum(1 for f in files if top(f) in ("metrics", "tensorboard"))
    parts = others + ([f"{len(ckpts)} checkpoints ({', '.join(f.name for f in ckpts)})"] if ckpts else [])
    return ", ".join(
        parts + ([f"{logs} rank logs"] if logs else []) + ([f"{live} live-metric files"] if live else [])
    )


def continues_run_in(out: Path, resume: str | bool | None) -> bool:
    """Whether ``--resume`` continues the run whose files are in ``out``: True or ``auto``, or a
    checkpoint under ``out``. A checkpoint from elsewhere starts a run of its own there, whose
    config, summary, trace and checkpoints must not mix with another run's."""
    if resume is True or resume == "auto":
        return True
    if not resume:
        return False
    return Path(resume).resolve().is_relative_to(out.resolve())


def prepare_out_dir(
    out: str | Path, resume: str | bool | None = None, overwrite: bool = False
) -> tuple[Path, str]:
    """Create ``out``; refuse one that holds another run's files unless this run continues it
    (:func:`continues_run_in`) or ``overwrite`` (then those files, and only those, are removed).
    Returns (path, what was removed or ""). Raises ValueError naming the directory and what is in
    it."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {str(path)!r} is a file, not a directory")
    removed = ""
    continues = continues_run_in(path, resume)
    files = run_files(path) if path.is_dir() and not continues else []
    if files and not overwrite:
        foreign = f", and --resume {str(resume)!r} is not one of its checkpoints" if resume else ""
        # a run that never checkpointed (a failed start leaves its config and rank logs) has
        # nothing --resume auto could continue
        resumable = bool(checkpoint_files(path, files))
        cont = "pass --resume auto to continue it, " if resumable else "it has no checkpoint to resume: pass "
        raise ValueError(
            f"--out {str(path)!r} holds another run ({describe_files(path, files)}){foreign}: {cont}"
            "--overwrite to remove those files first, or choose another --out"
        )
    if files:
        removed = describe_files(path, files)
        for f in files:
            try:
                f.unlink()
            except OSError as exc:
                raise ValueError(f"--overwrite: cannot remove {str(f)!r}: {exc.strerror or exc}") from None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create output directory {str(path)!r}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"output directory {str(path)!r} is not writable")
    return path, removed


def write_config(out: Path, yaml_text: str) -> None:
    write_atomic(out / "config.yaml", yaml_text)


def write_summary(out: Path, summary: dict) -> None:
    """``OUT/summary.json``, strict JSON: a loss that is NaN (never reported, or diverged) or
    infinite is written as ``null`` (``io/strict_json.py``)."""
    write_atomic(out / "summary.json", strict_json.dumps(summary, indent=2) + "\n")
