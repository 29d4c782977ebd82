"""The library's pieces without MPI: the shard (the built-in sampler's batches, a resumable
position), the user's extra state in checkpoints, the serving rank's stand-in model, the control
frames and learning rates the server reads, and the flat model's guards."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import IterableDataset, TensorDataset

import qtrain
from qtrain.config import load_config
from qtrain.data import load_dataset
from qtrain.engine.buffers import buffer_state
from qtrain.engine.flat import FlatModel
from qtrain.engine.records import FLAG_CHECKPOINT, FLAG_END, UPLINK_RECORD
from qtrain.engine.setup import build_sampler, build_setup
from qtrain.engine.step import WorkersDisagree, clip_of, control_of, lrs_of
from qtrain.io.checkpoint import read_checkpoint, write_checkpoint
from qtrain.io.run_dir import params_sha256
from qtrain.library import extra_state
from qtrain.library.errors import UsageError
from qtrain.library.layout_module import LayoutModule
from qtrain.library.shard import ShardedLoader


def test_the_shard_gives_the_built_in_samplers_batches():
    """What makes a library run equal ``qtrain train``: the same indices, batch after batch,
    across epoch boundaries, for every worker."""
    cfg = load_config("configs/default.yaml")
    setup = build_setup(cfg, 2)
    ds = load_dataset(cfg.data, cfg.seed)
    data = TensorDataset(ds.x_train, torch.arange(len(ds.x_train)))
    for worker in range(2):
        sampler = build_sampler(setup, worker)
        loader = ShardedLoader(data, cfg.data.batch_size, True, cfg.seed, 2, worker)
        got = [idx for _ in range(3) for _, idx in loader]
        assert len(got) == 3 * sampler.batches_per_epoch
        for idx in got:
            assert torch.equal(idx, sampler.next_batch())


def test_the_shard_resumes_mid_epoch_and_names_its_epoch():
    data = TensorDataset(torch.arange(100))
    a = ShardedLoader(data, 8, True, 3, 2, 1)
    assert len(a) == 6 and a.epoch == 0
    it = iter(a)
    first = [next(it)[0] for _ in range(4)]
    b = ShardedLoader(data, 8, True, 3, 2, 1)
    b.load_state_dict(a.state_dict())
    assert [x.tolist() for (x,) in b] == [x.tolist() for (x,) in it]  # the last two batches of epoch 0
    assert a.epoch == b.epoch == 1 and len(first) == 4  # a finished epoch: the next one runs
    assert [x.tolist() for (x,) in a] == [x.tolist() for (x,) in b]


def test_unequal_shards_give_every_worker_the_same_number_of_batches():
    data = TensorDataset(torch.arange(21))  # shards of 11 and 10
    counts = [len(list(ShardedLoader(data, 5, False, 0, 2, w))) for w in range(2)]
    assert counts == [2, 2]


def test_the_built_in_sampler_gives_every_worker_the_smallest_shards_epoch():
    """qtrain train's sampler and the shard share one rule: 1438 digits samples over 3 workers
    (shards of 480, 479, 479) are 14 batches of 32 per epoch on every worker."""
    setup = build_setup(load_config("configs/default.yaml"), 3)
    assert [build_sampler(setup, w).batches_per_epoch for w in range(3)] == [14, 14, 14]


def test_a_server_evaluation_must_be_a_dict_of_numbers_with_a_loss():
    from qtrain.library.serve import _checked

    module = nn.Linear(2, 1)
    assert _checked(lambda m: {"loss": torch.tensor(0.5), "accuracy": 1}, module, "evaluate") == {
        "loss": 0.5,
        "accuracy": 1.0,
    }
    for bad in (0.5, {"accuracy": 1.0}, {"loss": "low"}):
        with pytest.raises(UsageError, match=r"session.serve\(evaluate=...\)"):
            _checked(lambda m, bad=bad: bad, module, "evaluate")


def test_the_shard_leaves_the_global_generator_alone():
    data = TensorDataset(torch.arange(40))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    list(ShardedLoader(data, 4, True, 0, 2, 0, num_workers=0))
    assert torch.equal(torch.rand(3), expected)


def test_the_shard_refuses_what_it_decides_and_iterable_datasets():
    data = TensorDataset(torch.arange(10))
    with pytest.raises(UsageError, match="sampler, drop_last is decided by the shard"):
        ShardedLoader(data, 2, True, 0, 2, 0, sampler=None, drop_last=False)

    class Stream(IterableDataset):
        def __iter__(self):
            yield 1

    with pytest.raises(UsageError, match="map-style Dataset"):
        ShardedLoader(Stream(), 2, True, 0, 2, 0)
    with pytest.raises(UsageError, match="3 samples for 4 workers"):
        ShardedLoader(TensorDataset(torch.arange(3)), 2, True, 0, 4, 0)


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.lists(st.floats(-1e6, 1e6, width=32), max_size=4).map(lambda v: torch.tensor(v, dtype=torch.float32)),
)
trees = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.text(min_size=1, max_size=5).filter(lambda k: "/" not in k and k != "."), inner, max_size=3
        ),
        st.dictionaries(st.integers(0, 9), inner, max_size=3),
    ),
    max_leaves=10,
)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return a == b and type(a) is type(b)


@settings(max_examples=60, deadline=None)
@given(trees)
def test_extra_state_comes_back_from_a_checkpoint_file(tmp_path_factory, extra):
    path = tmp_path_factory.mktemp("x") / "c.h5"
    params = torch.zeros(2)
    write_checkpoint(
        path,
        {"step": 1, "params": params, "extra": extra_state.pack(extra)},
        {"params_sha256": params_sha256(params)},
    )
    assert _same(extra, extra_state.unpack(read_checkpoint(path)[0]["extra"]))


def test_extra_state_refuses_what_is_not_data():
    with pytest.raises(UsageError, match=r"extra\.f is a function"):
        extra_state.pack({"f": lambda: 0})
    with pytest.raises(UsageError, match="is not a string or int"):
        extra_state.pack({(1, 2): 0})


def test_the_stand_in_model_has_the_users_state_dict_names():
    user = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sequential(nn.Linear(4, 2)))
    flat = FlatModel(user, torch.device("cpu"))
    params = [(name, shape) for name, _, shape in flat.layout]
    stand_in = FlatModel(LayoutModule(params, buffer_state(user)), torch.device("cpu"))
    assert stand_in.layout == flat.layout
    assert set(stand_in.module.state_dict()) == set(user.state_dict())
    with pytest.raises(RuntimeError, match="not its forward"):
        stand_in.module(torch.zeros(1, 3))


def _records(flags, lrs=None, norms=None):
    r = np.zeros(len(flags), dtype=UPLINK_RECORD)
    r["flags"] = flags
    if lrs is not None:
        for row, values in zip(r, lrs, strict=True):
            row["lr"][: len(values)] = values
    if norms is not None:
        r["max_norm"] = norms
    return r


def test_control_frames_agree_or_say_what_each_worker_did():
    assert control_of(_records([0, 0]), 5, ["rank 1", "rank 2"]) == 0
    assert control_of(_records([FLAG_END, FLAG_END]), 5, None) == FLAG_END
    with pytest.raises(WorkersDisagree, match="after step 4: rank 1 called session.checkpoint"):
        control_of(_records([FLAG_CHECKPOINT, 0]), 5, ["rank 1", "rank 2"])


def test_the_servers_learning_rates_are_the_workers_own_for_every_group():
    lr = 0.0007658709123  # a rate the loop computed: it travels exactly (float64), not as a factor
    assert lrs_of(_records([0, 0], [[lr, 0.5], [lr, 0.5]]), 3, 2, None) == [lr, 0.5]
    assert lrs_of(_records([0, 0], [[lr, 0.5, 9.0], [lr, 0.5, 7.0]]), 3, 2, None) == [lr, 0.5]  # unused slots
    said = "different learning rates in step 3: rank 1 0.01 0.5, rank 2 0.01 0.25"
    with pytest.raises(WorkersDisagree, match=said):
        lrs_of(_records([0, 0], [[0.01, 0.5], [0.01, 0.25]]), 3, 2, ["rank 1", "rank 2"])


def test_the_clip_norm_is_the_workers_and_must_agree():
    assert clip_of(_records([0, 0], norms=[1.0, 1.0]), 4, None) == 1.0
    assert clip_of(_records([0, 0]), 4, None) == 0.0
    with pytest.raises(WorkersDisagree, match="clip step 4 to different norms: rank 1 1, rank 2 0"):
        clip_of(_records([0, 0], norms=[1.0, 0.0]), 4, ["rank 1", "rank 2"])


def test_a_module_zero_grad_that_drops_the_views_is_repaired_by_backward():
    model = nn.Linear(3, 2)
    flat = FlatModel(model, torch.device("cpu"))
    x = torch.randn(4, 3)
    model(x).sum().backward()
    expected = flat.grads.clone()
    model.zero_grad()  # set_to_none: the .grad views are gone
    model(x).sum().backward()
    assert torch.equal(flat.grads, expected)
    assert model.weight.grad.data_ptr() == flat.grads.data_ptr()


def test_a_dropped_grad_of_an_unused_parameter_is_zero_at_the_step():
    """model.zero_grad() sets every .grad to None; a parameter that the next backward does not
    reach must not send its old gradient (the flat slice still holds it)."""
    model = nn.ModuleDict({"a": nn.Linear(3, 2), "b": nn.Linear(3, 2)})
    flat = FlatModel(model, torch.device("cpu"))
    x = torch.randn(4, 3)
    (model["a"](x).sum() + model["b"](x).sum()).backward()
    model.zero_grad()
    model["a"](x).sum().backward()  # b unused this time
    flat.reattach_grads()
    b = flat.layout[2][1]
    assert torch.count_nonzero(flat.grads[b:]) == 0
    assert model["b"].weight.grad.data_ptr() == flat.grads[b:].data_ptr()


def test_a_replaced_or_reshaped_parameter_is_named():
    model = nn.Sequential(nn.Linear(3, 2))
    flat = FlatModel(model, torch.device("cpu"))
    assert flat.changed_parameter() is None
    model[0].bias.data = model[0].bias.data.clone()
    assert flat.changed_parameter() == "parameter 0.bias was replaced or moved to cpu"
    model[0].weight = nn.Parameter(torch.zeros(5, 3))
    assert flat.changed_parameter() == "parameter 0.weight changed shape from [2, 3] to [5, 3]"
    flat2 = FlatModel(nn.Linear(2, 2), torch.device("cpu"))
    flat2.module.bias.requires_grad_(False)
    assert flat2.changed_parameter() == "parameter bias was frozen (requires_grad=False)"


def test_the_public_api_is_importable_from_the_top_and_nothing_else_is():
    assert qtrain.init is qtrain.library.init and qtrain.Session is qtrain.library.Session
    assert issubclass(qtrain.DistributedOptimizer, torch.optim.Optimizer)
    with pytest.raises(AttributeError, match="no attribute 'train'"):
        qtrain.train  # noqa: B018
    with pytest.raises(UsageError, match="no qtrain session"):
        qtrain.session()
