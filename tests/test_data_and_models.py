import pickle

import numpy as np
import pytest
import torch

from qtrain.config import DataConfig
from qtrain.data import ShardSampler, load_dataset, shard_indices
from qtrain.data.base import split
from qtrain.models import build_model


def test_shards_are_disjoint_cover_everything_and_are_deterministic():
    shards = [shard_indices(1001, 4, w, seed=3) for w in range(4)]
    allidx = torch.cat(shards)
    assert len(allidx) == 1001 and len(set(allidx.tolist())) == 1001
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    assert torch.equal(shards[2], shard_indices(1001, 4, 2, seed=3))
    assert not torch.equal(shards[2], shard_indices(1001, 4, 2, seed=4))


def test_sampler_resumes_exactly():
    shard = torch.arange(100)
    a = ShardSampler(shard, 7, seed=1, worker=0)
    seq = [a.next_batch() for _ in range(40)]
    b = ShardSampler(shard, 7, seed=1, worker=0)
    for _ in range(23):
        b.next_batch()
    c = ShardSampler(shard, 7, seed=1, worker=0)
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(x, c.next_batch()) for x in seq[23:])
    assert a.epoch == 40 // (100 // 7)
    epoch0 = torch.cat(seq[:14])
    assert len(set(epoch0.tolist())) == 98  # one epoch: no repeats, the 2-sample tail dropped


@pytest.mark.parametrize(
    "name", ["digits", "synthetic-regression", "synthetic-sparse-logistic", "toy-convex"]
)
def test_builtin_datasets(name):
    ds = load_dataset(DataConfig(name=name, samples=500), seed=0)
    assert len(ds.x_train) and len(ds.x_test)
    if name in ("synthetic-regression", "toy-convex"):
        assert ds.task == "regression" and ds.optimum_train_loss is not None


def test_digits_are_exactly_what_sklearns_load_digits_gives():
    """qtrain reads sklearn's digits CSV itself (no sklearn import at start-up): same pixels, same
    labels, same order, same split as torch tensors of load_digits()."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    cfg = DataConfig(name="digits")
    ours = load_dataset(cfg, seed=0)
    expected = split(x, y, cfg.test_fraction, 20260)
    got = (ours.x_train, ours.y_train, ours.x_test, ours.y_test)
    assert len(ours.x_train) + len(ours.x_test) == 1797
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_libsvm_and_npz_files(tmp_path):
    svm = tmp_path / "a.svm"
    svm.write_text("".join(f"{1 if i % 2 else -1} 1:{i * 0.1} 3:{1 - i * 0.05}\n" for i in range(20)))
    ds = load_dataset(DataConfig(name="libsvm", path=str(svm)), seed=0)
    assert ds.task == "classification" and ds.outputs == 2 and ds.x_train.shape[1] == 3
    npz = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    ds = load_dataset(_npz_with_labels(npz, rng, rng.integers(3, 6, 40)), seed=0)
    assert ds.task == "classification" and int(ds.y_train.max()) <= 2
    assert load_dataset(_npz_with_labels(npz, rng, rng.normal(size=40)), seed=0).task == "regression"


def _npz_with_labels(path, rng, labels, **config) -> DataConfig:
    """An npz of 30 training and 10 test samples of 4 features, labelled ``labels`` (40, in order)."""
    np.savez(
        path,
        x_train=rng.normal(size=(30, 4)),
        y_train=labels[:30],
        x_test=rng.normal(size=(10, 4)),
        y_test=labels[30:],
    )
    return DataConfig(name="npz", path=str(path), **config)


def test_bad_data_files_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="needs data.path"):
        load_dataset(DataConfig(name="npz"), 0)
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(DataConfig(name="libsvm", path=str(tmp_path / "missing")), 0)
    bad = tmp_path / "bad.svm"
    bad.write_text("this is not svmlight\n")
    with pytest.raises(ValueError, match="not a valid LIBSVM"):
        load_dataset(DataConfig(name="libsvm", path=str(bad)), 0)
    npz = tmp_path / "x.npz"
    np.savez(npz, x_train=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="missing arrays"):
        load_dataset(DataConfig(name="npz", path=str(npz)), 0)
    with pytest.raises(ValueError, match="no CIFAR-10"):
        load_dataset(DataConfig(name="cifar10", path=str(tmp_path)), 0)


def _npz(tmp_path, **arrays):
    base = {
        "x_train": np.zeros((4, 2)),
        "y_train": np.arange(4),
        "x_test": np.zeros((2, 2)),
        "y_test": [0, 1],
    }
    path = tmp_path / "d.npz"
    np.savez(path, **(base | arrays))
    return DataConfig(name="npz", path=str(path))


def test_data_that_once_gave_silent_wrong_results_or_tracebacks(tmp_path):
    with pytest.raises(ValueError, match="test split is empty"):  # once: accuracy 0.0
        load_dataset(_npz(tmp_path, x_test=np.zeros((0, 2)), y_test=np.zeros(0, dtype=int)), 0)
    with pytest.raises(ValueError, match="y_train contains NaN"):
        load_dataset(_npz(tmp_path, y_train=np.array([0.5, np.nan, 1.0, 2.0])), 0)
    with pytest.raises(ValueError, match=r"d.npz: y_train must be numeric labels"):
        load_dataset(_npz(tmp_path, y_train=np.array(["a", "b", "c", "d"])), 0)
    not_zip = tmp_path / "text.npz"
    not_zip.write_text("not a zip file\n")
    with pytest.raises(ValueError, match=f"{not_zip}: not a readable .npz file"):
        load_dataset(DataConfig(name="npz", path=str(not_zip)), 0)
    with pytest.raises(ValueError, match="is a directory"):
        load_dataset(DataConfig(name="npz", path=str(tmp_path)), 0)
    svm = tmp_path / "nan.svm"
    svm.write_text("nan 1:0.5\n1 1:0.25\n")
    with pytest.raises(ValueError, match="labels contain NaN"):
        load_dataset(DataConfig(name="libsvm", path=str(svm)), 0)


def test_empty_hidden_is_a_linear_mlp_and_builtins_refuse_kwargs():
    from qtrain.models import build_model

    linear = build_model("mlp", (64,), 10, hidden=[])
    assert sum(p.numel() for p in linear.parameters()) == 64 * 10 + 10
    with pytest.raises(
        ValueError, match="model.kwargs \\['depth'\\]: the built-in model 'mlp' takes no kwargs"
    ):
        build_model("mlp", (64,), 10, hidden=[8], kwargs={"depth": 3})


def _fake_cifar(tmp_path, kind):
    rng = np.random.default_rng(0)
    d = tmp_path / kind
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 4)
        if kind == "bin":
            rec = np.concatenate([labels[:, None].astype(np.uint8), data], axis=1)
            rec.tofile(d / f"{name}.bin")
        else:
            with open(d / name, "wb") as f:
                pickle.dump({b"data": data, b"labels": labels.tolist(), b"batch_label": b"x"}, f, protocol=2)
    return d


@pytest.mark.parametrize("kind", ["bin", "py"])
def test_cifar10_both_releases(tmp_path, kind):
    ds = load_dataset(DataConfig(name="cifar10", path=str(_fake_cifar(tmp_path, kind))), 0)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)


def test_cifar10_python_release_refuses_code(tmp_path):
    d = _fake_cifar(tmp_path, "py")

    class Evil:
        def __reduce__(self):
            return (eval, ("__import__('os').system('touch /tmp/pwned-qtrain')",))

    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match="refusing to load (__builtin__|builtins).eval"):
        load_dataset(DataConfig(name="cifar10", path=str(d)), 0)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("logreg", (64,)),
        ("mlp", (1, 8, 8)),
        ("lenet", (1, 8, 8)),
        ("lenet", (3, 32, 32)),
        ("resnet20", (3, 32, 32)),
    ],
)
def test_models_build_and_run(name, shape):
    model = build_model(name, shape, 10, hidden=[16])
    assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_resnet20_has_the_paper_parameter_count():
    n = sum(p.numel() for p in build_model("resnet20", (3, 32, 32), 10).parameters())
    assert 0.26e6 < n < 0.28e6  # He et al. report 0.27M


def test_plugin_models(tmp_path, monkeypatch):
    (tmp_path / "myplug.py").write_text(
        "from torch import nn\n"
        "def tiny(input_shape, outputs, width=3):\n"
        "    layers = [nn.Flatten(), nn.Linear(input_shape[-1], width), nn.Linear(width, outputs)]\n"
        "    return nn.Sequential(*layers)\n"
        "def notmodel(input_shape, outputs):\n    return 5\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_model("myplug:tiny", (5,), 2, kwargs={"width": 4})
    assert m(torch.randn(1, 5)).shape == (1, 2)
    with pytest.raises(ValueError, match="not an nn.Module"):
        build_model("myplug:notmodel", (5,), 2)
    with pytest.raises(ValueError, match="has no function"):
        build_model("myplug:nothing", (5,), 2)
    with pytest.raises(ValueError, match="cannot import"):
        build_model("nosuchpkg_qtrain:f", (5,), 2)


def test_every_file_loader_infers_the_task_by_one_rule_and_data_task_overrides_it(tmp_path):
    """Float labels with integer values (what np.loadtxt gives) are classes in an npz as in a
    libsvm file; data.task says otherwise when asked, and refuses what cannot be classes."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "d.npz"
    labels = rng.integers(0, 3, 40).astype(np.float64)
    auto = load_dataset(_npz_with_labels(npz, rng, labels), seed=0)
    assert (auto.task, auto.outputs) == ("classification", 3)
    forced = load_dataset(_npz_with_labels(npz, rng, labels, task="regression"), seed=0)
    assert (forced.task, forced.outputs, forced.y_train.dtype) == ("regression", 1, torch.float32)
    with pytest.raises(ValueError, match="data.task=classification, but the labels have a non-integer value"):
        load_dataset(_npz_with_labels(npz, rng, rng.normal(size=40), task="classification"), seed=0)
    svm = tmp_path / "a.svm"
    svm.write_text("".join(f"{i % 3}.0 1:{i * 0.1}\n" for i in range(20)))
    assert load_dataset(DataConfig(name="libsvm", path=str(svm)), seed=0).task == "classification"
    assert (
        load_dataset(DataConfig(name="libsvm", path=str(svm), task="regression"), seed=0).task == "regression"
    )


@pytest.mark.parametrize("name", ["npz", "libsvm", "text", "idx"])
def test_a_fifo_or_a_device_is_refused_instead_of_read_forever(tmp_path, name):
    """A FIFO blocked ``simulate`` forever and ``/dev/zero`` as a libsvm file read 8 GB in 20 s
    (issue 22): every file reader takes regular files only, and says what it was given."""
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    if name == "idx":  # a directory whose idx file is a FIFO
        for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
            os.mkfifo(tmp_path / f)
        cfgs = [DataConfig(name="idx", path=str(tmp_path))]
        message = "is a FIFO, not a regular file"
    else:
        cfgs = [DataConfig(name=name, path=str(fifo)), DataConfig(name=name, path="/dev/zero")]
        message = r"is a (FIFO|character device), not a regular file"
    for cfg in cfgs:
        with pytest.raises(ValueError, match=message):
            load_dataset(cfg, 0)
    if name == "libsvm":
        good = tmp_path / "a.svm"
        good.write_text("1 1:0.5\n0 2:1.5\n")
        with pytest.raises(ValueError, match="data.test_path .* is a FIFO, not a regular file"):
            load_dataset(DataConfig(name="libsvm", path=str(good), test_path=str(fifo)), 0)
