"""A fingerprint of how this host rounds floats, for keying pinned numerical results.

Two hosts that report the same torch version and CPU capability can still round differently: on
2026-12-01 an Intel Xeon and an AMD EPYC both reported ``AVX512``, and every pinned
``params_sha256`` differed between them (Intel's MKL runs other GEMM kernels on Intel CPUs than on
AMD ones). So the key is not what the host says about itself but what it computes: a small probe
through the same kinds of kernels the pinned runs use, hashed.

The probe's inputs are exact (integers scaled by powers of two, drawn with numpy's legacy
``RandomState``, which is the same everywhere), so only the computation can move the hash:

- torch's init RNG (``uniform_``, ``normal_``, ``kaiming_uniform_``), which builds the models;
- an MLP forward and backward at the pinned runs' shapes (batch 32 and evaluation-sized batches,
  64-64-10, ReLU, cross-entropy): MKL/oneDNN GEMM and the vectorised log-softmax;
- torch elementwise transcendental functions and reductions at sizes with vector tails (ATen's
  per-capability kernels);
- numpy's float32 transcendental functions and float64 column statistics (its SIMD dispatch);
- a numba-compiled loop with the ``reassoc`` fast-math flag the CPU kernels use (LLVM's vector
  width for this CPU).

Versions of torch, numpy and numba are hashed too. The fingerprint changes with nothing in
``qtrain/``: a refactor that moves the pinned values cannot move the key it is looked up under.
A probe is never perfect; ``tests/test_pinned_params.py`` also guards against two hosts that share
a fingerprint but round differently (see its docstring).
"""

from __future__ import annotations

import hashlib

import numba
import numpy as np
import torch


def _exact(rng: np.random.RandomState, *shape: int) -> np.ndarray:
    """float32 values k/256 for integers k in [-512, 512): exactly representable everywhere."""
    return (rng.randint(-512, 512, size=shape) / 256.0).astype(np.float32)


@numba.njit(fastmath={"reassoc"}, cache=False)
def _numba_probe(x):  # pragma: no cover - compiled
    acc = np.float32(0.0)
    for i in range(x.size):
        acc += x[i] * x[i]
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = x[i] / (np.sqrt(acc) + np.float32(1e-8))
    return acc, out


def _torch_items(rng: np.random.RandomState) -> list[torch.Tensor]:
    items = []
    g = torch.Generator().manual_seed(1234)
    items += [torch.empty(1031).uniform_(-1, 1, generator=g), torch.empty(1031).normal_(generator=g)]
    w = torch.empty(64, 64)
    torch.nn.init.kaiming_uniform_(w, a=5**0.5, generator=g)
    items.append(w)
    for batch in (32, 360, 1437):
        x = torch.from_numpy(_exact(rng, batch, 64))
        w1 = torch.from_numpy(_exact(rng, 64, 64) / 8).requires_grad_()
        b1 = torch.from_numpy(_exact(rng, 64) / 8).requires_grad_()
        w2 = torch.from_numpy(_exact(rng, 10, 64) / 8).requires_grad_()
        b2 = torch.from_numpy(_exact(rng, 10) / 8).requires_grad_()
        labels = torch.from_numpy(rng.randint(0, 10, size=batch))
        logits = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x, w1, b1)), w2, b2)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        items += [logits.detach(), loss.detach(), w1.grad, b1.grad, w2.grad, b2.grad]
        items.append(logits.detach().argmax(1))
    v = torch.from_numpy(_exact(rng, 4170))
    items += [f(v) for f in (torch.exp, torch.tanh, torch.sigmoid, torch.sin)]
    items += [torch.log(v.abs() + 1), torch.sqrt(v.abs()), torch.rsqrt(v.abs() + 1), v.abs().pow(0.3)]
    items += [v.sum(), v.norm(), (v * v).mean(), v[:4160].view(65, 64).sum(0), v.cumsum(0)]
    return items


def _numpy_items(rng: np.random.RandomState) -> list[np.ndarray]:
    v = _exact(rng, 4170)
    x = _exact(rng, 1437, 64).astype(np.float64) * 3 + 7
    return [np.exp(v), np.log(np.abs(v) + 1), np.tanh(v), x.mean(0), x.std(0), x.sum(), np.sqrt(np.abs(v))]


def probe_bytes() -> bytes:
    """The probe's results, concatenated, computed on one torch thread as the pinned runs are
    (``runtime.threads: 1``): MKL splits a GEMM's reduction over threads, so the thread count
    moves the weight gradients' last bits."""
    rng = np.random.RandomState(20261201)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = [t.contiguous().numpy().tobytes() for t in _torch_items(rng)]
    finally:
        torch.set_num_threads(threads)
    parts += [np.ascontiguousarray(a).tobytes() for a in _numpy_items(rng)]
    acc, out = _numba_probe(_exact(rng, 4170))
    parts += [np.float32(acc).tobytes(), out.tobytes()]
    return b"".join(parts)


def fingerprint() -> str:
    """16 hex digits: the versions of torch, numpy and numba and the probe's results, hashed."""
    h = hashlib.sha256(f"{torch.__version__}|{np.__version__}|{numba.__version__}|".encode())
    h.update(probe_bytes())
    return h.hexdigest()[:16]


if __name__ == "__main__":
    print(fingerprint())
