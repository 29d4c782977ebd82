"""Slurm jobs of the torch backend (``qtrain slurm render --backend torch``, the template's
``srun-torch`` launcher): the rendered lines, the launcher's environment and refusals through a
stand-in ``srun``/``scontrol``, the warning signal and ``--resume auto`` with it, and one real job on
the one-node cluster of slurm/local-cluster.sh whose parameters are the simulator's."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mpi_helpers import simulate, summary
from test_slurm import _text, cluster, sbatch, wait_state  # noqa: F401 - cluster: the module's fixture
from typer.testing import CliRunner

from qtrain.cli.app import app

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "slurm" / "train.sbatch"
LAUNCHER_LINE = (
    "export QTRAIN_LAUNCHER=srun-torch  # --backend torch: srun exports QTRAIN_BACKEND=torch, MASTER_ADDR, "
    "MASTER_PORT"
)
NEEDS_SRUN_TORCH = (
    "QTRAIN_BACKEND=torch needs QTRAIN_LAUNCHER=srun-torch (it exports MASTER_ADDR and MASTER_PORT)"
)
needs_bash = pytest.mark.skipif(not shutil.which("bash"), reason="bash")


def render(*args):
    return CliRunner().invoke(app, ["slurm", "render", *args])


def test_render_backend_torch_sets_the_launcher_and_the_configs_backend(monkeypatch):
    """A config job: the launcher line and `set --` with runtime.backend=torch (before the servers'
    setting), the option in the header; the default (mpi) renders neither."""
    monkeypatch.chdir(REPO)
    config = (REPO / "configs" / "efficient-adam.yaml").resolve()
    r = render("configs/efficient-adam.yaml", "--workers", "2", "--backend", "torch")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1].startswith(
        f"# Rendered by `qtrain slurm render {config} --nodes 1 --workers 2 --backend torch`:"
    )
    assert LAUNCHER_LINE in lines
    assert f'set -- {config} --set runtime.backend=torch "$@"' in lines
    assert lines.index(LAUNCHER_LINE) < lines.index("set -uo pipefail")  # before the template's code
    k2 = render("configs/efficient-adam.yaml", "--workers", "2", "--servers", "2", "--backend", "torch")
    assert k2.exit_code == 0, k2.output
    assert (
        f'set -- {config} --set runtime.backend=torch --set runtime.servers=2 "$@"' in k2.output.splitlines()
    )
    for default in (render("configs/efficient-adam.yaml", "--workers", "2"),
                    render("configs/efficient-adam.yaml", "--workers", "2", "--backend", "mpi")):  # fmt: skip
        assert default.exit_code == 0, default.output
        assert f'set -- {config} "$@"' in default.output.splitlines()
        assert "QTRAIN_LAUNCHER=" not in default.output.split("set -uo pipefail")[0]
        assert "--backend" not in default.output.splitlines()[1]


def test_render_backend_torch_for_script_jobs_both_ways(monkeypatch):
    """With -c/--set, qtrain run gets runtime.backend=torch in QTRAIN_RUN_OPTIONS; a script that
    configures itself is told (in a comment) to leave runtime.backend at auto."""
    monkeypatch.chdir(REPO)
    sgd = (REPO / "configs" / "sgd.yaml").resolve()
    run = render("--script", "tests/library_scripts/resumable.py", "-c", "configs/sgd.yaml", "--workers", "2",
                 "--servers", "2", "--backend", "torch", "--", "--steps", "9")  # fmt: skip
    assert run.exit_code == 0, run.output
    lines = run.output.splitlines()
    assert LAUNCHER_LINE in lines
    assert (
        f"export QTRAIN_RUN_OPTIONS='-c {sgd} --set runtime.backend=torch --set runtime.servers=2'" in lines
    )
    assert 'set -- --steps 9 "$@"' in lines
    own = render(
        "--script", "examples/gpt/train.py", "--workers", "2", "--backend", "torch", "--", "--lr", "1"
    )
    assert own.exit_code == 0, own.output
    lines = own.output.splitlines()
    assert LAUNCHER_LINE in lines
    assert "# the script's config must leave runtime.backend at auto (or set torch)" in lines
    assert 'set -- --lr 1 "$@"' in lines
    preamble = [line for line in own.output.split("\nset -uo pipefail\n")[0].splitlines() if line[:1] != "#"]
    assert not [line for line in preamble if "RUN_OPTIONS" in line or "--set" in line]  # it takes no --set


@pytest.mark.parametrize("value", ["nccl", "Torch", ""])
def test_render_refuses_a_bad_backend_in_one_line(monkeypatch, value):
    monkeypatch.chdir(REPO)
    r = render("configs/default.yaml", "--workers", "2", "--backend", value)
    assert r.exit_code == 2
    assert r.output.splitlines() == [f"qtrain: error: --backend {value!r}: it must be mpi or torch"]


FAKE_SRUN = """#!/usr/bin/env bash
# a stand-in srun: records its arguments and the environment the tasks would get
{ printf 'arg %s\\n' "$@"
  for v in QTRAIN_BACKEND MASTER_ADDR MASTER_PORT SLURM_HOSTFILE; do echo "env $v=${!v-}"; done
} > "$LAUNCHED"
[ -z "${SLURM_HOSTFILE:-}" ] || sed 's/^/host /' "$SLURM_HOSTFILE" >> "$LAUNCHED"
if [ -n "${FAKE_WARNED:-}" ]; then  # ranks that stop on USR1 with a checkpoint, as qtrain's do
  stop() {
    mkdir -p "$FAKE_OUT/checkpoints" && : > "$FAKE_OUT/checkpoints/step-5.h5"
    printf '{"stopped_early": true}\n' > "$FAKE_OUT/summary.json"
    echo usr1 >> "$FAKE_WARNED"
    exit 0
  }
  trap stop USR1
  : > "$FAKE_WARNED.ready"
  while :; do sleep 0.05; done
fi
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
# a stand-in scontrol: the job's hosts (FAKE_HOSTS), and requeue recorded
case "$1 ${2:-}" in
  "show hostnames") printf '%s\\n' $FAKE_HOSTS ;;
  "requeue "*) echo "requeue $2" >> "$FAKE_REQUEUED" ;;
  *) exit 1 ;;
esac
"""


@pytest.fixture
def fakes(tmp_path):
    """A PATH with the stand-ins first and an environment as sbatch gives the batch shell."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    drop = ("QTRAIN_BACKEND", "MASTER_ADDR", "MASTER_PORT", "QTRAIN_MASTER_PORT", "QTRAIN_TASK_NODES",
            "QTRAIN_LAUNCHER", "SLURM_HOSTFILE", "QTRAIN_SCRIPT", "SLURM_RESTART_COUNT")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({
        "PATH": f"{bin_}:{env['PATH']}", "LAUNCHED": str(tmp_path / "launched"), "QTRAIN": "/bin/true",
        "QTRAIN_HOME": str(tmp_path), "FAKE_HOSTS": "n1 n2", "FAKE_REQUEUED": str(tmp_path / "requeued"),
        "SLURM_JOB_ID": "4321", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NTASKS": "3",
    })  # fmt: skip
    (tmp_path / "c.yaml").write_text("seed: 0\n")
    return env


def launched(tmp_path):
    """What the stand-in srun was given: its arguments and the tasks' variables and hosts."""
    lines = (tmp_path / "launched").read_text().splitlines()
    args = [line[4:] for line in lines if line.startswith("arg ")]
    env = dict(line[4:].split("=", 1) for line in lines if line.startswith("env "))
    hosts = [line[5:] for line in lines if line.startswith("host ")]
    return args, env, hosts


def bash(script, *args, env, cwd, timeout=60):
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)  # fmt: skip


@needs_bash
def test_a_rendered_torch_job_runs_srun_without_mpi_and_exports_the_rendezvous(tmp_path, fakes, monkeypatch):
    """The rendered script (2 nodes, the serving rank on a node of its own) through stand-ins:
    `srun --kill-on-bad-exit=1` (no --mpi), the host file of QTRAIN_TASK_NODES, and every task gets
    QTRAIN_BACKEND=torch, MASTER_ADDR = rank 0's node, MASTER_PORT = 29500 + job id % 1000."""
    monkeypatch.chdir(tmp_path)
    r = render("c.yaml", "--nodes", "2", "--workers", "2", "--server-nodes", "1", "--backend", "torch")
    assert r.exit_code == 0, r.output
    (tmp_path / "job.sh").write_text(r.output)
    p = bash(tmp_path / "job.sh", "--set", "train.steps=3", env=fakes, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    args, env, hosts = launched(tmp_path)
    out = "runs/slurm-4321"
    assert args == ["--kill-on-bad-exit=1", "--distribution=arbitrary", "/bin/true", "train",
                    str(tmp_path / "c.yaml"), "--set", "runtime.backend=torch", "--set", "train.steps=3",
                    "--out", out]  # fmt: skip
    assert env == {"QTRAIN_BACKEND": "torch", "MASTER_ADDR": "n1", "MASTER_PORT": "29821",
                   "SLURM_HOSTFILE": f"{out}/hostfile-4321"}  # fmt: skip
    assert hosts == ["n1", "n2", "n2"]
    assert "launcher srun-torch" in p.stdout
    assert "torch backend, rank 0 at MASTER_ADDR=n1 MASTER_PORT=29821" in p.stdout


@needs_bash
@pytest.mark.parametrize(
    "given, addr, port",
    [
        ({}, "n1", "29821"),  # the allocation's first node, 29500 + 4321 % 1000
        ({"QTRAIN_TASK_NODES": "1 0 0"}, "n2", "29821"),  # rank 0's node, not the first one
        ({"MASTER_ADDR": "n2-ib", "MASTER_PORT": "1234"}, "n2-ib", "1234"),  # exported ones are kept
        ({"MASTER_PORT": "1234", "QTRAIN_MASTER_PORT": "40000"}, "n1", "40000"),
    ],
)
def test_the_srun_torch_launcher_picks_the_rendezvous(tmp_path, fakes, given, addr, port):
    env = {**fakes, "QTRAIN_LAUNCHER": "srun-torch", **given}
    p = bash(TEMPLATE, "c.yaml", "--out", str(tmp_path / "out"), env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    args, env, _ = launched(tmp_path)
    placed = ["--distribution=arbitrary"] if "QTRAIN_TASK_NODES" in given else []
    assert args[: args.index("/bin/true")] == ["--kill-on-bad-exit=1", *placed]  # no --mpi=
    assert (env["QTRAIN_BACKEND"], env["MASTER_ADDR"], env["MASTER_PORT"]) == ("torch", addr, port)


@needs_bash
@pytest.mark.parametrize(
    "given, why",
    [
        ({"QTRAIN_LAUNCHER": "mpiexec", "QTRAIN_BACKEND": "torch"}, f"{NEEDS_SRUN_TORCH}, not mpiexec"),
        ({"QTRAIN_BACKEND": "torch"}, f"{NEEDS_SRUN_TORCH}, not srun-pmi2"),  # the default launcher
        ({"QTRAIN_LAUNCHER": "srun-torch", "QTRAIN_BACKEND": "mpi"}, "srun-torch launcher starts the torch"),
        ({"QTRAIN_LAUNCHER": "srun-torch", "QTRAIN_MASTER_PORT": "70000"}, "must be a port number 1..65535"),
        ({"QTRAIN_LAUNCHER": "srun-torch", "QTRAIN_MASTER_PORT": "29500; x"}, "not '29500; x'"),
        ({"QTRAIN_LAUNCHER": "srun-torch", "FAKE_HOSTS": ""}, "needs the job's nodes (SLURM_JOB_NODELIST"),
        ({"QTRAIN_LAUNCHER": "srun-tcp"}, "must be srun-pmi2, srun-pmix, mpirun, mpiexec or srun-torch"),
    ],
)  # fmt: skip
def test_the_template_refuses_a_backend_its_launcher_cannot_start_before_writing_anything(
    tmp_path, fakes, given, why
):
    p = bash(TEMPLATE, "c.yaml", "--out", str(tmp_path / "out"), env={**fakes, **given}, cwd=tmp_path)
    assert p.returncode == 2 and why in p.stderr, p.stdout + p.stderr
    assert len(p.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "launched").exists()


@needs_bash
def test_the_warning_signal_requeues_a_torch_job_and_the_restart_resumes(tmp_path, fakes):
    """USR1 to the batch shell reaches srun (which hands it to every rank); ranks that stop with a
    checkpoint get the job requeued, and the restart passes --resume auto, with srun-torch too."""
    out = tmp_path / "out"
    env = {
        **fakes,
        "QTRAIN_LAUNCHER": "srun-torch",
        "FAKE_WARNED": str(tmp_path / "warned"),
        "FAKE_OUT": str(out),
    }
    job = subprocess.Popen(["bash", str(TEMPLATE), "c.yaml", "--out", str(out)], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while not (tmp_path / "warned.ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    stdout, stderr = job.communicate(timeout=30)
    assert job.returncode == 0, stdout + stderr
    assert (tmp_path / "warned").read_text() == "usr1\n"
    assert (tmp_path / "requeued").read_text() == "requeue 4321\n"
    assert "checkpoint written, requeueing (restart 1)" in stdout
    env = {**fakes, "QTRAIN_LAUNCHER": "srun-torch", "SLURM_RESTART_COUNT": "1"}
    p = bash(TEMPLATE, "c.yaml", "--out", str(out), env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    args, env, _ = launched(tmp_path)
    assert args[-4:] == ["--out", str(out), "--resume", "auto"] and env["QTRAIN_BACKEND"] == "torch"


# make soak: srun-torch's command line and environment are checked above with stand-ins, and the
# torch backend's parameters against MPI's in tests/test_torch_backend_runs.py (make test's budget)
@pytest.mark.slurm
@pytest.mark.soak
def test_a_rendered_torch_job_on_slurm_equals_the_simulator(cluster, tmp_path, monkeypatch):  # noqa: F811
    """`slurm render --backend torch` (1 server + 2 workers) submitted with sbatch: srun starts the
    ranks over torch.distributed (gloo) and they end with the simulator's parameters."""
    monkeypatch.chdir(REPO)
    r = render("configs/efficient-adam.yaml", "--workers", "2", "--backend", "torch")
    assert r.exit_code == 0, r.output
    job = tmp_path / "torch.sh"
    job.write_text(r.output)
    sets = ["train.steps=12", "train.eval_every=6"]
    out = tmp_path / "slurm"
    jid = sbatch(str(job), *(a for s in sets for a in ("--set", s)), "--out", str(out))
    log = REPO / f"slurm-qtrain-{jid}.out"
    assert wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}) == "COMPLETED", _text(log)
    s = summary(out)
    assert s["world_size"] == 3 and s["workers"] == 2 and s["steps"] == 12, s
    ref = simulate("configs/efficient-adam.yaml", 2, tmp_path / "sim", *sets)
    assert s["params_sha256"] == ref["params_sha256"]
    text = _text(log)
    assert "launcher srun-torch" in text and "torch backend, rank 0 at MASTER_ADDR=" in text, text
    assert "backend: torch " in text, text  # the plan line of rank 0
    log.unlink()
