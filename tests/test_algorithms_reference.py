"""Full-precision algorithms against torch.optim and float64 reference implementations."""

import numpy as np
import pytest
import torch
from engine_helpers import build, gradient_stream, run

from qtrain.config import AlgorithmConfig, LinkConfig

STEPS, WORKERS, N = 50, 3, 400


def torch_reference(opt_factory, x0, grads):
    p = torch.nn.Parameter(x0.clone())
    opt = opt_factory([p])
    for step_grads in grads:
        total = torch.zeros_like(x0)
        for g in step_grads:  # same summation order as the server
            total += g
        p.grad = total / len(step_grads)
        opt.step()
    return p.detach()


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize(
    "hp, factory",
    [
        (AlgorithmConfig(name="adam", lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
        (
            AlgorithmConfig(
                name="adam", lr=0.003, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.01, amsgrad=True
            ),
            lambda p: torch.optim.Adam(
                p, lr=0.003, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, amsgrad=True
            ),
        ),
        (AlgorithmConfig(name="sgd", lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
        (
            AlgorithmConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=0.001),
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.001),
        ),
        (
            AlgorithmConfig(name="sgd", lr=0.02, momentum=0.9, nesterov=True),
            lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9, nesterov=True),
        ),
        (
            AlgorithmConfig(name="qcmd-adagrad", lr=0.1, l1=0.0, adagrad_eps=1e-10),
            lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-10),
        ),
        (
            AlgorithmConfig(name="qcmd-adagrad", lr=0.1, l1=0.0, adagrad_eps=1e-6, lr_decay=0.01),
            lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-6, lr_decay=0.01),
        ),
    ],
    ids=["adam", "adam-amsgrad-wd", "sgd", "sgd-momentum-wd", "sgd-nesterov", "qcmd-l1=0", "qcmd-lr-decay"],
)
def test_full_precision_rules_equal_torch_optim(hp, factory):
    none = LinkConfig(codec="none")
    x0 = torch.randn(N, generator=torch.Generator().manual_seed(3))
    _, server, engines, replica = build(hp, none, none, x0=x0, workers=WORKERS)
    grads = gradient_stream(STEPS, WORKERS, N)
    run(server, engines, replica, grads)
    ref = torch_reference(factory, x0, grads)
    assert rel(server.master, ref) < 1e-6
    assert torch.equal(server.master, replica), "replica and server must stay bit-identical"


def prox_cmd_reference(x0, grads, lr, l1, delta):
    """Duchi et al. (2011) AdaGrad composite mirror descent with l1, float64 numpy, written from the
    per-coordinate minimization: argmin_x eta*g*x + eta*l1*|x| + 0.5*H*(x - x_t)^2."""
    x = x0.double().numpy().copy()
    G = np.zeros_like(x)
    for step_grads in grads:
        g = np.mean([s.double().numpy() for s in step_grads], axis=0)
        G += g * g
        H = delta + np.sqrt(G)
        out = np.empty_like(x)
        for i in range(len(x)):
            # minimizer of the 1-D strongly convex piecewise quadratic: try both signs and zero
            cands = [0.0]
            for sgn in (1.0, -1.0):
                c = x[i] - (lr * g[i] + lr * l1 * sgn) / H[i]
                if c * sgn > 0:
                    cands.append(c)
            obj = [lr * g[i] * c + lr * l1 * abs(c) + 0.5 * H[i] * (c - x[i]) ** 2 for c in cands]
            out[i] = cands[int(np.argmin(obj))]
        x = out
    return torch.from_numpy(x)


def rda_reference(grads, lr, l1, delta, numel):
    """Duchi et al. (2011) AdaGrad RDA with l1 in the average-gradient form, float64:
    x_{t+1} = sign(-gbar) * (lr t / H) * max(|gbar| - l1, 0)."""
    S = np.zeros(numel)
    G = np.zeros(numel)
    x = None
    for t, step_grads in enumerate(grads, start=1):
        g = np.mean([s.double().numpy() for s in step_grads], axis=0)
        S += g
        G += g * g
        gbar = S / t
        H = delta + np.sqrt(G)
        x = np.sign(-gbar) * (lr * t / H) * np.maximum(np.abs(gbar) - l1, 0)
    return torch.from_numpy(x)


def test_qcmd_with_l1_matches_float64_prox_reference_and_is_sparse():
    hp = AlgorithmConfig(name="qcmd-adagrad", lr=0.1, l1=0.5, adagrad_eps=1e-8)
    x0 = torch.randn(60, generator=torch.Generator().manual_seed(4)) * 0.1
    _, server, engines, replica = build(hp, LinkConfig(codec="none"), LinkConfig(codec="sparse"), x0=x0)
    grads = gradient_stream(20, 3, 60, seed=5)
    run(server, engines, replica, grads)
    ref = prox_cmd_reference(x0, grads, 0.1, 0.5, 1e-8)
    assert torch.allclose(server.master.double(), ref, atol=1e-6, rtol=1e-5)
    assert (server.master == 0).sum() > 0, "l1 must produce exact zeros"
    assert torch.equal(replica, server.master), "the lossless sparse downlink carries the exact model"


def test_qrda_matches_float64_reference():
    hp = AlgorithmConfig(name="qrda-adagrad", lr=0.2, l1=0.3, adagrad_eps=1e-8)
    _, server, engines, replica = build(hp, LinkConfig(codec="none"), LinkConfig(codec="sparse"), numel=80)
    grads = gradient_stream(25, 3, 80, seed=6)
    run(server, engines, replica, grads)
    ref = rda_reference(grads, 0.2, 0.3, 1e-8, 80)
    assert torch.allclose(server.master.double(), ref, atol=1e-6, rtol=1e-5)
    assert (server.master == 0).sum() > 0


def adam_direction_reference(gs, lr, b1, b2, eps, bias_correction=True, eps_inside=False):
    m = np.zeros_like(gs[0])
    v = np.zeros_like(gs[0])
    out = []
    for t, g in enumerate(gs, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
        out.append(lr * mh / (np.sqrt(vh + eps) if eps_inside else np.sqrt(vh) + eps))
    return out


@pytest.mark.parametrize("bias_correction, eps_inside", [(True, False), (False, False), (True, True)])
def test_local_adam_worker_rule_matches_float64(bias_correction, eps_inside):
    """qadam's worker step with codec none and no EF: the averaged update equals the mean of the
    float64 reference directions, and x moves by exactly that."""
    hp = AlgorithmConfig(name="qadam", lr=0.01, bias_correction=bias_correction, eps_inside_sqrt=eps_inside)
    up = LinkConfig(codec="none", error_feedback=False)
    x0 = torch.randn(N, generator=torch.Generator().manual_seed(8))
    _, server, engines, replica = build(hp, up, LinkConfig(codec="none"), x0=x0)
    grads = gradient_stream(30, 3, N, seed=9)
    run(server, engines, replica, grads)
    per_worker = [
        adam_direction_reference(
            [s[w].double().numpy() for s in grads], 0.01, 0.9, 0.999, 1e-8, bias_correction, eps_inside
        )
        for w in range(3)
    ]
    expected = x0.double().numpy() - sum(
        np.mean([per_worker[w][t] for w in range(3)], axis=0) for t in range(30)
    )
    assert np.allclose(server.master.double().numpy(), expected, atol=1e-5, rtol=1e-5)
