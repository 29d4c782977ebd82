"""What one qtrain process costs before and after its training: start-up (imports, MPI, the
agreement between ranks) and exit, for a job that trains 2 steps.

    .venv/bin/python benchmarks/startup.py [--against COMMIT] [--repeats 5]

Three commands, each run ``--repeats`` times, interleaved, and timed as a whole (wall clock, and
CPU of the whole process tree from ``RUSAGE_CHILDREN``):

- ``python -c "import torch"``: the floor every rank pays;
- ``qtrain simulate configs/default.yaml`` for 2 steps: one process;
- ``mpiexec -n 3 qtrain train configs/default.yaml`` for 2 steps: a server and two workers.

With ``--against COMMIT`` the two qtrain commands also run in a ``git worktree`` of COMMIT
(their working directory, which ``python -m`` puts first on ``sys.path``), interleaved with this
tree's, and the table gives this tree's medians as a ratio of COMMIT's: both measured in the same
run on the same host. The test suite launches a few hundred such processes, so this cost, not
training, sets much of ``make test``'s time.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qtrain.bench.host import describe_host, host_line
from qtrain.runtime.mpi_info import launcher

REPO = Path(__file__).resolve().parent.parent
STEPS = ["--set", "train.steps=2", "--set", "train.eval_every=2", "--overwrite"]


def commands(out: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "import torch": [py, "-c", "import torch"],
        "qtrain simulate, 1 process": [py, "-m", "qtrain", "simulate", "configs/default.yaml", "--quiet"]
        + ["--out", str(out / "sim"), *STEPS],
        "qtrain train, mpiexec -n 3": [*launcher(), "-n", "3", py, "-m", "qtrain", "train"]
        + ["configs/default.yaml", "--out", str(out / "mpi"), *STEPS],
    }


def timed(cmd: list[str], tree: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, every descendant) of one run of ``cmd`` in
    ``tree`` (``python -m qtrain`` imports the qtrain of its working directory)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    p = subprocess.run(cmd, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"benchmarks/startup.py: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def worktree(commit: str, where: Path) -> Path:
    path = where / "against"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit],
        check=True,
        capture_output=True,
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="a commit to compare with, in the same run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(host_line(describe_host()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        other = worktree(args.against, tmp) if args.against else None
        try:
            runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for _ in range(args.repeats):
                for name, cmd in commands(tmp).items():
                    trees = [("this tree", REPO)]
                    if other is not None and name != "import torch":
                        trees.append((args.against, other))
                    for label, path in trees:
                        runs.setdefault((name, label), []).append(timed(cmd, path))
        finally:
            if other is not None:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)], capture_output=True
                )
    print(f"median of {args.repeats} runs each, interleaved")
    print(f"{'command':<30}{'code':<12}{'wall s':>9}{'CPU s':>9}{'wall ratio':>12}{'CPU ratio':>11}")
    for (name, label), values in runs.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        ratio = ""
        if label == "this tree" and (name, args.against) in runs:
            base = runs[(name, args.against)]
            ratio = (
                f"{wall / statistics.median(v[0] for v in base):>12.2f}"
                f"{cpu / statistics.median(v[1] for v in base):>11.2f}"
            )
        print(f"{name:<30}{label[:11]:<12}{wall:>9.2f}{cpu:>9.2f}{ratio}")


if __name__ == "__main__":
    main()
