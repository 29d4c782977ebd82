"""``qtrain run SCRIPT [-- ARGS]``: a user's training script under MPI, the way ``torchrun
script.py`` runs one. Launch with ``mpiexec -n K`` (K >= 2), ``mpirun`` or ``srun``: the serving
rank serves (``session.serve()``), every other rank runs the script as ``__main__`` with
``sys.argv = [SCRIPT, *ARGS]`` and the session ready (``qtrain.session()``, or ``qtrain.init()``
with no arguments). A script that raises, or exits non-zero, ends the whole job within seconds,
naming the rank."""

from __future__ import annotations

import sys

import typer


def run(
    script: str = typer.Argument(..., help="The training script (Python) every worker runs."),
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
    """Run SCRIPT on every worker with a qtrain session; rank 0 serves."""
    from pathlib import Path

    from qtrain.cli.errors import fail
    from qtrain.runtime.mpi_info import launch_rank

    path = Path(script)
    if not path.is_file():
        if launch_rank() in (None, "0"):  # every rank finds the same: one line is enough
            fail(f"script {script!r} does not exist")
        raise SystemExit(2)
    from qtrain.library.session import init

    sess = init(
        config, overrides, out, resume=resume, reset_worker_state=reset_worker_state, overwrite=overwrite
    )
    if sess.is_server:
        from qtrain.cli.report import print_summary

        summary = sess.serve()  # None on serving ranks other than the lead (runtime.servers > 1)
        if summary is not None:
            print_summary(summary, str(sess.out_dir))
        return
    _run_script(sess, path, list(args or []))
    sess.close()


def _run_script(sess, path, args: list[str]) -> None:
    import runpy

    from qtrain.cli.teardown import user_code_ran
    from qtrain.library.session import _fail_rank

    user_code_ran()
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.resolve().parent))
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        if sess._finished:  # qtrain refused (every rank knows, rank 0 said why): pass its exit on
            raise
        if exc.code not in (None, 0):
            _fail_rank(sess._comm, sess._svc, RuntimeError(f"{path} exited with status {exc.code}"))
    except BaseException as exc:  # noqa: BLE001 - the script's failure ends the whole job
        _fail_rank(sess._comm, sess._svc, exc, exc.__traceback__)
