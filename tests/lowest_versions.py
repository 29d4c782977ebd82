"""Print the lowest versions ``pyproject.toml`` allows (``name==X`` for every ``name>=X`` of the
dependencies and of the ``dev`` extra's test tools), the pins ``make test-lowest`` installs to show
that the lower bounds really work. Run by the Makefile; no third-party imports."""

import re
import sys
from pathlib import Path

if sys.version_info < (3, 11):
    raise SystemExit(
        "lowest_versions: needs Python 3.11 or later (tomllib); make test-lowest PYTHON=python3.11"
    )
import tomllib  # noqa: E402

# what the tests of make test-lowest import from the dev extra (ruff, pandas and triton: not needed)
DEV_TOOLS = ("pytest", "hypothesis", "tensorboard")


def lowest(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(project["dependencies"])
    wanted += [d for d in project["optional-dependencies"]["dev"] if d.split(">=")[0] in DEV_TOOLS]
    pins = []
    for dep in wanted:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9a-z.]*)", dep.split(";")[0].strip())
        if m is None:
            raise SystemExit(f"lowest_versions: {dep!r} has no plain lower bound")
        pins.append(f"{m[1]}=={m[2]}")
    return pins


def _release(version: str) -> tuple[int, ...]:
    """'2.3' and '2.3.0' alike; a local part (+cu121) and a suffix (.post0) do not count."""
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0].split(".post")[0])]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def check(pins: list[str]) -> int:
    """Exit status 1, naming each one, when an installed version is not its pin."""
    from importlib.metadata import PackageNotFoundError, version

    wrong = []
    for pin in pins:
        name, want = pin.split("==")
        try:
            have = version(name)
        except PackageNotFoundError:
            have = "missing"
        if have == "missing" or _release(have) != _release(want):
            wrong.append(f"{name} {have} (pinned {want})")
    print("lowest_versions: " + ("; ".join(wrong) if wrong else f"all {len(pins)} pins installed"))
    return 1 if wrong else 0


if __name__ == "__main__":
    pins = lowest(Path(__file__).resolve().parents[1] / "pyproject.toml")
    if sys.argv[1:] == ["--check"]:
        sys.exit(check(pins))
    sys.stdout.write("".join(p + "\n" for p in pins))
