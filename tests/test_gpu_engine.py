"""On a CUDA device (``make test-gpu``): the GPU path gives the CPU's bytes. Skipped without one;
the CPU suite checks the same Triton kernels in the interpreter (tests/test_triton_kernels.py)."""

import pytest
import torch

from qtrain.algorithms.links import resolve_links
from qtrain.codecs import CounterStream, get_codec
from qtrain.config import AlgorithmConfig, LinkConfig
from qtrain.engine import WorkerEngine
from qtrain.engine.partition import Partition
from qtrain.kernels import kernel_codec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CODECS = [("sign", {}), ("ternary", {}), ("uniform", {"bits": 4}), ("uniform", {"bits": 8, "norm": "l2"})]


@pytest.mark.parametrize("name, params", CODECS)
def test_messages_are_the_same_bytes_on_cpu_and_gpu(name, params):
    codec = get_codec(name, **params)
    cpu, gpu = kernel_codec(codec, "cpu", "auto"), kernel_codec(codec, "cuda", "auto")
    assert cpu is not None and gpu is not None
    x = torch.randn(1_000_003, generator=torch.Generator().manual_seed(1))
    e = torch.randn(x.numel(), generator=torch.Generator().manual_seed(2)) * 0.1
    rng = CounterStream(123456789, 77, 4096)
    e_cpu, e_gpu = e.clone(), e.cuda()
    m_cpu, _ = cpu.encode_ef(x, e_cpu, rng=rng)
    m_gpu, _ = gpu.encode_ef(x.cuda(), e_gpu, rng=rng)
    assert bytes(m_cpu.numpy()) == bytes(m_gpu.cpu().numpy())
    assert torch.equal(e_cpu, e_gpu.cpu())
    assert torch.equal(codec.decode(m_cpu), codec.decode(m_gpu).cpu())


def test_efficient_adam_worker_on_the_gpu_sends_the_cpu_bytes():
    class Cfg:
        algorithm = AlgorithmConfig(name="efficient-adam", lr=0.01)
        uplink = LinkConfig()
        downlink = LinkConfig()

    algo, up, down = resolve_links(Cfg)
    n = 300_000
    part = Partition.build(n, (up.codec.bucket, down.codec.bucket), 3)
    engines = {d: WorkerEngine(algo, up, down.codec, part, torch.device(d), 0, 1) for d in ("cpu", "cuda")}
    params = torch.randn(n, generator=torch.Generator().manual_seed(3))
    for step in range(3):
        grad = torch.randn(n, generator=torch.Generator().manual_seed(10 + step))
        sent = {}
        for d, eng in engines.items():
            eng.begin_step()
            sent[d] = [bytes(eng.make_uplink(seg, grad.to(d), params.to(d)).cpu().numpy()) for seg in part]
        assert sent["cpu"] == sent["cuda"], step
