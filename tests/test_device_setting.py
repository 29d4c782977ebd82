"""``runtime.device`` and ``runtime.server_device`` (issue 37, part 4): the form is validated with
the config, a CUDA device the node lacks is one ValueError at placement (which set-up reports as
one line for the job; it was an AssertionError traceback per worker), and ``qtrain simulate``
refuses a GPU setting instead of training on the CPU under a config.yaml that names the GPU.
``runtime.segments`` is validated against the partition's own bound."""

import socket

import pytest
import torch

from qtrain.config import ConfigError, load_config
from qtrain.engine.partition import MAX_SEGMENTS, Partition
from qtrain.runtime.placement import choose_device


def refused(overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


def test_the_device_form_is_validated_with_the_config():
    assert refused(["runtime.device=cuda:banana"]) == (
        "--set runtime.device=cuda:banana: runtime.device must be auto, cpu, cuda or cuda:N (N a GPU index), "
        "got 'cuda:banana'"
    )
    assert refused(["runtime.server_device=gpu"]) == (
        "--set runtime.server_device=gpu: runtime.server_device must be cpu, cuda or cuda:N (N a GPU index), "
        "got 'gpu'"
    )
    for setting in ("auto", "cpu", "cuda", "cuda:0", "cuda:15"):
        assert load_config(None, [f"runtime.device={setting}"]).runtime.device == setting


def test_a_cuda_device_this_node_lacks_is_one_value_error(monkeypatch):
    host = socket.gethostname()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for setting in ("cuda", "cuda:9"):
        with pytest.raises(ValueError) as info:
            choose_device(setting, 0)
        assert str(info.value) == f"runtime.device={setting} but CUDA is not available on node {host}"
    assert choose_device("auto", 3) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a node with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError) as info:
        choose_device("cuda:9", 0, "runtime.server_device")
    assert str(info.value) == (
        f"runtime.server_device=cuda:9 but node {host} has 2 visible GPU(s): cuda:0 to cuda:1"
    )
    assert [choose_device(s, 3) for s in ("cuda:1", "cuda", "auto")] == [torch.device("cuda:1")] * 3


@pytest.mark.parametrize("key", ["runtime.device", "runtime.server_device"])
def test_simulate_refuses_a_gpu_setting_before_writing_anything(key, tmp_path):
    from qtrain.engine.simulator import simulate

    cfg = load_config(None, [f"{key}=cuda:0", "train.steps=1"])
    with pytest.raises(ValueError) as info:
        simulate(cfg, 1, tmp_path / "out", log=lambda s: None)
    assert str(info.value) == (
        f"{key}=cuda:0: qtrain simulate runs every virtual worker and the server on the CPU; set {key}=cpu, "
        "or train on GPUs with mpiexec ... qtrain train"
    )
    assert not (tmp_path / "out").exists()  # it trained on the CPU under a config.yaml naming the GPU


def test_segments_are_validated_against_the_partitions_bound():
    assert MAX_SEGMENTS == 4096
    assert load_config(None, [f"runtime.segments={MAX_SEGMENTS}"]).runtime.segments == MAX_SEGMENTS
    assert len(Partition.build(10**7, (1,), MAX_SEGMENTS)) == MAX_SEGMENTS
    assert refused([f"runtime.segments={MAX_SEGMENTS + 1}"]) == (
        f"--set runtime.segments={MAX_SEGMENTS + 1}: runtime.segments must be at most {MAX_SEGMENTS} "
        f"(messages per direction per step: MPI tags), got {MAX_SEGMENTS + 1}"
    )
    with pytest.raises(ValueError):  # what a config past the bound met only when the run started
        Partition.build(10**7, (1,), MAX_SEGMENTS + 1)
