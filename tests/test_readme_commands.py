"""The README's shell examples run in order, as a new user types them: the library's launch lines,
the default job of ``make run``, then every command of "Using it" (each one's files are the next
one's input: ``compare runs/q runs/default``, ``checkpoint inspect`` of a file ``checkpoint.keep``
kept). Once, the README's ``--resume auto`` example right after a finished run exited 2 and its
``inspect`` named a pruned checkpoint; this test would have caught both.

The run takes about 9 minutes on 2 cores (``reproduce ecq-linear`` alone 4), so it is a ``make
soak`` test; ``make test`` checks that the README still lists them."""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import mpiexec_command

pytestmark = pytest.mark.mpi

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# commands the README itself says end non-zero
EXPECTED_EXIT = {"--resume auto": 2}
# run elsewhere: root, network namespaces and minutes of traffic (tests/test_bench_network.py)
LEFT_OUT = {"bench network": "tests/test_bench_network.py"}


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def commands(text: str) -> list[str]:
    """The commands of the text's ```bash blocks: comments dropped, continuation lines joined."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


def in_order() -> list[str]:
    library = commands(section("Your model, your data, your loop: the library"))
    make_run = re.search(
        r"`(mpiexec -n \d+ qtrain train configs/default\.yaml[^`]*)`", section("What `make run` does")
    )
    return [*library, make_run[1].replace(" qtrain ", " .venv/bin/qtrain "), *commands(section("Using it"))]


def test_the_readme_lists_its_commands():
    cmds = in_order()
    assert len(cmds) >= 15 and any("--resume auto" in c for c in cmds), cmds


@pytest.mark.soak
def test_the_readme_commands_run_in_order(tmp_path):
    venv = ROOT / ".venv" / "bin" / "qtrain"
    if not venv.exists():
        pytest.skip("the README's commands use the checkout's .venv (make install)")
    for name in (".venv", "configs", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    launcher = shlex.join(mpiexec_command())
    ran = []
    for cmd in in_order():  # every command's exit status, in order; their files checked at the end
        if any(key in cmd for key in LEFT_OUT):
            continue
        line = re.sub(r"^mpiexec ", launcher + " ", cmd)
        p = subprocess.run(
            line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        expected = next((code for key, code in EXPECTED_EXIT.items() if key in cmd), 0)
        assert p.returncode == expected, f"README command {cmd!r} exited {p.returncode}:\n{p.stderr[-3000:]}"
        ran.append(cmd)
    assert (tmp_path / "report.png").stat().st_size and (tmp_path / "cmp.png").stat().st_size
    assert (tmp_path / "model.pt").stat().st_size
    left = [c for c in in_order() if c not in ran]  # only the network benchmarks, whatever their count
    assert left and all(c.startswith(".venv/bin/qtrain bench network ") for c in left), left
