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
        "gpus",
        "torch_threads",
    ):
        assert key in data
    assert data["cuda_aware_mpi"] in ("yes", "no", "unknown")
    assert "MPI" in data["mpi_library"] or "Open MPI" in data["mpi_library"]


@pytest.mark.parametrize("value, answer", [("1", "yes"), ("0", "no")])
def test_cuda_aware_environment_override(monkeypatch, value, answer):
    monkeypatch.setenv("QTRAIN_CUDA_AWARE", value)
    data = json.loads(runner.invoke(app, ["info", "--json"]).output)
    assert data["cuda_aware_mpi"] == answer
    assert "QTRAIN_CUDA_AWARE" in data["cuda_aware_how"]


def test_cuda_aware_config_setting_wins(monkeypatch):
    from qtrain.runtime.mpi_info import decide_cuda_aware

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
    report = json.loads(result.output)
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
