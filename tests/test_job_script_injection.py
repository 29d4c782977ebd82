"""`qtrain slurm render` with hostile values (issue 37): a value either stays data in the job
script (a quoted shell word, an escaped comment) or is refused in one line naming its option
(an #SBATCH value that sbatch, which reads those lines without a shell, would misread)."""

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qtrain.cli.app import app
from qtrain.cli.slurm import JobShape, render_script

REPO = Path(__file__).resolve().parent.parent
HOSTILE_CONFIG = "cfg\ntouch PWNED\n.yaml"
needs_bash = pytest.mark.skipif(not shutil.which("bash"), reason="bash")


def render(*args):
    return CliRunner().invoke(app, ["slurm", "render", *args])


def run_preamble(script: str, where: Path) -> list[str]:
    """Run what the rendered script runs before the template's own code (its header, the exports
    and ``set --``) with bash in ``where``; return the arguments ``set --`` left."""
    preamble = script[: script.index("\nset -uo pipefail\n")]
    (where / "preamble.sh").write_text(preamble + "\nprintf '%s\\0' \"$@\" > args.bin\n")
    r = subprocess.run(["bash", "preamble.sh"], cwd=where, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and not r.stderr, r.stderr
    return (where / "args.bin").read_text().split("\0")[:-1]


@needs_bash
def test_a_config_named_with_line_breaks_stays_one_word_and_its_comment_one_line(tmp_path, monkeypatch):
    """A config named $'cfg\\ntouch PWNED\\n.yaml' was written raw into the header comment: the
    script ran `touch PWNED`. Now the comment shows it escaped and `set --` passes the file's
    real name to qtrain."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / HOSTILE_CONFIG).write_text((REPO / "configs" / "default.yaml").read_text())
    r = render(HOSTILE_CONFIG, "--workers", "2")
    assert r.exit_code == 0, r.output
    lines = r.output.split("\n")
    config = str((tmp_path / HOSTILE_CONFIG).resolve())
    shown = config.replace("\n", "\\n")
    assert lines[1] == (
        f"# Rendered by `qtrain slurm render '{shown}' --nodes 1 --workers 2`: 1 server + 2 workers on "
        "1 node(s). Submit with: sbatch THIS_FILE [--set key=value ...]"
    )
    assert lines[2] == "#SBATCH --job-name=qtrain"
    assert subprocess.run(["bash", "-n"], input=r.output, text=True).returncode == 0
    run = tmp_path / "run"
    run.mkdir()
    assert run_preamble(r.output, run) == [config]
    assert sorted(p.name for p in run.iterdir()) == ["args.bin", "preamble.sh"]  # no PWNED


@needs_bash
def test_script_arguments_and_paths_stay_data(tmp_path, monkeypatch):
    """A --script job's path and arguments with quotes, `$( )`, `;` or a vertical tab reach the
    script as given; the header comment is still one line."""
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "it's $(touch PWNED).py"
    script.write_text("")
    args = ["--name", "a'b\"c", "$(touch PWNED)", "x;touch PWNED", "tab\x0bhere", "`touch PWNED`"]
    r = render("--script", str(script), "--workers", "2", "--", *args)
    assert r.exit_code == 0, r.output
    header = r.output.split("\n")[1]
    assert header.startswith("# Rendered by `qtrain slurm render --nodes 1 --workers 2 --script ")
    assert "tab\\x0bhere" in header and "\x0b" not in header
    run = tmp_path / "run"
    run.mkdir()
    assert run_preamble(r.output, run) == args
    assert sorted(p.name for p in run.iterdir()) == ["args.bin", "preamble.sh"]
    exported = subprocess.run(
        ["bash", "-c", r.output[: r.output.index("\nset -- ")] + '\nprintf %s "$QTRAIN_SCRIPT"'],
        cwd=run,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert exported.stdout == str(script)


@pytest.mark.parametrize(
    "value, what, why",
    [
        (
            "proj\ntouch PWNED",
            "a line break",
            "it would end the line, and what follows would run as a command",
        ),
        ("proj\rx", "a line break", "it would end the line, and what follows would run as a command"),
        ("my account", "whitespace", "sbatch splits the line there; Slurm's names have none"),
        ("a\tb", "whitespace", "sbatch splits the line there; Slurm's names have none"),
        ("proj#x", "'#'", "sbatch ends the line's value there"),
        ("it's", 'the character "\'"', "sbatch takes quotes and backslashes away"),
        ('"proj"', "the character '\"'", "sbatch takes quotes and backslashes away"),
        ("a\\b", "the character '\\\\'", "sbatch takes quotes and backslashes away"),
        ("a\x1bb", "the control character '\\x1b'", "no Slurm value holds one"),
        ("", "an empty value", "the option would have none"),
    ],
)
@pytest.mark.parametrize("option", ["account", "partition", "qos", "constraint"])
def test_sbatch_values_sbatch_would_misread_are_refused_naming_the_option(option, value, what, why):
    """A newline in --account became a command, and sbatch then ignored every later #SBATCH line
    (--mem, --gres); --account "my account" was written unquoted, which sbatch splits."""
    r = render("default", "--workers", "2", f"--{option}", value)
    assert r.exit_code == 2
    assert (
        r.output
        == f"qtrain: error: --{option} {value!r}: {what} cannot go into '#SBATCH --{option}=' ({why})\n"
    )


def test_slurm_values_with_commas_and_feature_expressions_are_written_as_given():
    r = render(
        "default", "--workers", "2", "--partition", "gpu,debug", "--constraint", "intel&(a100|h100)",
        "--account", "proj-1_x.y", "--qos", "high",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    for line in (
        "#SBATCH --partition=gpu,debug",
        "#SBATCH --constraint=intel&(a100|h100)",
        "#SBATCH --account=proj-1_x.y",
        "#SBATCH --qos=high",
    ):
        assert line in lines


@pytest.mark.parametrize("option", ["--time", "--mem"])
def test_a_time_or_size_with_a_trailing_line_break_is_refused(option):
    """re's `$` matched before a final newline: `--time $'01:00:00\\n'` passed the check."""
    value = "01:00:00\n" if option == "--time" else "64G\n"
    r = render("default", "--workers", "2", option, value)
    assert r.exit_code == 2 and r.output.startswith(f"qtrain: error: {option} {value!r} must "), r.output


def test_every_sbatch_value_goes_through_the_check_even_past_the_cli():
    """render_script itself refuses: a shape's time or sbatch option from elsewhere (the library)
    cannot put a line break into the header either."""
    for shape in (
        JobShape(1, 2, time="01:00:00\ntouch PWNED"),
        JobShape(1, 2, sbatch={"mem": "4G\ntouch PWNED"}),
    ):
        with pytest.raises(ValueError, match="a line break cannot go into '#SBATCH --(time|mem)='"):
            render_script(shape, "c.yaml", Path("/h"), "#!/bin/bash\n")
