"""A plain ``pip install`` of the wheel is complete (issue #21): built from this checkout, installed
into a fresh venv outside it, run from a folder that has no ``configs/``. The venv borrows the
dev venv's third-party packages through a ``.pth`` line (a second torch download would add minutes),
never its qtrain: the dev install is editable, and an editable finder is not on that path."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "--no-build-isolation", "-q", "-w", base],
        check=True,
        capture_output=True,
    )
    (wheel,) = base.glob("qtrain-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel],
        check=True,
        capture_output=True,
    )
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return venv / "bin" / "qtrain", elsewhere


def run(installed, *args):
    qtrain, cwd = installed
    return subprocess.run([qtrain, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_the_wheel_runs_from_its_own_files(installed):
    qtrain, cwd = installed
    where = subprocess.run(
        [qtrain.parent / "python", "-c", "import qtrain; print(qtrain.__file__)"],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    assert str(qtrain.parent.parent) in where.stdout and str(REPO) not in where.stdout, where.stdout
    p = run(installed, "--version")
    assert p.returncode == 0 and p.stdout.startswith("qtrain "), p.stderr
    p = run(installed, "info")
    assert p.returncode == 0 and "mpi_library" in p.stdout, p.stderr


def test_the_wheel_ships_its_configs_and_simulates_one_by_name(installed):
    p = run(installed, "config", "list")
    assert p.returncode == 0 and "efficient-adam" in p.stdout and "sgd" in p.stdout, p.stderr
    p = run(installed, "config", "show", "default")
    assert p.returncode == 0 and (REPO / "configs" / "default.yaml").read_text() == p.stdout
    for name in ("default", "configs/default.yaml"):  # the README's path names the shipped file
        out = installed[1] / f"run-{name.replace('/', '-')}"
        p = run(
            installed,
            "simulate",
            name,
            "--workers",
            "2",
            "--set",
            "train.steps=5",
            "--set",
            "runtime.kernels=torch",
            "--out",
            str(out),
            "-q",
        )
        assert p.returncode == 0 and p.stdout == "", p.stdout + p.stderr
        assert (out / "summary.json").is_file()


def test_the_wheel_renders_a_batch_script_that_runs_this_installation(installed):
    qtrain, cwd = installed
    p = run(installed, "slurm", "render", "default", "--workers", "2")
    assert p.returncode == 0, p.stderr
    assert f"export QTRAIN=${{QTRAIN:-{qtrain}}}" in p.stdout
    assert f"export QTRAIN_HOME=${{QTRAIN_HOME:-{cwd}}}" in p.stdout
    assert "/shipped/configs/default.yaml" in p.stdout and "#SBATCH --ntasks=3" in p.stdout
