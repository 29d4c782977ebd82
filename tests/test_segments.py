"""Segments of the flat vector: per-segment messages, error buffers, random streams and statistics,
in the simulator (MPI runs with segments are compared with it in test_mpi_train.py)."""

import pytest
import torch
from engine_helpers import build, gradient_stream, step

from qtrain.codecs import get_codec
from qtrain.config import AlgorithmConfig, LinkConfig, load_config
from qtrain.engine.simulator import simulate
from qtrain.seeding import derive_seed, stream_seed

SHORT = ["train.steps=25", "train.eval_every=25", "model.hidden=[256]"]


def run(config, *sets, workers=2, out=None):
    return simulate(load_config(config, [*SHORT, *sets]), workers, out, log=lambda _: None)


@pytest.mark.parametrize(
    "config, sets",
    [
        ("configs/efficient-adam.yaml", []),
        ("configs/sgd.yaml", ["algorithm.momentum=0.9", "uplink.codec=topk", "uplink.error_feedback=true"]),
        ("configs/qcmd-adagrad.yaml", ["algorithm.l1=0.01"]),
        ("configs/adam.yaml", ["uplink.codec=fp16"]),
        ("configs/ecq-sgd.yaml", []),
        ("configs/sgd.yaml", ["uplink.codec=ternary", "downlink.codec=uniform", "downlink.bits=3"]),
    ],
    ids=[
        "efficient-adam-sign",
        "sgd-momentum-topk",
        "qcmd-threshold-sparse",
        "adam-fp16",
        "ecq-sgd-stochastic-uniform",
        "sgd-ternary-up-uniform3-down",
    ],
)
def test_elementwise_rules_do_not_depend_on_the_segments(config, sets):
    """Every rule here is elementwise, every codec works per bucket, segments fall on bucket
    boundaries, and stochastic rounding draws the Philox counter of each element's flat index:
    cutting the vector changes no bit of the result, and no byte count but the headers (one per
    segment message)."""
    one, four = run(config, *sets), run(config, *sets, "runtime.segments=4")
    assert four["segments"] == 4 and one["segments"] == 1
    assert four["params_sha256"] == one["params_sha256"]
    assert four["final_train_loss"] == one["final_train_loss"]


def test_bytes_add_up_over_segment_messages():
    s = run("configs/default.yaml", "runtime.segments=3")
    sign = get_codec("sign")
    from qtrain.engine.partition import Partition

    part = Partition.build(s["numel"], (512, 512), 3)
    per_step = sum(sign.wire_bytes(seg.numel) for seg in part)
    assert s["bytes_up"] == 25 * 2 * per_step and s["bytes_down"] == 25 * 2 * per_step
    assert s["bytes_fp32_equivalent_up"] == 25 * 2 * sum(get_codec("none").wire_bytes(g.numel) for g in part)


def test_each_link_has_its_own_key_and_each_segment_its_own_counters():
    assert stream_seed(5, "uplink", 2) == derive_seed(5, "uplink", 2)
    assert stream_seed(5, "downlink", None) == derive_seed(5, "downlink")
    hp = AlgorithmConfig(name="ecq-sgd")
    server, engines = build(hp, numel=2000, workers=2, segments=3)[1:3]
    keys = {e.stream_key for e in engines} | {server.stream_key}
    assert len(keys) == 3
    for e in (*engines, server):
        e.begin_step()
        streams = [e.random_stream(seg) for seg in e.partition]
        assert [s.offset for s in streams] == [seg.start for seg in e.partition]
        assert {s.step for s in streams} == {1} and {s.key for s in streams} == {e.stream_key}


def test_error_feedback_telescopes_in_every_segment():
    """sum_t u_t + e_T = sum_t p_t with stochastic 2-bit codes on 3 segments (float64 check)."""
    hp = AlgorithmConfig(name="ecq-sgd", lr=0.1)
    n, workers = 1500, 2
    _, server, engines, replica = build(hp, LinkConfig(bucket=64), numel=n, workers=workers, segments=3)
    assert len(server.partition) == 3
    sent = [torch.zeros(n, dtype=torch.float64) for _ in engines]
    wanted = [torch.zeros(n, dtype=torch.float64) for _ in engines]
    for grads in gradient_stream(8, workers, n):
        ups, _ = step(server, engines, replica, grads)
        for w, (e, msgs) in enumerate(zip(engines, ups, strict=True)):
            for seg, m in zip(server.partition, msgs, strict=True):
                sent[w][seg.slice] += e.uplink_codec.decode(m).double()
            wanted[w] += grads[w].double()
    for w, e in enumerate(engines):
        assert torch.allclose(sent[w] + e.error.double(), wanted[w], atol=1e-4)


def test_compression_statistics_combine_as_sums_of_squares():
    """The relative error reported for three segments is that of the whole vector."""
    hp = AlgorithmConfig(name="sgd", lr=0.1)
    sign = LinkConfig(codec="sign", error_feedback=True)
    reports = []
    for segments in (1, 3):
        _, server, engines, replica = build(hp, sign, sign, numel=3000, workers=2, segments=segments)
        for grads in gradient_stream(2, 2, 3000):
            step(server, engines, replica, grads)
        reports.append((engines[0].last_stats, server.last_stats))
    assert reports[0][0]["up_rel_error"] > 0.1 and reports[0][1]["down_rel_error"] > 0.1
    (up1, down1), (up3, down3) = reports
    for a, b in ((up1, up3), (down1, down3)):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6), k  # float32 norms


def test_checkpoints_record_the_segments_and_a_resume_may_cut_another_count(tmp_path):
    """The cut changes no bit (above), so a resume may change it; that the resumed run ends where
    the uninterrupted one does is tests/test_mpi_servers.py's resume test (2 segments -> 3)."""
    from qtrain.io.checkpoint import checkpoint_name, read_checkpoint
    from qtrain.runtime.resume import load_for_resume

    run("configs/ecq-sgd.yaml", "runtime.segments=3", out=tmp_path)
    tree, meta = read_checkpoint(tmp_path / "checkpoints" / checkpoint_name(25))
    assert meta["segments"] == 3
    assert "generators" not in tree["workers"]["1"]["engine"]  # counter-based: nothing to keep
    from qtrain.config import dump_yaml
    from qtrain.engine.setup import build_setup, resolved_config

    for sets in (["runtime.segments=2"], ["runtime.segment_bytes=4096"]):
        other = load_config("configs/ecq-sgd.yaml", [*SHORT, *sets])
        text = dump_yaml(resolved_config(other, build_setup(other, 2)))
        loaded, path = load_for_resume("auto", tmp_path, text, 2, False, warn=print)
        assert path.name == checkpoint_name(25) and loaded["config"] == tree["config"]
