"""qtrain on a real one-node Slurm cluster (slurm/local-cluster.sh): batch runs, preemption with
requeue and resume, rendered scripts. Needs root and Debian's slurm-wlm + munge (CI has both)."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mpi_helpers import mpi_train, simulate, summary

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0 or not shutil.which("slurmctld"):
        if os.environ.get("CI"):
            pytest.fail("CI must run the Slurm tests: run as root with slurm-wlm installed (make sysdeps)")
        pytest.skip("needs root and Debian's slurm-wlm + munge (make sysdeps)")
    up = subprocess.run(
        ["bash", str(REPO / "slurm" / "local-cluster.sh"), "up"], capture_output=True, text=True, timeout=300
    )
    assert up.returncode == 0, up.stdout + up.stderr
    return True


def sbatch(*args, cwd=REPO):
    p = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


def job_field(jid, field):
    out = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True).stdout
    m = re.search(rf"\b{field}=(\S+)", out)
    return m.group(1) if m else None


def _text(path):
    return path.read_text() if path.exists() else ""


def wait_state(jid, states, timeout=300, release_begin_time=False):
    deadline = time.monotonic() + timeout
    held_since = None
    while time.monotonic() < deadline:
        state = job_field(jid, "JobState")
        if state in states:
            return state
        if release_begin_time and state == "PENDING" and job_field(jid, "Reason") == "BeginTime":
            # Slurm holds a requeued job for about two minutes; the scheduler would start it then.
            # Release it early, but not within seconds of the requeue: slurmd revokes the old run's
            # credential with 1-second resolution, and a relaunch in that same second is refused
            # ("Job credential revoked").
            held_since = held_since or time.monotonic()
            if time.monotonic() - held_since > 3:
                subprocess.run(["scontrol", "update", f"jobid={jid}", "StartTime=now"], capture_output=True)
        time.sleep(1)
    pytest.fail(f"job {jid} still {job_field(jid, 'JobState')} after {timeout} s")


def test_sbatch_run_equals_mpiexec(cluster, tmp_path):
    out = tmp_path / "slurm"
    jid = sbatch(
        "-n", "3", "slurm/train.sbatch", "configs/ecq-sgd.yaml", "--set", "train.steps=40", "--out", str(out)
    )
    assert wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}) == "COMPLETED", (
        REPO / f"slurm-qtrain-{jid}.out"
    ).read_text()
    ref = mpi_train(3, "configs/ecq-sgd.yaml", tmp_path / "mpi", "train.steps=40")
    assert ref.returncode == 0, ref.stderr
    assert summary(out)["params_sha256"] == summary(tmp_path / "mpi")["params_sha256"]
    assert summary(out)["world_size"] == 3
    log = (REPO / f"slurm-qtrain-{jid}.out").read_text()
    assert "SLURM_RESTART_COUNT=0" in log and "launcher srun-pmi2" in log


def test_default_output_directory_is_per_job_and_task_nodes_place_the_ranks(cluster, tmp_path, monkeypatch):
    """Without --out the run lands in runs/slurm-JOBID. QTRAIN_TASK_NODES (what `slurm render
    --server-nodes` exports) becomes srun's host file: on this one-node cluster, node 0 twice."""
    monkeypatch.setenv("QTRAIN_TASK_NODES", "0 0")
    jid = sbatch("-n", "2", "slurm/train.sbatch", "configs/default.yaml", "--set", "train.steps=5")
    assert wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED"}) == "COMPLETED"
    out = REPO / "runs" / f"slurm-{jid}"
    assert summary(out)["workers"] == 1
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    assert (out / f"hostfile-{jid}").read_text().split() == [host, host]
    assert f"tasks placed on nodes 0 0 of {host}" in (REPO / f"slurm-qtrain-{jid}.out").read_text()
    shutil.rmtree(out)


def test_preemption_checkpoints_requeues_resumes_and_matches(cluster, tmp_path):
    steps = 2500  # 6-12 s of training on these hosts: the warning (at step 100) lands well before the end
    out = tmp_path / "slurm"
    jid = sbatch(
        "-n",
        "3",
        "slurm/train.sbatch",
        "configs/default.yaml",
        "--set",
        f"train.steps={steps}",
        "--set",
        "train.log_every=50",
        "--out",
        str(out),
    )
    wait_state(jid, {"RUNNING"}, timeout=60)
    log = REPO / f"slurm-qtrain-{jid}.out"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not re.search(rf"^step 100/{steps} ", _text(log), re.M):
        time.sleep(0.2)  # signal once training is under way (a fixed sleep raced the faster kernels)
    subprocess.run(["scancel", "--signal=USR1", "--batch", jid], check=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and job_field(jid, "Restarts") == "0":
        time.sleep(0.5)
    assert job_field(jid, "Restarts") == "1", "the job did not requeue itself"
    assert (
        wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=400, release_begin_time=True)
        == "COMPLETED"
    )
    final = summary(out)
    assert final["steps"] == steps and not final["stopped_early"] and final["resumed_from"]
    restarts = (out / "slurm-restarts.log").read_text()
    assert "SLURM_RESTART_COUNT=0" in restarts and "requeued after the warning signal" in restarts
    assert "SLURM_RESTART_COUNT=1" in restarts
    stopped_at = int(re.search(r"step-(\d+)\.h5", final["resumed_from"]).group(1))
    assert 0 < stopped_at < steps
    ref = mpi_train(3, "configs/default.yaml", tmp_path / "ref", f"train.steps={steps}")
    assert ref.returncode == 0, ref.stderr
    assert final["params_sha256"] == summary(tmp_path / "ref")["params_sha256"]


@pytest.mark.parametrize(
    "shape",
    [
        ["--nodes", "1", "--workers", "2"],
        ["--nodes", "1", "--workers", "5", "--time", "0-00:30:00", "--partition", "debug"],
        ["--nodes", "1", "--workers", "2", "--servers", "2"],
        ["--nodes", "1", "--workers", "3", "--servers", "colocated"],
    ],
)
def test_rendered_scripts_pass_sbatch_test_only(cluster, tmp_path, shape):
    r = subprocess.run(
        [str(REPO / ".venv" / "bin" / "qtrain"), "slurm", "render", "configs/default.yaml", *shape],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    script = tmp_path / "job.sh"
    script.write_text(r.stdout)
    t = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, cwd=REPO)
    assert t.returncode == 0 and "to start at" in t.stderr, t.stderr


def test_render_gpu_shape_and_errors(tmp_path):
    r = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "qtrain"),
            "slurm",
            "render",
            "configs/default.yaml",
            "--nodes",
            "2",
            "--workers",
            "7",
            "--gpus-per-worker",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0
    assert "#SBATCH --ntasks=8" in r.stdout and "#SBATCH --ntasks-per-node=4" in r.stdout
    assert "#SBATCH --gres=gpu:4" in r.stdout
    bad = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "qtrain"),
            "slurm",
            "render",
            "configs/default.yaml",
            "--workers",
            "2",
            "--time",
            "90 minutes",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 2 and "--time" in bad.stderr


def test_render_takes_a_real_clusters_options_and_asks_for_the_gpus_it_uses(tmp_path):
    """Each option becomes its #SBATCH line; --gres counts one GPU per worker on the fullest node
    (the serving rank on node 0 takes none); a shape that cannot fit --gpus-per-node is refused
    with the node count it needs."""
    from typer.testing import CliRunner

    from qtrain.cli.app import app

    def render(*args):
        return CliRunner().invoke(app, ["slurm", "render", "default", *args])

    r = render(
        "--nodes", "4", "--workers", "15", "--gpus-per-worker", "1", "--gpus-per-node", "4",
        "--account", "proj", "--qos", "high", "--mem", "64G", "--constraint", "a100", "--exclusive",
        "--setup", "module load cuda; source ~/env/bin/activate", "--python", sys.executable,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    for line in (
        "#SBATCH --ntasks=16",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gres=gpu:4",  # nodes hold 3, 4, 4, 4 workers
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --mem=64G",
        "#SBATCH --constraint=a100",
        "#SBATCH --exclusive",
        "module load cuda; source ~/env/bin/activate",
        f"export QTRAIN=${{QTRAIN:-{Path(sys.executable).parent / 'qtrain'}}}",
    ):
        assert line in lines, line
    assert "workers per node [3, 4, 4, 4]" in r.output
    assert lines.index("module load cuda; source ~/env/bin/activate") < lines.index("set -uo pipefail")
    cpu = render("--workers", "2")
    assert cpu.exit_code == 0
    assert not [
        line for line in cpu.output.splitlines() if line.startswith(("#SBATCH --gres", "#SBATCH --account"))
    ]
    for args, why in (
        (
            ["--nodes", "2", "--workers", "15", "--gpus-per-worker", "1", "--gpus-per-node", "4"],
            "use --nodes 4",
        ),
        (["--workers", "2", "--gpus-per-worker", "2"], "each worker computes on one GPU"),
        (["--workers", "2", "--mem", "lots"], "--mem 'lots' must be a size"),
        (["--workers", "2", "--python", str(tmp_path / "nope")], "does not exist"),
    ):
        bad = render(*args)
        assert bad.exit_code == 2 and why in bad.output, bad.output


def test_several_serving_ranks_are_placed_one_per_node():
    """--servers K deals the tasks round-robin (cyclic), so ranks 0..K-1 land on K nodes, and the
    script passes runtime.servers=K; fewer nodes than servers is said in the script."""
    from qtrain.cli.slurm import JobShape, render_script

    shape = JobShape(3, 6, gpus=True, servers=2)
    assert shape.tasks == 8 and shape.servers_per_node() == [1, 1, 0]
    assert shape.workers_per_node() == [2, 2, 2]  # tasks 0,3,6 / 1,4,7 / 2,5
    text = render_script(shape, "c.yaml", Path("/h"), "#!/bin/bash\necho run\n")
    assert "#SBATCH --distribution=cyclic" in text and "one per node" in text
    assert "#SBATCH --gres=gpu:2" in text
    assert 'set -- c.yaml --set runtime.servers=2 "$@"' in text
    crowded = render_script(JobShape(1, 2, servers=2), "c.yaml", Path("/h"), "#!/bin/bash\n")
    assert "2 on a node: fewer nodes (1) than serving ranks" in crowded
    one = render_script(JobShape(2, 3), "c.yaml", Path("/h"), "#!/bin/bash\n")
    assert "distribution" not in one and 'set -- c.yaml "$@"' in one and "1 server + 3 workers" in one


def test_a_colocated_job_has_one_task_per_worker_and_none_that_only_serves():
    """--servers colocated: every task a worker that also serves, packed; one GPU per task; the
    script passes runtime.servers=colocated; --server-nodes and a single worker are refused."""
    from qtrain.cli.slurm import JobShape, render_script

    shape = JobShape(2, 4, gpus=True, colocated=True)
    assert shape.tasks == 4 and shape.task_nodes() == [0, 0, 1, 1]
    assert shape.servers_per_node() == [0, 0] and shape.workers_per_node() == [2, 2]
    text = render_script(shape, "c.yaml", Path("/h"), "#!/bin/bash\necho run\n")
    assert "#SBATCH --ntasks=4" in text and "#SBATCH --gres=gpu:2" in text and "distribution" not in text
    assert "4 workers, each also serving 1/4 (co-located, no serving task), on 2 node(s)" in text
    assert 'set -- c.yaml --set runtime.servers=colocated "$@"' in text
    with pytest.raises(ValueError, match="takes no --server-nodes"):
        JobShape(2, 4, server_nodes=1, colocated=True)
    with pytest.raises(ValueError, match="needs at least 2 workers"):
        JobShape(1, 1, colocated=True)


def test_a_rendered_colocated_job_runs_and_equals_the_simulator(cluster, tmp_path):
    """``slurm render --servers colocated`` for 2 workers, submitted: 2 tasks, both training and
    serving, ending with the simulator's parameters (runtime.servers changes no bit)."""
    r = subprocess.run(
        [str(REPO / ".venv" / "bin" / "qtrain"), "slurm", "render", "configs/ecq-sgd.yaml", "--workers", "2",
         "--servers", "colocated"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    script = tmp_path / "job.sh"
    script.write_text(r.stdout)
    out = tmp_path / "co"
    jid = sbatch(str(script), "--set", "train.steps=20", "--out", str(out))
    log = REPO / f"slurm-qtrain-{jid}.out"
    assert wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}) == "COMPLETED", _text(log)
    ref = simulate("configs/ecq-sgd.yaml", 2, tmp_path / "sim", "train.steps=20")
    assert summary(out)["params_sha256"] == ref["params_sha256"]
    assert summary(out)["world_size"] == 2 and summary(out)["workers"] == 2


def test_serving_ranks_on_nodes_of_their_own():
    """--server-nodes S puts the serving ranks on the first S nodes (dealt round-robin) and the
    workers in balanced blocks on the rest; the script exports each task's node for the template's
    host file, and says the serving nodes' GPUs stay idle."""
    from qtrain.cli.slurm import JobShape, render_script

    shape = JobShape(3, 4, gpus=True, servers=2, server_nodes=1)
    assert shape.placement == "dedicated" and shape.task_nodes() == [0, 0, 1, 1, 2, 2]
    assert shape.servers_per_node() == [2, 0, 0] and shape.workers_per_node() == [0, 2, 2]
    text = render_script(shape, "c.yaml", Path("/h"), "#!/bin/bash\necho run\n")
    assert "export QTRAIN_TASK_NODES='0 0 1 1 2 2'" in text and "distribution=cyclic" not in text
    assert "#SBATCH --ntasks-per-node=2" in text and "#SBATCH --gres=gpu:2" in text
    assert "the first 1 of the allocation" in text and "GPUs stay idle" in text
    assert 'set -- c.yaml --set runtime.servers=2 "$@"' in text
    spread = JobShape(4, 5, servers=3, server_nodes=2)
    assert spread.task_nodes() == [0, 1, 0, 2, 2, 2, 3, 3]
    assert spread.per_node == 3 and spread.workers_per_node() == [0, 0, 3, 2]
    alone = JobShape(2, 3, server_nodes=1)  # one parameter server on a node of its own
    assert alone.task_nodes() == [0, 1, 1, 1] and alone.per_node == 3
    with pytest.raises(ValueError, match="leaves no node for the workers"):
        JobShape(2, 3, server_nodes=2)


def test_packed_tasks_are_counted_as_slurms_block_distribution_places_them():
    """Each node tasks // nodes, the first tasks % nodes one more (Slurm's _task_layout_block):
    5 tasks on 4 nodes are 2, 1, 1, 1, not 2, 2, 1, 0."""
    from qtrain.cli.slurm import JobShape

    assert JobShape(4, 4).task_nodes() == [0, 0, 1, 2, 3]
    assert JobShape(4, 8).task_nodes() == [0, 0, 0, 1, 1, 2, 2, 3, 3]  # 9 tasks: 3, 2, 2, 2
    assert JobShape(4, 8, gpus=True).workers_per_node() == [2, 2, 2, 2] and JobShape(4, 8).per_node == 3


@pytest.mark.parametrize(
    "args, why",
    [
        (["--nodes", "2", "--servers", "2", "--server-nodes", "2"], "leaves no node for the workers"),
        (["--nodes", "4", "--servers", "2", "--server-nodes", "3"], "some serving nodes would be empty"),
        (["--nodes", "4", "--server-nodes", "1"], "2 workers on 3 worker nodes"),
        (["--server-nodes", "-1"], "--server-nodes must be 0"),
        (
            [
                "--nodes",
                "3",
                "--workers",
                "12",
                "--server-nodes",
                "1",
                "--gpus-per-worker",
                "1",
                "--gpus-per-node",
                "4",
            ],
            "use --nodes 4",  # 1 serving node + 3 nodes of 4 GPU workers
        ),
    ],
)
def test_impossible_server_placements_are_refused(args, why):
    from typer.testing import CliRunner

    from qtrain.cli.app import app

    r = CliRunner().invoke(app, ["slurm", "render", "default", "--workers", "2", *args])
    assert r.exit_code == 2 and why in r.output, r.output


@pytest.mark.parametrize(
    "env, why",
    [
        ({"QTRAIN_LAUNCHER": "mpiexec"}, "the mpiexec launcher would place them its own way"),
        ({"QTRAIN_TASK_NODES": "0 07"}, "names node '07', the job has 1 nodes"),  # bash reads 07 as octal
        ({"QTRAIN_TASK_NODES": "0 1"}, "names node '1', the job has 1 nodes"),
        ({"SLURM_NTASKS": "3"}, "names 2 tasks, the job has 3"),
    ],
)
def test_the_template_refuses_task_nodes_it_cannot_apply_before_writing_anything(tmp_path, env, why):
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    env = {
        **os.environ,
        "QTRAIN_TASK_NODES": "0 0",
        "QTRAIN_LAUNCHER": "srun-pmi2",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": host,
        **env,
    }
    r = subprocess.run(
        ["bash", str(REPO / "slurm" / "train.sbatch"), "default", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and why in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()  # no start logged, no host file


def _render(*args):
    from typer.testing import CliRunner

    from qtrain.cli.app import app

    return CliRunner().invoke(app, ["slurm", "render", *args])


def test_render_a_script_job_for_both_ways_a_script_is_configured(tmp_path):
    """--script renders `qtrain run SCRIPT -- ARGS`: without -c/--set the script takes --out and
    --resume itself (QTRAIN_SCRIPT_OPTIONS=script); with them qtrain run does (=qtrain, its
    options in QTRAIN_RUN_OPTIONS, runtime.servers added for --servers)."""
    own = _render(
        "--script", "examples/gpt/train.py", "--workers", "2", "--", "--max-iters", "100", "--lr", "3e-4"
    )
    assert own.exit_code == 0, own.output
    script = (REPO / "examples" / "gpt" / "train.py").resolve()
    assert f"export QTRAIN_SCRIPT={script}\n" in own.output
    assert "export QTRAIN_SCRIPT_OPTIONS=script " in own.output
    assert 'set -- --max-iters 100 --lr 3e-4 "$@"\n' in own.output
    assert f"render --nodes 1 --workers 2 --script {script} -- --max-iters 100 --lr 3e-4`" in own.output
    run = _render(
        "--script", "tests/library_scripts/resumable.py", "-c", "configs/sgd.yaml", "--set", "train.steps=9",
        "--workers", "2", "--servers", "2", "--", "--steps", "9",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    sgd = (REPO / "configs" / "sgd.yaml").resolve()
    assert "export QTRAIN_SCRIPT_OPTIONS=qtrain " in run.output
    assert f"export QTRAIN_RUN_OPTIONS='-c {sgd} --set train.steps=9 --set runtime.servers=2'\n" in run.output
    assert 'set -- --steps 9 "$@"\n' in run.output
    script = (REPO / "tests" / "library_scripts" / "resumable.py").resolve()
    header = f"render --nodes 1 --workers 2 --servers 2 -c {sgd} --set train.steps=9 --script {script}"
    header += " -- --steps 9`"
    assert header in run.output  # the options as they could be typed again
    warned = _render("--script", "examples/gpt/train.py", "--workers", "2", "--servers", "2")
    assert warned.exit_code == 0 and "the script's own config must set runtime.servers=2" in warned.output


@pytest.mark.parametrize(
    "args, why",
    [
        (["--script", "nope.py", "--workers", "2"], "--script 'nope.py': no such file"),
        (["--script", "x\ntouch PWNED; #.py", "--workers", "2"], "a line break or NUL cannot go"),
        (
            ["--script", "examples/gpt/train.py", "--workers", "2", "--", "--lr", "1\n#SBATCH --x"],
            "a line break",
        ),
        (["--script", "examples/gpt/train.py", "--set", "a=b c", "--workers", "2"], "whitespace cannot go"),
        (
            ["--script", "examples/gpt/train.py", "-c", "nope.yaml", "--workers", "2"],
            "'nope.yaml' does not exist",
        ),
        (
            ["configs/default.yaml", "--set", "a=1", "--workers", "2"],
            "-c/--config and --set go with --script",
        ),
        (["--workers", "2"], "give one CONFIG, or --script"),
    ],
)
def test_render_refuses_a_bad_script_job_in_one_line(args, why):
    r = _render(*args)
    assert r.exit_code == 2 and why in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


FAKE_LAUNCHER = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$LAUNCHED"
"""


@pytest.mark.parametrize(
    "options, restarts, checkpoint, expected",
    [
        ("script", 0, False, ["run", "S", "--", "--lr", "1", "--out", "OUT"]),
        ("script", 1, True, ["run", "S", "--", "--lr", "1", "--out", "OUT", "--resume", "auto"]),
        ("script", 1, False, ["run", "S", "--", "--lr", "1", "--out", "OUT"]),  # the first start moved aside
        ("qtrain", 0, False, ["run", "-c", "C", "--out", "OUT", "S", "--", "--lr", "1"]),
        ("qtrain", 1, True, ["run", "-c", "C", "--out", "OUT", "--resume", "auto", "S", "--", "--lr", "1"]),
        ("qtrain", 1, False, ["run", "-c", "C", "--out", "OUT", "--overwrite", "S", "--", "--lr", "1"]),
    ],
)
def test_the_template_hands_out_and_resume_to_whoever_takes_them(
    tmp_path, options, restarts, checkpoint, expected
):
    """The job's command line for a script (through a stand-in launcher that records it): --out,
    --resume auto after a checkpoint, and a restart before any checkpoint, for a script that takes
    them itself and for qtrain run's options."""
    launcher = tmp_path / "launch.sh"
    launcher.write_text(FAKE_LAUNCHER)
    launcher.chmod(0o755)
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text("seed: 0\n")
    if checkpoint:
        (out / "checkpoints" / "step-5.h5").write_bytes(b"")
    env = {
        **os.environ,
        "QTRAIN_LAUNCHER": "mpiexec",
        "QTRAIN_MPIEXEC": str(launcher),
        "LAUNCHED": str(tmp_path / "launched"),
        "QTRAIN_SCRIPT": "S",
        "QTRAIN_SCRIPT_OPTIONS": options,
        "QTRAIN_RUN_OPTIONS": "-c C" if options == "qtrain" else "",
        "QTRAIN": "/bin/true",
        "QTRAIN_HOME": str(tmp_path),
        "SLURM_RESTART_COUNT": str(restarts),
        "SLURM_JOB_ID": "7",
    }
    (tmp_path / "S").write_text("")
    extra = ["--out", str(out)] if options == "script" else []
    if options == "qtrain":
        env["QTRAIN_RUN_OPTIONS"] = f"-c C --out {out}"
    r = subprocess.run(
        ["bash", str(REPO / "slurm" / "train.sbatch"), "--lr", "1", *extra],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    launched = (tmp_path / "launched").read_text().splitlines()
    assert launched[:2] == ["-n", "3"] and launched[2] == "/bin/true"
    got = [{str(out): "OUT"}.get(w, w) for w in launched[3:]]
    assert got == expected, got
    moved = tmp_path / "out.before-restart-1"
    assert moved.exists() == (options == "script" and restarts == 1 and not checkpoint)
    if moved.exists():
        assert (moved / "config.yaml").read_text() == "seed: 0\n" and "moved to" in r.stdout


def test_a_rendered_script_job_runs_the_script_with_its_arguments_under_slurm(cluster, tmp_path):
    """`slurm render --script` of examples/gpt (tiny): sbatch runs `qtrain run SCRIPT -- ARGS`
    through srun, with the arguments given at render and at submission, and the job's --out
    (runs/slurm-JOBID) reaches qtrain.init through the script."""
    tiny = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--warmup-iters", "2"]
    r = _render("--script", "examples/gpt/train.py", "--workers", "2", "--", *tiny, "--max-iters", "6")
    assert r.exit_code == 0, r.output
    job = tmp_path / "gpt.sh"
    job.write_text(r.output)
    jid = sbatch(str(job), "--eval-interval", "3")
    log = REPO / f"slurm-qtrain-{jid}.out"
    assert wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}) == "COMPLETED", _text(log)
    out = REPO / "runs" / f"slurm-{jid}"
    try:
        s = summary(out)
        assert s["steps"] == 6 and s["workers"] == 2 and [e["step"] for e in s["evals"]] == [3, 6]
        assert "step 6 val_loss" in _text(log)
    finally:
        shutil.rmtree(out, ignore_errors=True)
