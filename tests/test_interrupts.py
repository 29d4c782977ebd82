"""Ctrl-C and standard input (issue 37).

Ctrl-C: one keypress can reach a rank twice, from the terminal (ranks that share the launcher's
foreground process group: MPICH's ``mpiexec.gforker``; ``pkill -INT -f qtrain``) and again from
the launcher, which forwards it (MPICH's hydra). Every rank took the copy for a second signal and
died of it: a hard abort, no stop checkpoint, no summary. Now a copy is the same request
(``runtime/signals.py``) and the job stops as the agreed stop does.

stdin: under ``qtrain run`` only rank 0 keeps the launcher's stdin, every other rank reads
``/dev/null`` (``runtime/stdin.py``): a worker's ``input()`` ended the job only at the deadline,
named as phase 'set-up'. A rank blocked in its own code is named by its line
(``runtime/own_code.py``), not by qtrain's last phase.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import STOP_SIGNALS, mpiexec_command
from mpi_helpers import QTRAIN, mpi_train, train_command

import qtrain as qtrain_package
from qtrain.runtime import signals as signals_module
from qtrain.runtime.own_code import own_code
from qtrain.runtime.signals import REPEAT_GRACE_S, StopRequest
from qtrain.runtime.watchdog import Watchdog

TESTS = Path(__file__).parent


def test_copies_of_one_signal_are_one_request_and_a_later_one_ends_the_rank(handlers, monkeypatch):
    """The terminal's SIGINT and the launcher's forwarded copy (or SIGTERM from pkill and hydra's
    forward) reach the handler within milliseconds: one request. A signal after the grace is a
    user insisting: the default behaviour ends the rank."""
    now = [50.0]
    stop = StopRequest(clock=lambda: now[0])
    stop.install(rank=2)
    raised = []
    monkeypatch.setattr(signals_module.signal, "raise_signal", raised.append)
    handler = signal.getsignal(signal.SIGINT)
    handler(signal.SIGINT, None)  # the terminal's
    now[0] += 0.01
    handler(signal.SIGINT, None)  # the launcher's copy
    now[0] += REPEAT_GRACE_S - 0.02
    handler(signal.SIGTERM, None)  # Open MPI's SIGTERM after the SIGINT, still within the grace
    assert raised == [] and stop.reason == "SIGINT on rank 2"
    assert all(signal.getsignal(s) is handler for s in STOP_SIGNALS)  # still qtrain's handler
    now[0] += 0.02  # past the grace since the first
    handler(signal.SIGINT, None)
    assert raised == [signal.SIGINT] and signal.getsignal(signal.SIGINT) == signal.SIG_DFL


def _blocked_in(target) -> tuple[threading.Thread, threading.Event]:
    release = threading.Event()
    thread = threading.Thread(target=target, args=(release,), daemon=True)
    thread.start()
    return thread, release


def _wait_in_own_code(release):
    release.wait()  # the line own_code names


def _wait_in_qtrain(release):
    dog = Watchdog(0, 1e9, lambda _: None)
    dog._stop = release
    dog._run()  # qtrain's own code waits (in threading) until released


def _called_from(module: str):
    """``_wait_in_own_code`` called from a frame of qtrain's ``module`` (its file name)."""
    where = str(Path(qtrain_package.__file__).parent / module)
    code = compile("_wait_in_own_code(release)", where, "exec")
    return lambda release: exec(code, {"_wait_in_own_code": _wait_in_own_code, "release": release})


def test_a_rank_blocked_in_its_own_code_is_named_by_its_line_not_by_qtrains_phase(monkeypatch):
    """A worker in ``input()`` after ``qtrain.init()`` was 'phase set-up has run 450 s'. The
    script's own code is named when qtrain only runs it (``qtrain run``), not when qtrain is at
    work and calls it (a plug-in's forward: the phase names that)."""
    own, release_own = _blocked_in(_wait_in_own_code)
    ours, release_ours = _blocked_in(_wait_in_qtrain)
    launched, release_launched = _blocked_in(_called_from("cli/run.py"))
    plugin, release_plugin = _blocked_in(_called_from("engine/simulator.py"))
    line = _wait_in_own_code.__code__.co_firstlineno + 1
    named = f"{__file__}:{line} (release.wait()  # the line own_code names)"
    try:
        for _ in range(5000):  # until every thread is in its wait (threading's)
            frames = sys._current_frames()
            if all(
                t.ident in frames and frames[t.ident].f_code.co_name == "wait"
                for t in (own, ours, launched, plugin)
            ):
                break
            threading.Event().wait(0.001)
        assert own_code(own) == named and own_code(launched) == named
        assert own_code(ours) is None  # qtrain at work: its phase is the right name
        assert own_code(plugin) is None  # the user's code, called by qtrain at work: the same
        now = [0.0]
        monkeypatch.setattr("qtrain.runtime.watchdog.time.monotonic", lambda: now[0])
        dog = Watchdog(1, 2.0, lambda _: None, where=lambda: own_code(own))
        dog.enter("set-up")
        now[0] = 7.0
        assert dog.overdue() == (
            f"qtrain: rank 1 watchdog: the script has run 7 s without calling qtrain, and is at "
            f"{__file__}:{line} (release.wait()  # the line own_code names)"
        )
        dog.where = lambda: own_code(ours)
        assert dog.overdue() == "qtrain: rank 1 watchdog: phase 'set-up' has run 7 s"
    finally:
        for release in (release_own, release_ours, release_launched, release_plugin):
            release.set()


def test_every_ranks_watchdog_names_the_scripts_line(handlers):
    from qtrain.runtime.services import RankServices

    svc = RankServices.start(3, print)
    svc.watchdog.stop()
    assert svc.watchdog.where is own_code


def test_ranks_other_than_0_read_end_of_file_from_stdin():
    code = (
        "import os, sys\n"
        "from qtrain.runtime.stdin import give_stdin_to_rank_0, emptied\n"
        "give_stdin_to_rank_0(int(sys.argv[1]))\n"
        "print(repr(sys.stdin.readline()), emptied(), os.readlink('/proc/self/fd/0'))\n"
    )
    r, w = os.pipe()  # a pipe nobody writes to nor closes: what hydra gives ranks other than 0
    try:
        found = [
            subprocess.run(
                [sys.executable, "-c", code, rank], stdin=r, capture_output=True, text=True, timeout=30
            ).stdout.split()
            for rank in ("1", "3")
        ]
        os.write(w, b"typed\n")
        found.append(
            subprocess.run(
                [sys.executable, "-c", code, "0"], stdin=r, capture_output=True, text=True, timeout=30
            ).stdout.split()
        )
    finally:
        os.close(r)
        os.close(w)
    assert found[:2] == [["''", "True", "/dev/null"]] * 2
    assert found[2][:2] == ["'typed\\n'", "False"] and found[2][2].startswith("pipe:")  # rank 0 keeps it


@pytest.mark.mpi
def test_input_on_every_rank_under_qtrain_run_ends_at_once_naming_stdin(tmp_path):
    """Every worker calls ``input()`` (rank 0 serves); the launcher's stdin stays open, as a
    terminal's does. Before: blocked until ``runtime.timeout_s`` (5 s here), then "phase 'set-up'"."""
    cmd = [*mpiexec_command(), "-n", "3", *QTRAIN, "run", str(TESTS / "library_scripts" / "reads_stdin.py")]
    cmd += ["--out", str(tmp_path), "--set", "runtime.timeout_s=5"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    said = re.findall(r"^qtrain: rank (\d) failed: (.*)$", err, re.M)
    assert said, err
    for rank, line in said:
        assert line == (
            f"EOFError: input() found no standard input on rank {rank}: under qtrain run only rank 0 gets "
            "the launcher's stdin, every other rank reads /dev/null (pass input to the script as "
            "arguments after -- or in a file)"
        )
    assert "watchdog" not in err and "set-up" not in err, err


def _open_mpi_launcher() -> bool:
    """Open MPI's ``mpirun`` (its ``--version`` says so)."""
    found = subprocess.run([mpiexec_command()[0], "--version"], capture_output=True, text=True, timeout=30)
    return "Open MPI" in found.stdout + found.stderr


def _rank_pids(line: str) -> list[int]:
    return [int(p) for p in re.findall(r"\d+: \S+ on \S+ pid (\d+)", line)]


@pytest.mark.mpi
def test_ctrl_c_at_every_rank_and_the_launcher_is_the_agreed_stop_and_resumes(tmp_path):
    """A terminal's Ctrl-C where it reaches every rank and the launcher, which forwards it: the
    launcher starts in its own session (a terminal's foreground group), SIGINT goes to that group
    and to every rank at once. Before: 'Interrupt (signal 2)', no checkpoint, no summary.
    Open MPI's ``mpirun`` ends the job on SIGINT itself (SIGCONT, SIGTERM 0.25 s later, SIGKILL
    0.25 s after that, in 5.0.11; ``--forward-signals SIGINT`` is refused): its exit status is 1
    whatever the ranks do, so the case is MPICH's (and srun's, which forwards SIGINT)."""
    if _open_mpi_launcher():
        pytest.skip("Open MPI's mpirun SIGKILLs the job 0.5 s after a Ctrl-C: stop it with SIGUSR1 instead")
    sets = ["train.steps=1000000", "train.log_every=1"]
    cmd = train_command(3, "configs/default.yaml", tmp_path, *sets)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        pids, step = [], 0
        while step < 3:  # training is under way: past step 3
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            pids = pids or _rank_pids(line)
            m = re.match(r"step (\d+)/", line)
            step = int(m.group(1)) if m else step
        assert len(pids) == 3
        os.killpg(proc.pid, signal.SIGINT)
        for pid in pids:
            os.kill(pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    stopped = s["steps"]
    assert s["stopped_early"] and s["stop_reason"] == "SIGINT on rank 0" and stopped >= 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"step-{stopped:07d}.h5"]
    agreed = [
        re.findall(r"stop agreed after step (\d+)", (tmp_path / "logs" / f"rank-{r}.log").read_text())
        for r in range(3)
    ]
    assert agreed == [[str(stopped)]] * 3, agreed  # every rank, once, at the same step
    more = mpi_train(
        3, "configs/default.yaml", tmp_path, f"train.steps={stopped + 2}", extra=["--resume", "auto"]
    )
    assert more.returncode == 0, more.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["steps"] == stopped + 2 and not s["stopped_early"]
    assert Path(s["resumed_from"]).name == f"step-{stopped:07d}.h5"


def test_the_simulators_stop_ends_after_the_step_with_the_uninterrupted_runs_parameters(tmp_path):
    """A stop asked during step 3 (what Ctrl-C asks under ``qtrain simulate``) ends the run after
    step 3, as an MPI run's agreed stop: the parameters are the uninterrupted run's after step 3,
    the step is evaluated and checkpointed, and the summary says why it stopped."""
    from qtrain.config import load_config
    from qtrain.engine.simulator import simulate
    from qtrain.io.run_dir import params_sha256

    cfg = load_config("configs/default.yaml", ["train.steps=8", "train.eval_every=100", "checkpoint.every=0"])
    seen = {}
    simulate(cfg, 2, None, log=lambda _: None, observe=lambda t, p, ds: seen.setdefault(t, params_sha256(p)))
    asked = []

    def stop():
        asked.append(1)
        return "SIGINT" if len(asked) >= 3 else None

    summary = simulate(cfg, 2, tmp_path / "out", log=lambda _: None, stop=stop)
    assert (summary["steps"], summary["stopped_early"], summary["stop_reason"]) == (3, True, "SIGINT")
    assert summary["params_sha256"] == seen[3]
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["step-0000003.h5"]
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["final_test_loss"] is not None and written["stopped_early"] is True


def test_ctrl_c_under_qtrain_simulate_is_the_agreed_stop(tmp_path):
    """SIGINT to ``qtrain simulate`` (a terminal's Ctrl-C) stops after the step under way and
    writes the stop checkpoint and the summary, exit 0 (it exited 130 with neither)."""
    out = tmp_path / "sim"
    p = subprocess.Popen(
        [*QTRAIN, "simulate", "configs/default.yaml", "--out", str(out),
         "--set", "train.steps=1000000", "--set", "train.log_every=10", "--set", "checkpoint.every=0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in p.stdout:
            if re.match(r"step \d+/1000000 ", line):  # training is under way
                break
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["stop_reason"] == "SIGINT"
    step = summary["steps"]
    assert 10 <= step < 1000000
    assert [c.name for c in (out / "checkpoints").iterdir()] == [f"step-{step:07d}.h5"]
    assert re.search(r"^stopped early\s+SIGINT$", stdout, re.M), stdout
