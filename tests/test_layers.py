"""Imports go one way (docs/architecture.md, "Layers"): a module may import its own package and
packages of lower layers, never a higher one. Function-level (lazy) imports count too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "qtrain"

# layer of each top-level piece of qtrain; higher numbers sit on top
LAYERS = {
    "__init__": 0,  # the version string
    "seeding": 0,
    "units": 0,
    "memory": 0,  # the bound every reader checks before it allocates
    "codecs": 0,
    "io": 0,
    "shipped": 0,  # the configs and the Slurm template that ship with qtrain
    "kernels": 1,  # compiled fast paths of the codecs
    "algorithms": 1,
    "models": 1,
    "data": 1,
    "analysis": 1,
    "config": 2,
    "engine": 3,
    "bench": 3,
    "reproduce": 3,  # paper reproductions: simulator runs, tables and plots
    "runtime": 4,
    "library": 5,  # the public Python API (qtrain.init, sessions, the optimizer)
    "cli": 6,
    "__main__": 6,
}
# ``qtrain/__init__.py`` re-exports the public API on first use (PEP 562): that one lazy import
# goes up, and nothing else in it may
PUBLIC_REEXPORT = ("__init__.py", "qtrain.library")


def piece(module: str) -> str:
    """``qtrain.engine.worker`` -> ``engine``; ``qtrain`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, m) for line, m in found if m == "qtrain" or m.startswith("qtrain.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_piece_has_a_layer():
    pieces = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES}
    assert pieces <= set(LAYERS), pieces - set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = [
        f"line {line}: {module} (layer {LAYERS[piece(module)]})"
        for line, module in imports(path)
        if LAYERS[piece(module)] > LAYERS[own] and (str(path.relative_to(PACKAGE)), module) != PUBLIC_REEXPORT
    ]
    assert not upward, f"{own} (layer {LAYERS[own]}) imports upward: {upward}"


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from qtrain.runtime.watchdog import Watchdog\n")
    assert imports(bad) == [(2, "qtrain.runtime.watchdog")]


# ---- one backend (engine/backend.py): only the backends talk to a communication library
BACKENDS = PACKAGE / "runtime" / "backends"
# the calls of mpi4py's API that carry or route messages, and its world
MPI_CALLS = {
    "Isend", "Irecv", "Ibcast", "Send", "Recv", "Bcast", "Gather", "Allgather", "Scatter", "Reduce",
    "Allreduce", "Split", "Split_type", "Abort", "Get_rank", "Get_size", "Test", "Testsome", "Wait",
    "Waitall", "COMM_WORLD", "Query_thread", "Get_library_version", "Finalize",
}  # fmt: skip
# torch.distributed outside the backends: the DDP baselines the benchmarks compare against
DDP_BASELINES = {"bench/ddp_peer.py", "bench/ddp_twin.py", "bench/script_bench.py"}


def library_uses(path: Path) -> list[str]:
    """Where a module imports mpi4py or torch.distributed, or calls mpi4py's API by name (or names
    its world), in line order."""
    found = []
    tree = ast.parse(path.read_text())
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [f"line {node.lineno}: import {n}" for n in names if n.split(".")[0] == "mpi4py"]
        found += [f"line {node.lineno}: import {n}" for n in names if n.startswith("torch.distributed")]
        if isinstance(node, ast.Attribute) and node.attr in MPI_CALLS:
            if id(node) in called or node.attr == "COMM_WORLD":  # not e.g. ``except typer.Abort``
                found.append(f"line {node.lineno}: .{node.attr}")
    return sorted(found, key=lambda f: int(f.split(":")[0].removeprefix("line ")))


@pytest.mark.parametrize(
    "path",
    [m for m in MODULES if BACKENDS not in m.parents and str(m.relative_to(PACKAGE)) not in DDP_BASELINES],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_only_the_backends_talk_to_a_communication_library(path):
    assert not library_uses(path), f"{path.relative_to(PACKAGE)}: {library_uses(path)}"


def test_the_backend_checker_sees_mpi_and_torch_distributed(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f(comm):\n    from mpi4py import MPI\n    import torch.distributed as dist\n"
        "    comm.Isend(b, dest=0)\n    return MPI.COMM_WORLD\n"
    )
    assert library_uses(bad) == [
        "line 2: import mpi4py",
        "line 2: import mpi4py.MPI",
        "line 3: import torch.distributed",
        "line 4: .Isend",
        "line 5: .COMM_WORLD",
    ]
