"""Everything a run needs, built the same way by the simulator and by every MPI rank."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from qtrain.algorithms import Algorithm
from qtrain.algorithms.links import CODEC_FIELDS, Link, resolve_links
from qtrain.data import Dataset, ShardSampler, load_dataset, shard_indices
from qtrain.engine.flat import FlatModel, trainable_parameters
from qtrain.models import build_model
from qtrain.seeding import derive_seed

DEFAULT_STEPS = 200  # when neither train.steps nor train.epochs is set


@dataclass
class RunSetup:
    cfg: object
    workers: int
    dataset: Dataset
    algorithm: Algorithm
    uplink: Link
    downlink: Link
    steps: int


def build_setup(cfg, workers: int) -> RunSetup:
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    algorithm, uplink, downlink = resolve_links(cfg)
    dataset = load_dataset(cfg.data, cfg.seed)
    if len(dataset.x_train) < workers:
        raise ValueError(f"dataset {dataset.name} has {len(dataset.x_train)} samples for {workers} workers")
    if cfg.train.steps is not None:
        steps = cfg.train.steps
    elif cfg.train.epochs is not None:
        smallest = len(dataset.x_train) // workers
        per_epoch = max(1, smallest // min(cfg.data.batch_size, smallest))
        steps = max(1, math.ceil(cfg.train.epochs * per_epoch))
    else:
        steps = DEFAULT_STEPS
    return RunSetup(cfg, workers, dataset, algorithm, uplink, downlink, steps)


@dataclass(frozen=True)
class UserData:
    """What a library run knows of its data: the user's own, which only the workers see."""

    name: str = "user"
    task: str = "user"  # the loss is the user's: no built-in evaluation
    optimum_train_loss: float | None = None


def build_library_setup(cfg, workers: int) -> RunSetup:
    """A library run's setup (``qtrain.init``): the algorithm and links of the config; the data,
    the loss and the number of steps belong to the user's loop (``steps`` is ``train.steps``
    when set, as the progress line's total; 0: unknown)."""
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    algorithm, uplink, downlink = resolve_links(cfg)
    return RunSetup(cfg, workers, UserData(), algorithm, uplink, downlink, cfg.train.steps or 0)


def build_module(setup: RunSetup) -> torch.nn.Module:
    """The config's model with its seeded initial weights: identical on every rank and in the
    simulator."""
    cfg, ds = setup.cfg, setup.dataset
    torch.manual_seed(derive_seed(cfg.seed, "model"))
    try:
        module = build_model(cfg.model.name, ds.input_shape, ds.outputs, cfg.model.hidden, cfg.model.kwargs)
        trainable_parameters(module, f"model.name {cfg.model.name!r}")
        return module
    except (RuntimeError, MemoryError) as exc:
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc):
            raise
        from qtrain.memory import available_bytes, describe

        free = available_bytes()
        have = f"; this machine has {describe(free)} available" if free is not None else ""
        why = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ValueError(
            f"building the model (model.name {cfg.model.name!r}) ran out of memory ({why}){have}"
        ) from None


def build_flat_model(setup: RunSetup, device: torch.device) -> FlatModel:
    """:func:`build_module`, flattened on ``device``."""
    return FlatModel(build_module(setup), device)


def build_sampler(setup: RunSetup, worker: int) -> ShardSampler:
    """Worker ``worker`` (0-based; MPI rank r is worker r - 1) and its shard of the training set."""
    cfg = setup.cfg
    n = len(setup.dataset.x_train)
    shard = shard_indices(n, setup.workers, worker, cfg.seed)
    return ShardSampler(shard, cfg.data.batch_size, cfg.seed, worker, cfg.data.shuffle, n // setup.workers)


def resolved_config(cfg, setup: RunSetup):
    """A copy of ``cfg`` with the links' codecs, parameters and EF switches written out."""
    out = copy.deepcopy(cfg)
    for link, section in ((setup.uplink, out.uplink), (setup.downlink, out.downlink)):
        section.codec = link.codec.name
        section.error_feedback = link.error_feedback
        params = link.codec.params()
        for f in CODEC_FIELDS:  # fields the codec does not take (bits of sign, ...) become null
            setattr(section, f, params.get(f))
    out.workers = setup.workers
    if out.train.steps is None and setup.steps:  # a library run's steps are its loop's
        out.train.steps, out.train.epochs = setup.steps, None
    return out
