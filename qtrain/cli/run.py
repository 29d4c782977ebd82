"""``qtrain run SCRIPT [-- ARGS]``: a user's training script under MPI, the way ``torchrun
script.py`` runs one. Launch with ``mpiexec -n K`` (K >= 2), ``mpirun`` or ``srun``; every rank
that runs the script runs it as ``__main__`` with ``sys.argv = [SCRIPT, *ARGS]``.

How settings reach the script, in one of two ways:

- ``qtrain run``'s options (``-c``, ``--set``, ``--out``, ``--resume``, ``--reset-worker-state``,
  ``--overwrite``) configure the session before the script starts. The serving rank serves it
  (``session.serve()``) and prints the run's table; every other rank runs the script, in which
  ``qtrain.session()`` (or ``qtrain.init()`` with no arguments) returns that session. A script
  that calls ``qtrain.init`` with other arguments is refused (one line, exit 2): the run is
  configured in one place. With ``runtime.servers: colocated`` no rank serves alone: every rank
  runs the script, and rank 0, which also leads, prints the table when its session closes.
- Without those options, torchrun's way: the launcher only starts the ranks and the script
  configures itself. The script's first ``qtrain.init(...)`` or ``qtrain.session()`` decides.
  With no arguments (``qtrain.session()``, ``qtrain.init()``) it is the case above with the
  defaults: the serving rank, which waited, serves and prints the table. With arguments
  (``qtrain.init(config, overrides, out=...)``, a script written for ``mpiexec python
  SCRIPT``) the serving rank runs the script too, from the start, and the script's own
  ``if sess.is_server: sess.serve()`` serves (and gets the summary; no table is printed); its
  settings come through its own arguments (``-- ARGS``).

A script that raises, or exits non-zero, ends the whole job within seconds, naming the rank; a
script that ends without starting a session is refused in one line (exit 2). Standard input is
rank 0's alone, as under Open MPI's ``mpirun``: every other rank reads ``/dev/null``, so a worker's
``input()`` ends the job at once (``EOFError``, named) instead of blocking until the deadline."""

from __future__ import annotations

import sys

import typer

LAUNCH, SCRIPT_CONFIGURES, ENDED = "launch", "script", "ended"  # what the script's first call says


def run(
    script: str = typer.Argument(..., help="The training script (Python)."),
    args: list[str] = typer.Argument(None, help="The script's own arguments, after `--`."),
    config: str = typer.Option(None, "--config", "-c", help="YAML config file (default: all defaults)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a key: --set algorithm.lr=0.01 (repeatable)."
    ),
    out: str = typer.Option(None, "--out", help="Output directory (default runs/run-ALGORITHM-TIME)."),
    resume: str = typer.Option(
        None, "--resume", help="Checkpoint file, or `auto`: the newest valid one in OUT."
    ),
    reset_worker_state: bool = typer.Option(
        False, "--reset-worker-state", help="Resume with a different number of workers."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="OUT holds another run: remove its files first."
    ),
) -> None:
    """Run SCRIPT under MPI the way torchrun runs one; rank 0 serves (with runtime.servers=colocated
    every rank runs SCRIPT and also serves its shard).

    How settings reach the script: with -c/--set/--out/--resume/--reset-worker-state/--overwrite,
    qtrain run configures the session, rank 0 serves it, and every other rank runs SCRIPT, in
    which qtrain.session() (or qtrain.init() with no arguments) returns it. Without them, SCRIPT
    configures itself, as under `mpiexec python SCRIPT`: if it calls qtrain.init(config,
    overrides, out=...) with arguments, every rank runs it, rank 0 included, and its own
    `if sess.is_server: sess.serve()` serves; give it settings through its own arguments after
    `--`. A script that calls qtrain.session() or qtrain.init() gets the defaults, served by rank
    0. Options together with a script's own qtrain.init(...) arguments are refused."""
    from pathlib import Path

    from qtrain.cli.errors import fail
    from qtrain.runtime.mpi_info import launch_rank

    library = _library()
    path = Path(script)
    if not path.is_file():
        if launch_rank() in (None, "0"):  # every rank finds the same: one line is enough
            fail(f"script {script!r} does not exist")
        raise SystemExit(2)
    given = _options_given(config, overrides, out, resume, reset_worker_state, overwrite)
    comm = None if given else _world()
    if comm is None:  # the session first (its refusals too: no MPI, a world of 1, a bad config)
        library._RUN_OPTIONS = (script, given) if given else None
        sess = library.init(
            config, overrides, out, resume=resume, reset_worker_state=reset_worker_state, overwrite=overwrite
        )
        if sess.is_server:
            _serve(sess)
            return
        _run_script(path, list(args or []), None, sess.rank)
        _print_summary(sess, sess.close())  # a co-located rank 0's summary (it leads), else None
        return
    deferred = _Deferred(comm, script)
    if comm.rank == 0:  # the serving rank learns from the script's first call what to do
        decision = comm.bcast(None, root=deferred.root)
        if decision == ENDED:
            fail(
                f"{script} ended on rank {deferred.root} without starting a qtrain session: call "
                "qtrain.session() (configured by qtrain run's options) or qtrain.init(...) in it"
            )
        if decision == LAUNCH:
            _serve(library.init())
            return
        _run_script(path, list(args or []), deferred, 0)  # the script configures itself: it serves
        if library._SESSION is None:
            deferred.fail(RuntimeError(f"{script} ended on the serving rank without calling qtrain.init()"))
        return
    library._JOIN = deferred.join
    _run_script(path, list(args or []), deferred, comm.rank)
    if deferred.decision is None:
        deferred.end()
    if library._SESSION is not None:
        _print_summary(library._SESSION, library._SESSION.close())


def _library():
    """The module ``qtrain.library.session`` (``qtrain.library.session`` the attribute is the
    function ``qtrain.session``)."""
    import importlib

    return importlib.import_module("qtrain.library.session")


def _options_given(config, overrides, out, resume, reset_worker_state, overwrite) -> str:
    """qtrain run's settings on the command line, as words ("" when there are none)."""
    given = [f"-c {config}"] if config is not None else []
    given += [f"--set {s}" for s in overrides]
    given += [f"--out {out}"] if out is not None else []
    given += [f"--resume {resume}"] if resume is not None else []
    given += ["--reset-worker-state"] if reset_worker_state else []
    given += ["--overwrite"] if overwrite else []
    return " ".join(given)


def _world():
    """The job's backend when it starts and the job has a serving rank and a worker; else None
    (the session's start-up then refuses in one line, as it always has)."""
    from qtrain.runtime import backends

    if backends.unavailable() is not None:  # the session's start-up says why
        return None
    world = backends.world()
    return world if world.size >= 2 else None


def _serve(sess) -> None:
    _print_summary(sess, sess.serve())  # None on serving ranks other than the lead (runtime.servers > 1)


def _print_summary(sess, summary: dict | None) -> None:
    from qtrain.cli.report import print_summary

    if summary is not None:
        print_summary(summary, str(sess.out_dir))


class _Deferred:
    """``qtrain run`` without options: the script's first ``qtrain.init``/``qtrain.session()``
    on the first rank that runs it (``root``, rank 1) tells every rank, the waiting serving rank
    included, whether the script configures itself."""

    root = 1

    def __init__(self, comm, script: str):
        self.comm, self.script = comm, script
        self.decision: str | None = None
        self.refused = False  # the run was refused on another rank: this rank's exit 2 is qtrain's

    def join(self, request):
        """The script's first call on this rank (``library.session._JOIN``)."""
        library = _library()

        mine = LAUNCH if request == library._NO_ARGUMENTS else SCRIPT_CONFIGURES
        self.decision = self.comm.bcast(mine, root=self.root)
        if self.decision == ENDED:  # the root ended without a session: rank 0 says so
            self.refused = True
            raise SystemExit(2)
        return request  # this rank's own (ranks that differ are refused by the start-up's agreement)

    def end(self) -> None:
        """The script ended on this rank without starting a session."""
        library = _library()

        library._JOIN = None
        self.decision = self.comm.bcast(ENDED, root=self.root)
        if self.decision == ENDED:
            raise SystemExit(2)  # rank 0 says why
        # the root started one: join it, so that this rank's missing model (or arguments) is
        # refused in one line by rank 0, as it always was
        library.init()

    def fail(self, exc: BaseException, tb=None) -> None:
        """A failure before this rank has a session: its line (the script's traceback first),
        then the whole job ends (the backend's abort), as ``session._fail_rank`` does with one."""
        import traceback

        from qtrain.io.disk_errors import describe
        from qtrain.runtime.services import abort

        if tb is not None:
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            print(text, file=sys.stderr, end="", flush=True)
        print(f"qtrain: rank {self.comm.rank} failed: {describe(exc)}", file=sys.stderr, flush=True)
        abort(self.comm)


def _run_script(path, args: list[str], deferred: _Deferred | None, rank: int) -> None:
    """Run the script as ``__main__`` on this rank (``rank``); stdin is rank 0's alone
    (``runtime/stdin.py``)."""
    import runpy

    from qtrain.cli.teardown import user_code_ran
    from qtrain.runtime.stdin import give_stdin_to_rank_0

    library = _library()

    def failed(exc: BaseException, tb=None) -> None:
        exc = _named_stdin(exc, rank, tb)
        sess = library._SESSION
        if sess is None and deferred is not None:
            deferred.fail(exc, tb)
            return  # abort() ends the job; nothing of a session to report
        library._fail_rank(sess._backend, sess._svc, exc, tb)

    user_code_ran()
    give_stdin_to_rank_0(rank)
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.resolve().parent))
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        sess = library._SESSION
        if (sess is not None and sess._finished) or (deferred is not None and deferred.refused):
            raise  # qtrain refused (every rank knows, rank 0 said why): pass its exit on
        if exc.code not in (None, 0):
            failed(RuntimeError(f"{path} exited with status {exc.code}"))
    except BaseException as exc:  # noqa: BLE001 - the script's failure ends the whole job
        failed(exc, exc.__traceback__)


def _named_stdin(exc: BaseException, rank: int, tb) -> BaseException:
    """``input()``'s end of file on a rank whose stdin qtrain made ``/dev/null``, said as such."""
    from qtrain.runtime.stdin import emptied

    if not (isinstance(exc, EOFError) and str(exc) == "EOF when reading a line" and emptied()):
        return exc
    return EOFError(
        f"input() found no standard input on rank {rank}: under qtrain run only rank 0 gets the "
        "launcher's stdin, every other rank reads /dev/null (pass input to the script as arguments "
        "after -- or in a file)"
    ).with_traceback(tb)
