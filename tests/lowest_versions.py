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


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    sys.stdout.write("".join(p + "\n" for p in lowest(root / "pyproject.toml")))
