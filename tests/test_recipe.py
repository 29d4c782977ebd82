"""A DDP script's recipe, checked against torch itself (issue 35; DESIGN.md section 9): param
groups with their own learning rate and weight decay, AdamW's decoupled decay, SGDW, clipping of
the mean gradient, a learning rate the loop sets each step. With codec ``none`` qtrain's step is
torch.optim's step on the gradient averaged over the workers, clipped as
``torch.nn.utils.clip_grad_norm_`` clips it under DDP, with 1 or 2 workers and 1 or 2 serving
ranks, the groups crossing segment boundaries.

The step drivers run over the in-process channel (the simulator's), which test_mpi_train and
test_library_mpi hold equal to MPI."""

import contextlib

import pytest
import torch
from torch import nn

from qtrain.algorithms.links import resolve_links
from qtrain.config import Config
from qtrain.config.loader import ConfigError, load_config
from qtrain.engine.channel import InProcessChannel
from qtrain.engine.flat import FlatModel
from qtrain.engine.param_groups import GroupError, ParamGroups
from qtrain.engine.partition import Partition
from qtrain.engine.server import ServerEngine
from qtrain.engine.shards import InProcessShards
from qtrain.engine.step import ServerStep, WorkerStep
from qtrain.engine.worker import WorkerEngine
from qtrain.library.group_sharing import group_specs

CPU = torch.device("cpu")


class Net(nn.Module):
    """Linear, LayerNorm, Linear: weights that decay, biases and a norm that do not."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(12, 40)
        self.norm = nn.LayerNorm(40)
        self.b = nn.Linear(40, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.norm(self.a(x))))


def nanogpt_groups(model, wd):
    """nanoGPT's configure_optimizers: parameters of two or more dimensions decay, the rest not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


class _Recorder:
    """What the server step asks of a recorder, and nothing else."""

    def enter(self, what):
        pass

    def begin_step(self, step):
        pass

    def add_time(self, *args):
        pass

    @contextlib.contextmanager
    def phase(self, *args):
        yield

    def uplinks(self, sizes, seg):
        self.up_bytes = getattr(self, "up_bytes", 0) + sum(sizes)

    def downlink(self, n, seg):
        pass


class Run:
    """N workers and K serving ranks in one process over the step drivers, with the user's groups."""

    def __init__(self, cfg, groups_of, workers, servers, segments=3):
        algo, up, down = resolve_links(cfg)
        self.models = [Net() for _ in range(workers)]
        self.flats = [FlatModel(m, CPU) for m in self.models]
        specs, _ = group_specs(cfg.algorithm.name, groups_of(self.models[0]), self.flats[0], {})
        part = Partition.build(
            self.flats[0].numel, (up.codec.bucket, down.codec.bucket), segments, servers=servers
        )
        self.groups = ParamGroups(algo, specs, self.flats[0].layout, part)
        master = self.flats[0].params.clone()
        engines = [
            ServerEngine(algo, up.codec, down, part, master[part.shard(o)], 0, "auto", o, self.groups)
            for o in range(servers)
        ]
        server = engines[0] if servers == 1 else InProcessShards(engines, master)
        channel = InProcessChannel(part, workers)
        self.drivers = [
            WorkerStep(
                WorkerEngine(algo, up, down.codec, part, CPU, 0, w, "auto", self.groups),
                f,
                channel.worker(w),
                part,
            )
            for w, f in enumerate(self.flats)
        ]
        self.server = ServerStep(server, channel, part, _Recorder())
        self.master = master

    def step(self, step, batches, lrs=None, max_norm=0.0):
        for d, model, (x, y) in zip(self.drivers, self.models, batches, strict=True):
            d.begin(step)
            d.lr_source = (lambda lrs=lrs: lrs) if lrs is not None else None
            d.max_norm = max_norm
            nn.functional.cross_entropy(model(x), y).backward()
            d.end_backward(None)
        self.server.run(step)
        for d, f in zip(self.drivers, self.flats, strict=True):
            d.exchange(step)
            f.grads.zero_()
        return self.drivers[0].grad_norm


def reference_step(model, opt, batches, max_norm=0.0, decay_by_hand=None):
    """DDP's step: the mean of the workers' gradients, clipped, then the torch optimizer."""
    opt.zero_grad()
    for x, y in batches:
        (nn.functional.cross_entropy(model(x), y) / len(batches)).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) if max_norm else None
    if decay_by_hand:  # SGDW: x <- x * (1 - lr * wd) before the step (torch's SGD has no such flag)
        with torch.no_grad():
            for group in opt.param_groups:
                for p in group["params"]:
                    p.mul_(1 - group["lr"] * decay_by_hand[id(group)])
    opt.step()
    return norm


def batches_of(step, workers):
    g = torch.Generator().manual_seed(1000 + step)
    return [(torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(workers)]


def schedule(step):
    """nanoGPT's shape: a linear warm-up, then a decay; set in every group by the loop."""
    return 0.02 * min(1.0, step / 3) * (1.0 - step / 20)


def assert_same_params(model, reference, what):
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(
            p, q, rtol=2e-5, atol=2e-6, msg=lambda m, name=name: f"{what}, {name}: {m}"
        )


@pytest.mark.parametrize("workers, servers", [(1, 1), (2, 1), (2, 2)])
def test_adamw_with_nanogpts_groups_clipping_and_a_schedule_equals_torch_adamw(workers, servers):
    cfg = Config()
    cfg.algorithm.name, cfg.algorithm.decoupled_weight_decay = "adam", True
    cfg.algorithm.beta2 = 0.99
    run = Run(cfg, lambda m: nanogpt_groups(m, 0.1), workers, servers)
    ref = Net()
    opt = torch.optim.AdamW(nanogpt_groups(ref, 0.1), lr=0.02, betas=(0.9, 0.99), eps=1e-8)
    clipped = 0
    for step in range(1, 9):
        lrs = [schedule(step), schedule(step) / 3]  # each group its own scheduled rate
        for g, lr in zip(opt.param_groups, lrs, strict=True):
            g["lr"] = lr
        batches = batches_of(step, workers)
        expected = reference_step(ref, opt, batches, max_norm=1.0)
        got = run.step(step, batches, lrs=lrs, max_norm=1.0)
        clipped += float(expected) > 1.0
        assert got == pytest.approx(float(expected), rel=1e-5)
        assert_same_params(run.models[0], ref, f"step {step}")
    assert clipped >= 3  # the clip acted, so the test holds it to torch's
    torch.testing.assert_close(
        run.master, run.flats[-1].params, rtol=0, atol=0
    )  # every replica is the master


def test_without_the_flag_weight_decay_is_l2_as_torch_adam_with_groups():
    cfg = Config()
    cfg.algorithm.name, cfg.algorithm.lr = "adam", 0.01

    def groups(m):
        g = nanogpt_groups(m, 0.05)
        g[1]["lr"] = 0.003  # a group's own rate
        return g

    run = Run(cfg, groups, 2, 1)
    ref = Net()
    opt = torch.optim.Adam(groups(ref), lr=0.01)
    for step in range(1, 6):
        batches = batches_of(step, 2)
        reference_step(ref, opt, batches)
        run.step(step, batches)
        assert_same_params(run.models[0], ref, f"step {step}")


def test_sgdw_with_momentum_groups_equals_torch_sgd_with_the_decay_applied_to_the_weights():
    cfg = Config()
    cfg.algorithm.name, cfg.algorithm.lr, cfg.algorithm.decoupled_weight_decay = "sgd", 0.1, True

    def groups(m):
        g = nanogpt_groups(m, 0.2)
        g[0]["momentum"], g[1]["momentum"] = 0.9, 0.5
        return g

    run = Run(cfg, groups, 2, 2)
    ref = Net()
    gs = groups(ref)
    opt = torch.optim.SGD([{**g, "weight_decay": 0.0} for g in gs], lr=0.1)
    by_hand = {id(opt.param_groups[0]): 0.2, id(opt.param_groups[1]): 0.0}
    for step in range(1, 6):
        batches = batches_of(step, 2)
        reference_step(ref, opt, batches, decay_by_hand=by_hand)
        run.step(step, batches)
        assert_same_params(run.models[0], ref, f"step {step}")


def test_adamw_is_not_adam_with_l2_so_the_oracle_tells_them_apart():
    """The tolerance of these tests separates the two decays by orders of magnitude."""
    cfg = Config()
    cfg.algorithm.name = "adam"  # L2, the old behaviour, against AdamW
    run = Run(cfg, lambda m: nanogpt_groups(m, 0.1), 2, 1)
    ref = Net()
    opt = torch.optim.AdamW(nanogpt_groups(ref, 0.1), lr=0.001)
    for step in range(1, 4):
        batches = batches_of(step, 2)
        reference_step(ref, opt, batches)
        run.step(step, batches)
    with pytest.raises(AssertionError):
        assert_same_params(run.models[0], ref, "L2 against AdamW")


@pytest.mark.parametrize(
    "name, group, message",
    [
        (
            "sgd",
            {"betas": (0.9, 0.99)},
            "param group 0: sgd has no use for 'betas' (a group may set lr, weight_decay, momentum)",
        ),
        (
            "adam",
            {"momentum": 0.9},
            "param group 0: adam has no use for 'momentum' (a group may set lr, weight_decay, betas, eps)",
        ),
        ("adam", {"betas": (0.9, 1.5)}, "param group 0: betas (0.9, 1.5): beta2 must be in [0, 1)"),
        ("adam", {"lr": -1.0}, "param group 0: lr must be a finite number >= 0, got -1.0"),
        (
            "qrda-adagrad",
            {"weight_decay": 0.1},
            "param group 0: qrda-adagrad has no use for 'weight_decay' (a group may set lr)",
        ),
    ],
)
def test_what_an_algorithm_cannot_honour_is_refused_naming_the_group(name, group, message):
    model = Net()
    flat = FlatModel(model, CPU)
    with pytest.raises(GroupError) as exc:
        group_specs(name, [{"params": list(model.parameters()), **group}], flat, {})
    assert str(exc.value) == message


def test_a_parameter_in_two_groups_or_in_none_is_refused():
    model = Net()
    flat = FlatModel(model, CPU)
    with pytest.raises(GroupError, match=r"param group 1: parameter a.weight is in group 0 already"):
        group_specs("adam", [{"params": [model.a.weight]}, {"params": list(model.parameters())}], flat, {})
    with pytest.raises(
        GroupError, match=r"parameter norm.weight of the model is in no param group \(3 are not\)"
    ):
        group_specs("adam", [{"params": [model.a.weight, model.a.bias, model.b.weight]}], flat, {})
    other = nn.Linear(2, 2)
    with pytest.raises(
        GroupError, match=r"param group 0: a parameter of shape \[2, 2\] is not a parameter of the model"
    ):
        group_specs("adam", [{"params": [other.weight]}], flat, {})


def test_groups_map_onto_runs_of_the_flat_vector_across_segments():
    cfg = Config()
    algo, up, down = resolve_links(cfg)
    model = Net()
    flat = FlatModel(model, CPU)
    specs, _ = group_specs("efficient-adam", nanogpt_groups(model, 0.1), flat, {"lr": 0.5})
    part = Partition.build(flat.numel, (512, 512), 3)
    groups = ParamGroups(algo, specs, flat.layout, part)
    owner = torch.full((flat.numel,), -1)
    for seg in part:
        for run in groups.runs(seg):
            assert seg.start <= run.flat.start < run.flat.stop <= seg.stop
            assert (owner[run.flat] == -1).all()
            owner[run.flat] = run.group
    for name, offset, shape in flat.layout:
        n = torch.Size(shape).numel()
        assert (owner[offset : offset + n] == (0 if len(shape) >= 2 else 1)).all(), name
    assert groups.base_lrs == [0.5, 0.5]  # the keyword default
    assert [a.hp.weight_decay for a in groups.algorithms] == [0.1, 0.0]


def test_decoupled_decay_is_refused_where_the_rule_has_none(tmp_path):
    with pytest.raises(ConfigError, match="qcmd-adagrad's rule has no weight decay"):
        load_config(None, ["algorithm.name=qcmd-adagrad", "algorithm.decoupled_weight_decay=true"])


def test_copies_share_nothing_but_the_values_they_were_given():
    """Each group's algorithm holds its own hyper-parameters: a schedule on one group leaves the
    others and the configured algorithm alone."""
    cfg = Config()
    algo, up, down = resolve_links(cfg)
    model = Net()
    flat = FlatModel(model, CPU)
    specs, _ = group_specs("efficient-adam", nanogpt_groups(model, 0.1), flat, {})
    groups = ParamGroups(algo, specs, flat.layout, Partition.build(flat.numel, (512, 512), 1))
    groups.set_lrs([0.5, 0.25])
    assert [a.hp.lr for a in groups.algorithms] == [0.5, 0.25] and algo.hp.lr == cfg.algorithm.lr
    assert groups.algorithms[0].hp is not groups.algorithms[1].hp


@pytest.mark.parametrize("name, accepted", [("sgd", True), ("adam", False)])
def test_a_momentum_buffer_that_only_param_groups_explain_is_accepted_for_sgd_rules(tmp_path, name, accepted):
    """A library run whose groups give an SGD-type rule momentum that the config does not holds a
    momentum buffer in its checkpoint (the groups are not in the file): resume and export accept
    it for sgd and ecq-sgd, and still refuse such an item for a rule that never has one."""
    from crafted_files import craft, replace

    from qtrain.engine.checkpoint_files import load_run_checkpoint
    from qtrain.engine.simulator import simulate
    from qtrain.io.checkpoint import CheckpointError

    cfg = load_config(f"configs/{name}.yaml", ["train.steps=2", "checkpoint.every=2", "algorithm.momentum=0"])
    simulate(cfg, 2, tmp_path / "run", log=lambda _: None)
    source = tmp_path / "run" / "checkpoints" / "step-0000002.h5"
    tree, _ = load_run_checkpoint(source)
    n = tree["params"].numel()

    def add_momentum(f):
        replace(f, "/server/algorithm/momentum", torch.zeros(n).numpy(), attrs={})

    crafted = craft(source, tmp_path / "crafted.h5", add_momentum)
    if accepted:
        assert "momentum" in load_run_checkpoint(crafted)[0]["server"]["algorithm"]
    else:
        with pytest.raises(CheckpointError, match="momentum"):
            load_run_checkpoint(crafted)
    # and the engines make that buffer when a group asks for momentum
    algo, _, _ = resolve_links(cfg)
    model = Net()
    flat = FlatModel(model, CPU)
    specs, _ = group_specs(name, [{"params": list(model.parameters()), "lr": 0.1}], flat, {})
    groups = ParamGroups(algo, specs, flat.layout, Partition.build(flat.numel, (512, 512), 1))
    assert "momentum" not in groups.state_algorithm().init_server_state(4, CPU)
    if accepted:
        specs, _ = group_specs(name, [{"params": list(model.parameters()), "momentum": 0.9}], flat, {})
        groups = ParamGroups(algo, specs, flat.layout, Partition.build(flat.numel, (512, 512), 1))
        assert "momentum" in groups.state_algorithm().init_server_state(4, CPU)


def _optimizer(groups_of, pending=None):
    """A DistributedOptimizer over a stand-in worker: what session.optimizer builds around its groups."""
    from types import SimpleNamespace

    from qtrain.engine.param_groups import GROUP_KEYS
    from qtrain.library.optimizer import DistributedOptimizer

    cfg = Config()
    cfg.algorithm.name = "adam"
    algo, _, _ = resolve_links(cfg)
    model = Net()
    flat = FlatModel(model, CPU)
    specs, shown = group_specs("adam", groups_of(model), flat, {})
    groups = ParamGroups(algo, specs, flat.layout, Partition.build(flat.numel, (512, 512), 1))
    worker = SimpleNamespace(
        engine=SimpleNamespace(groups=groups),
        groups_lrs=lambda: list(pending or groups.base_lrs),
        initial_lrs=None,
        pending_lrs=list(pending) if pending else None,
    )
    return DistributedOptimizer(worker, shown, GROUP_KEYS["adam"]), worker


def test_frozen_parameters_in_a_group_are_skipped_as_torch_skips_them():
    model = Net()
    model.norm.requires_grad_(False)
    flat = FlatModel(model, CPU)
    specs, _ = group_specs("adam", [{"params": list(model.parameters())}], flat, {})
    assert specs[0].params == tuple(range(len(flat.layout)))  # every trainable one, the frozen ones left out


def test_only_lr_may_change_between_steps():
    from qtrain.library.errors import UsageError

    opt, worker = _optimizer(lambda m: nanogpt_groups(m, 0.1))
    opt.param_groups[1]["lr"] = 0.5
    assert worker.lr_of() == [0.001, 0.5]
    opt.param_groups[0]["weight_decay"] = 0.0
    with pytest.raises(
        UsageError, match=r"param group 0: weight_decay changed from 0.1 to 0.0 after session.optimizer\(\)"
    ):
        worker.lr_of()


def test_after_a_resume_a_schedulers_construction_is_undone_and_the_loops_own_rate_kept():
    """The checkpoint's rates are the groups' at creation (as optimizer.load_state_dict makes
    them); LinearLR's construction scales group 0's, which the first step restores, while the rate
    the loop wrote into group 1 is kept (nanoGPT's pattern)."""
    opt, worker = _optimizer(lambda m: nanogpt_groups(m, 0.1), pending=[0.004, 0.002])
    assert [g["lr"] for g in opt.param_groups] == [0.004, 0.002]
    torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=10)
    assert [g["lr"] for g in opt.param_groups] == [0.001, 0.0005]  # torch's construction wrote both
    opt.param_groups[1]["lr"] = 0.003  # the loop's own rate for this step
    assert worker.lr_of() == [0.004, 0.003]
    assert worker.pending_lrs is None and worker.lr_of() == [0.004, 0.003]
