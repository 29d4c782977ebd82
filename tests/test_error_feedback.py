"""Error-feedback bookkeeping: what was applied plus what is left equals what was wanted."""

import copy

import pytest
import torch
from engine_helpers import build, gradient_stream, run

from qtrain.config import AlgorithmConfig, LinkConfig

STEPS, WORKERS, N = 40, 3, 700

UPLINK_CASES = [
    ("sgd", LinkConfig(codec="sign", error_feedback=True, bucket=128)),
    ("adam", LinkConfig(codec="topk", k=8, bucket=128, error_feedback=True)),
    ("ecq-sgd", LinkConfig()),
    ("qadam", LinkConfig()),
    ("efficient-adam", LinkConfig()),
    ("qcmd-adagrad", LinkConfig(error_feedback=True)),
    ("qrda-adagrad", LinkConfig(codec="ternary", error_feedback=True)),
]


@pytest.mark.parametrize("name, uplink", UPLINK_CASES, ids=[c[0] for c in UPLINK_CASES])
def test_worker_side_residual_telescopes(name, uplink):
    hp = AlgorithmConfig(name=name, lr=0.01)
    algo, server, engines, replica = build(hp, uplink, numel=N, workers=WORKERS)
    assert all(e.error is not None for e in engines), "EF must be on for this test"
    grads = gradient_stream(STEPS, WORKERS, N)
    # the uncompressed updates p_t: the worker rule on a twin state (it never sees the codec)
    twins = [copy.deepcopy(e.state) for e in engines]
    wanted = [torch.zeros(N, dtype=torch.float64) for _ in range(WORKERS)]
    ups, _ = run(server, engines, replica, grads)
    replay = replica.clone()  # params only matter for weight decay, which is off here
    for t, step_grads in enumerate(grads, start=1):
        for w in range(WORKERS):
            wanted[w] += algo.worker_update(step_grads[w], replay, twins[w], t).double()
    for w, engine in enumerate(engines):
        applied = sum(engine.uplink_codec.decode(ups[t][w]).double() for t in range(STEPS))
        residual = engine.error.double()
        scale = sum(engine.uplink_codec.decode(ups[t][w]).double().abs() for t in range(STEPS)).max()
        assert float((applied + residual - wanted[w]).abs().max()) <= 1e-5 * float(scale) + 1e-7
        assert float(residual.norm()) > 0, "a lossy codec leaves a nonzero residual"


@pytest.mark.parametrize(
    "name, downlink",
    [("efficient-adam", LinkConfig()), ("sgd", LinkConfig(codec="uniform", bits=3, error_feedback=True))],
)
def test_server_side_residual_telescopes(name, downlink):
    hp = AlgorithmConfig(name=name, lr=0.01)
    algo, server, engines, replica = build(hp, None, downlink, numel=N, workers=WORKERS)
    assert server.error is not None
    x0 = server.master.clone()
    grads = gradient_stream(STEPS, WORKERS, N)
    # record s_t = server_update(mean) by wrapping the rule (the engine runs its param group's copy)
    seen = []
    (algo,) = server.groups.algorithms
    original = algo.server_update

    def recording(mean, master, state, step):
        s = original(mean, master, state, step)
        seen.append(s.double().clone())
        return s

    algo.server_update = recording
    _, downs = run(server, engines, replica, grads)
    applied = sum(server.downlink_codec.decode(d).double() for d in downs)
    wanted = sum(seen)
    assert (
        float((applied + server.error.double() - wanted).abs().max())
        <= 1e-5 * float(wanted.abs().max()) + 1e-7
    )
    assert torch.allclose(x0.double() - applied, server.master.double(), atol=1e-5)
    assert torch.equal(server.master, replica)


def test_error_feedback_switch_turns_the_buffer_off():
    hp = AlgorithmConfig(name="efficient-adam")
    _, server, engines, _ = build(hp, LinkConfig(error_feedback=False), LinkConfig(error_feedback=False))
    assert server.error is None and all(e.error is None for e in engines)


def test_ecq_alpha_beta_follow_wu_et_al():
    """h <- beta*h + (g - Q(g + alpha*h)) for alpha, beta != 1, checked step by step in float64."""
    hp = AlgorithmConfig(name="ecq-sgd", lr=0.01, ef_alpha=0.5, ef_beta=0.9)
    _, server, engines, replica = build(hp, LinkConfig(codec="sign", bucket=64), numel=200, workers=1)
    e = engines[0]
    h = torch.zeros(200, dtype=torch.float64)
    (seg,) = e.partition
    for g in gradient_stream(10, 1, 200):
        e.begin_step()
        packed = e.make_uplink(seg, g[0], replica)
        q = e.uplink_codec.decode(packed).double()
        expected_q = e.uplink_codec.decode(e.uplink_codec.encode((g[0].double() + 0.5 * h).float())).double()
        assert torch.allclose(q, expected_q, atol=1e-6)
        h = 0.9 * h + (g[0].double() - q)
        assert torch.allclose(e.error.double(), h, atol=1e-5)
