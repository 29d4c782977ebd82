import json
import os
import platform
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from qtrain.cli.app import app

runner = CliRunner()


def json_part(stdout: str) -> str:
    """The JSON a command printed (older typer's CliRunner adds stderr's progress lines to stdout)."""
    return stdout[stdout.index("{") :]


def test_help_lists_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("info", "bench"):
        assert cmd in result.output


def test_python_dash_m_qtrain():
    proc = subprocess.run([sys.executable, "-m", "qtrain", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "info" in proc.stdout


def test_info_json_reports_versions_mpi_and_cuda_awareness(monkeypatch):
    monkeypatch.delenv("QTRAIN_CUDA_AWARE", raising=False)
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in (
        "qtrain",
        "torch",
        "mpi4py",
        "h5py",
        "mpi_library",
        "cuda_aware_mpi",
        "cuda_aware_how",
        "torch_backend",
        "gpus",
        "torch_threads",
    ):
        assert key in data
    assert data["cuda_aware_mpi"] in ("yes", "no", "unknown")
    assert "MPI" in data["mpi_library"] or "Open MPI" in data["mpi_library"]
    import torch.distributed as dist

    gloo = dist.is_available() and dist.is_gloo_available()
    if gloo:
        assert data["torch_backend"] == "gloo (runtime.backend: torch, torchrun)"
    else:
        assert data["torch_backend"].startswith("none: this torch")


@pytest.mark.parametrize("value, answer", [("1", "yes"), ("0", "no")])
def test_cuda_aware_environment_override(monkeypatch, value, answer):
    monkeypatch.setenv("QTRAIN_CUDA_AWARE", value)
    data = json.loads(runner.invoke(app, ["info", "--json"]).output)
    assert data["cuda_aware_mpi"] == answer
    assert "QTRAIN_CUDA_AWARE" in data["cuda_aware_how"]


def test_cuda_aware_config_setting_wins(monkeypatch):
    from qtrain.runtime.backends.mpi import device_buffers as decide_cuda_aware

    monkeypatch.setenv("QTRAIN_CUDA_AWARE", "1")
    assert decide_cuda_aware("off").answer == "no"
    with pytest.raises(ValueError, match="auto, on or off"):
        decide_cuda_aware("maybe")
    monkeypatch.setenv("QTRAIN_CUDA_AWARE", "yes")
    with pytest.raises(ValueError, match="must be 0 or 1"):
        decide_cuda_aware("auto")


def test_bench_codec_json_fields():
    result = runner.invoke(
        app, ["bench", "codec", "--numel", "4096", "--repeats", "1", "--json", "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(json_part(result.stdout))
    rows = report["codecs"]
    host = report["host"]
    assert host["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert host["cores"] == os.cpu_count()
    assert host["copy_gbps"] == rows[0]["copy_gbps"] > 0 and host["torch_threads"] == 1
    assert report["worker_step"]["floor_ratio"] > 0 and report["worker_step"]["threads"] == 1
    paths = {r["name"]: r["path"] for r in rows}
    assert paths["sign"] == paths["uniform"] == paths["threshold"] == "numba" and paths["topk"] == "torch"
    assert {r["name"] for r in rows} >= {
        "none",
        "fp16",
        "bf16",
        "sign",
        "uniform",
        "ternary",
        "threshold",
        "topk",
    }
    for r in rows:
        for key in (
            "codec",
            "bits",
            "numel",
            "wire_bytes",
            "encode_s",
            "decode_s",
            "copy_gbps",
            "encode_floor_ratio",
            "decode_floor_ratio",
            "encode_ef_floor_ratio",
            "aggregate_floor_ratio",
            "path",
        ):
            assert key in r
        assert r["numel"] == 4096 and r["encode_s"] > 0 and r["encode_floor_ratio"] > 0
        assert r["threads"] == 1


def test_the_host_is_named_from_cpuinfo_or_else_platform(tmp_path):
    from qtrain.bench.host import cpu_model, describe_host, host_line

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Example CPU 9000 @ 3.0GHz\nflags\t: a b\n")
    assert cpu_model(str(info)) == "Example CPU 9000 @ 3.0GHz"
    info.write_text("processor\t: 0\nmodel name\t:\n")  # an empty name is no name
    assert cpu_model(str(info)) == (platform.processor() or "unknown")
    assert cpu_model(str(tmp_path / "missing")) == (platform.processor() or "unknown")
    host = describe_host(copy_gbps=12.5)
    line = host_line(host | {"torch_threads": 1})
    assert line.startswith(f"host: {host['cpu_model']} ({host['cpu_capability']}, {os.cpu_count()} cores")
    assert "copy 12.5 GB/s (1 thread)" in line and describe_host()["copy_gbps"] > 0


@pytest.mark.parametrize("rank, says", [(None, True), ("0", True), ("3", False)])
def test_a_usage_error_is_said_by_rank_0_only_and_every_rank_exits_2(monkeypatch, capsys, rank, says):
    """Every rank of a job parses the same command line: one of them says what is wrong."""
    from qtrain.cli.app import _invoke
    from qtrain.runtime.mpi_info import RANK_VARIABLES

    for var in RANK_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    if rank is not None:
        monkeypatch.setenv("PMI_RANK", rank)
    monkeypatch.setattr(sys, "argv", ["qtrain", "train", "default", "--sett", "x=1"])
    assert _invoke() == 2
    err = capsys.readouterr().err
    assert ("No such option: --sett" in err) == says and (err == "") != says, err
    monkeypatch.setattr(sys, "argv", ["qtrain", "--version"])
    assert _invoke() == 0 and capsys.readouterr().out.startswith("qtrain ")


def test_dash_h_version_and_flags_that_look_like_flags():
    for args in (["-h"], ["simulate", "-h"], ["analyze", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "-h, --help" in result.output, result.output
    assert "--json  " in runner.invoke(app, ["analyze", "-h"]).output  # no `<bool>` after a flag
    result = runner.invoke(app, ["--version"])
    import qtrain

    assert result.exit_code == 0 and result.output == f"qtrain {qtrain.__version__}\n"


def test_config_list_and_show_print_the_shipped_configs():
    listed = runner.invoke(app, ["config", "list"])
    assert listed.exit_code == 0 and listed.output.splitlines()[0].startswith("adam ")
    shown = runner.invoke(app, ["config", "show", "qadam"])
    assert shown.exit_code == 0 and "weight_quantization" in shown.output
    missing = subprocess.run(
        [sys.executable, "-m", "qtrain", "config", "show", "nope"], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no shipped config 'nope' (shipped: adam," in missing.stderr


def test_quiet_prints_nothing(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "qtrain", "simulate", "sgd", "-w", "2", "--set", "train.steps=3", "-q"]
        + ["--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")


def test_without_an_mpi_library_info_still_reports_and_train_says_how_to_get_one(tmp_path):
    env = {**os.environ, "MPI4PY_LIBMPI": str(tmp_path / "libmpi.so")}  # nothing there
    info = subprocess.run([sys.executable, "-m", "qtrain", "info"], capture_output=True, text=True, env=env)
    assert info.returncode == 0 and "torch " in info.stdout, info.stderr
    assert "mpi_library            none: no MPI library could be loaded" in info.stdout
    for args in (["train", "default"], ["run", "examples/quickstart.py"]):
        p = subprocess.run([sys.executable, "-m", "qtrain", *args], capture_output=True, text=True, env=env)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert "no MPI library could be loaded" in lines[0] and "pip install mpich" in lines[0]


def test_a_cold_kernel_cache_is_noticed(tmp_path, monkeypatch):
    from qtrain.kernels import cache_is_cold

    assert not cache_is_cold()  # make install compiled them
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert cache_is_cold()


def test_bench_codec_labels_its_columns_and_says_how_long_it_takes():
    result = runner.invoke(app, ["bench", "codec", "--numel", "5000", "--repeats", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "about" in result.output and "(estimated from 5000 elements)" in result.output  # said first
    assert any("milliseconds, then x the path's memory-traffic floor" in line for line in lines)
    header = next(line for line in lines if line.startswith("codec"))
    assert header.split() == [
        "codec",
        "bits",
        "ratio",
        "engine",
        "api",
        "encode",
        "encode+EF",
        "decode",
        "aggregate",
    ]
    cells = {line.split()[0]: line.split()[3:5] for line in lines}
    assert cells["sign"] == ["numba", "numba"] and cells["topk-1%"] == ["torch", "torch"]
    assert cells["none"] == ["numba", "torch"]  # the public API leaves the float codecs to torch
    args = ["bench", "codec", "--numel", "300", "--repeats", "1", "--kernels", "torch", "--json"]
    reference = runner.invoke(app, args)
    rows = json.loads(json_part(reference.stdout))["codecs"]
    assert {r["path"] for r in rows} == {"torch"} and all(r["encode_s"] > 0 for r in rows)
