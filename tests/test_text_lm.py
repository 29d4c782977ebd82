"""Character-level language modelling: the text dataset, the transformer, per-token evaluation,
and an MPI run equal to the simulator's."""

import math

import pytest
import torch
from mpi_helpers import mpi_train, simulate, summary

from qtrain.config import load_config
from qtrain.data.registry import load_dataset
from qtrain.engine.flat import evaluate_module
from qtrain.models import build_model


def text_data(path, *sets):
    return load_dataset(load_config(None, ["data.name=text", f"data.path={path}", *sets]).data, 0)


def test_windows_targets_vocabulary_and_a_contiguous_test_split(tmp_path):
    content = "abcabdabeabf" * 10 + "é"  # 121 characters, 7 distinct
    (tmp_path / "t.txt").write_text(content, encoding="utf-8")
    ds = text_data(tmp_path / "t.txt", "data.context=8", "data.test_fraction=0.25")
    vocab = sorted(set(content))
    ids = torch.tensor([vocab.index(c) for c in content])
    windows = (len(content) - 1) // 8  # 15
    assert ds.outputs == 7 and ds.task == "language-model" and ds.input_shape == (8,)
    assert len(ds.x_train) + len(ds.x_test) == windows and len(ds.x_test) == 4
    x, y = torch.cat([ds.x_train, ds.x_test]), torch.cat([ds.y_train, ds.y_test])
    assert torch.equal(x.reshape(-1), ids[: windows * 8]) and torch.equal(
        y.reshape(-1), ids[1 : windows * 8 + 1]
    )


def test_bad_text_files_are_one_clear_error(tmp_path):
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(ValueError, match=r"not UTF-8 text \(byte 3"):
        text_data(tmp_path / "latin1.txt")
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(ValueError, match="too few"):
        text_data(tmp_path / "short.txt", "data.context=2")
    with pytest.raises(ValueError, match="needs data.path"):
        load_dataset(load_config(None, ["data.name=text"]).data, 0)


def test_the_transformer_is_causal_and_shaped_for_per_token_cross_entropy():
    torch.manual_seed(0)
    model = build_model("transformer", (12,), 9, hidden=[16, 16]).eval()
    ids = torch.randint(0, 9, (3, 12))
    out = model(ids)
    assert out.shape == (3, 9, 12)
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 9
    with torch.no_grad():
        again = model(changed)
    assert torch.equal(out[:, :, :7], again[:, :, :7])  # positions before 7 never see 7..11
    assert not torch.equal(out[:, :, 7:], again[:, :, 7:])
    with pytest.raises(ValueError, match="one width divisible by 4"):
        build_model("transformer", (12,), 9, hidden=[16, 8])


def test_per_token_loss_accuracy_and_perplexity():
    class Uniform(torch.nn.Module):  # equal logits for every class, except class 2 slightly ahead
        def forward(self, ids):
            out = torch.zeros(ids.shape[0], 5, ids.shape[1])
            out[:, 2] = 1e-6
            return out

    y = torch.tensor([[2, 0, 2], [1, 2, 4]])
    ev = evaluate_module(Uniform(), torch.zeros_like(y), y, "language-model", torch.device("cpu"), batch=1)
    assert ev["loss"] == pytest.approx(math.log(5), rel=1e-5)
    assert ev["perplexity"] == pytest.approx(5, rel=1e-5)
    assert ev["accuracy"] == pytest.approx(3 / 6)  # per token, not per window


@pytest.mark.mpi
def test_a_language_model_run_under_mpi_equals_the_simulator(tmp_path):
    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    sets = (
        "data.name=text",
        f"data.path={tmp_path / 't.txt'}",
        "data.context=16",
        "model.name=transformer",
        "model.hidden=[16,16]",
        "train.steps=6",
        "train.eval_every=3",
    )
    a = simulate("configs/efficient-adam.yaml", 2, tmp_path / "sim", *sets)
    p = mpi_train(3, "configs/efficient-adam.yaml", tmp_path / "mpi", *sets)
    assert p.returncode == 0, p.stderr
    b = summary(tmp_path / "mpi")
    assert a["params_sha256"] == b["params_sha256"]
    assert b["final_test_perplexity"] == pytest.approx(math.exp(b["final_test_loss"]))
