"""What qtrain ships besides its code: the configs of ``configs/`` and the Slurm batch template of
``slurm/``. ``qtrain/shipped/`` links to those two folders of the repository, and the wheel carries
them as package data, so they are found the same way in a ``pip install`` and in a checkout.

A config argument is a path, or the name of a shipped config: ``default``, ``sgd.yaml`` or the
README's ``configs/default.yaml`` all name the shipped file when no such file exists where the
command runs (a file that exists always wins)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
CONFIGS = HERE / "configs"
SLURM_TEMPLATE = HERE / "slurm" / "train.sbatch"


def config_names() -> list[str]:
    """The shipped configs' names (``default``, ``sgd``, ...)."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def shipped_config(name: str) -> Path | None:
    """The shipped config ``name`` (with or without ``.yaml``, or as ``configs/NAME.yaml``)."""
    p = Path(name)
    if len(p.parts) > 2 or (len(p.parts) == 2 and p.parts[0] != "configs"):
        return None
    stem = p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name
    candidate = CONFIGS / f"{stem}.yaml"
    return candidate if stem and candidate.is_file() else None


def resolve_config(arg: str | Path) -> Path:
    """``arg`` when it exists, else the shipped config it names, else ``arg`` (whose reader then
    says that it does not exist)."""
    p = Path(arg)
    if p.exists():
        return p
    return shipped_config(str(arg)) or p


def describe(path: Path) -> str:
    """A config's opening comment up to its first full stop, on one line."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("#").strip())
        if words[-1].endswith("."):
            break
    return " ".join(words)
