"""How settings reach a script under ``qtrain run`` (issue 35, ``qtrain/cli/run.py``): qtrain run's
options configure a script that calls ``qtrain.session()``; without options a script configures
itself, as torchrun leaves it to (tests/test_export_aliases.py runs one that does, on every rank,
the serving rank included; tests/test_library_mpi.py the scripts that take qtrain run's options).
Both at once, and a script that never starts a session, are refused in one line with exit 2."""

import subprocess
from pathlib import Path

import pytest
from conftest import mpiexec_command
from mpi_helpers import QTRAIN
from typer.testing import CliRunner

from qtrain.cli.app import app

TESTS = Path(__file__).parent


def test_the_help_says_how_settings_reach_the_script():
    text = " ".join(CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "How settings reach the script:" in text
    assert "qtrain.session() (or qtrain.init() with no arguments) returns it" in text
    assert "every rank runs it, rank 0 included" in text
    assert "Options together with a script's own qtrain.init(...) arguments are refused" in text


def qtrain_run(*args: str):
    return subprocess.run(
        [*mpiexec_command(), "-n", "3", *QTRAIN, "run", *args], capture_output=True, text=True, timeout=120
    )


def qtrain_lines(p) -> list[str]:
    return [line for line in p.stderr.splitlines() if line.startswith("qtrain:")]


@pytest.mark.mpi
def test_options_for_a_script_that_configures_itself_are_refused_in_one_line(tmp_path):
    script = TESTS / "library_scripts" / "tied_gpt.py"
    p = qtrain_run(str(script), "--out", str(tmp_path / "a"), "--", str(tmp_path / "b"))
    assert p.returncode == 2, p.stdout + p.stderr
    assert qtrain_lines(p) == [
        f"qtrain: error: {script} calls qtrain.init() with settings of its own, and `qtrain run` was "
        f"given --out {tmp_path / 'a'}: configure the run in one place (drop those options and pass "
        "settings through the script's own arguments after --, or call qtrain.session() in the script)"
    ], p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "b").exists()


@pytest.mark.mpi
def test_a_script_that_never_starts_a_session_is_refused_in_one_line(tmp_path):
    """Without options the serving rank waits for the script's first qtrain call: a script that
    makes none must not leave it waiting."""
    script = tmp_path / "plain.py"
    script.write_text('print("no qtrain here")\n')
    p = qtrain_run(str(script))
    assert p.returncode == 2, p.stdout + p.stderr
    assert qtrain_lines(p) == [
        f"qtrain: error: {script} ended on rank 1 without starting a qtrain session: call "
        "qtrain.session() (configured by qtrain run's options) or qtrain.init(...) in it"
    ], p.stderr
    assert p.stdout.count("no qtrain here") == 2  # the workers ran it; the serving rank waited
