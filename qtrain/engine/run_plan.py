"""A run's plan: everything about it that every rank (and the simulator) derives from the config,
built once, in dependency order: config -> setup (data, algorithm, links, steps) -> model ->
partition of its flat vector -> the engines and samplers of the ranks of the topology."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from qtrain.config import dump_yaml
from qtrain.engine.flat import FlatModel
from qtrain.engine.param_groups import GroupSpec, ParamGroups
from qtrain.engine.partition import Partition
from qtrain.engine.server import ServerEngine
from qtrain.engine.setup import RunSetup, build_flat_model, build_sampler, build_setup, resolved_config
from qtrain.engine.shards import InProcessShards
from qtrain.engine.topology import Topology
from qtrain.engine.worker import WorkerEngine


@dataclass(frozen=True)
class RunPlan:
    setup: RunSetup
    topology: Topology
    partition: Partition
    layout: list  # the model's (name, offset, shape) per parameter, for checkpoints
    config_text: str  # the resolved config as YAML: saved with the run, compared on resume
    group_specs: tuple[GroupSpec, ...] = ()  # the library's param groups (none: one, the whole model)

    @cached_property
    def groups(self) -> ParamGroups:
        """The param groups every engine of this process shares (their learning rates are set
        each step): the algorithm's copies with each group's values, and each segment's runs."""
        return ParamGroups(self.setup.algorithm, list(self.group_specs), self.layout, self.partition)

    @classmethod
    def build(cls, cfg, topology: Topology, device: torch.device) -> tuple[RunPlan, FlatModel]:
        """The plan and this rank's model (the server's master copy on a serving rank)."""
        setup = build_setup(cfg, topology.num_workers)
        model = build_flat_model(setup, device)
        partition = Partition.for_setup(setup, model.numel, len(topology.servers))
        text = dump_yaml(resolved_config(cfg, setup))
        return cls(setup, topology, partition, model.layout, text), model

    @property
    def cfg(self):
        return self.setup.cfg

    def model(self, device: torch.device) -> FlatModel:
        """Another copy of the model with the same initial weights."""
        return build_flat_model(self.setup, device)

    def server_engine(self, master: torch.Tensor, owner: int | None = None):
        """Serving rank ``owner``'s engine over ``master``, its shard of the flat vector; with
        ``owner`` None, every owner's engine over views of the full ``master`` behind one engine's
        interface (the simulator's K servers; with one server, simply its engine)."""
        k = len(self.topology.servers)
        if owner is None and k > 1:
            shards = [self.server_engine(master[self.partition.shard(o)], o) for o in range(k)]
            return InProcessShards(shards, master)
        s = self.setup
        return ServerEngine(
            s.algorithm,
            s.uplink.codec,
            s.downlink,
            self.partition,
            master,
            self.cfg.seed,
            self.cfg.runtime.kernels,
            owner or 0,
            self.groups,
            self.cfg.algorithm.uncompressed_steps,
        )

    def worker_engine(self, worker: int, device: torch.device) -> WorkerEngine:
        s = self.setup
        return WorkerEngine(
            s.algorithm,
            s.uplink,
            s.downlink.codec,
            self.partition,
            device,
            self.cfg.seed,
            worker,
            self.cfg.runtime.kernels,
            self.groups,
            self.cfg.algorithm.uncompressed_steps,
        )

    def sampler(self, worker: int):
        return build_sampler(self.setup, worker)

    def describe(self) -> str:
        s = self.setup
        ds = s.dataset
        return (
            f"{s.algorithm.name}, {self.topology.num_workers} workers, {s.steps} steps, "
            f"data {ds.name} ({ds.describe_task()}, {len(ds.x_train)} train samples), "
            f"{self.partition.numel} parameters in {self.partition.describe()}; "
            f"uplink {s.uplink.describe()}; downlink {s.downlink.describe()}{self.recipe()}"
        )

    def recipe(self) -> str:
        """What the plan line says of param groups, weight decay and the uncompressed warm-up."""
        a = self.setup.cfg.algorithm
        parts = [self.groups.describe()]
        if any(algo.hp.weight_decay for algo in self.groups.algorithms):
            parts.append(
                "decoupled weight decay (x <- x * (1 - lr * wd), where the weights live)"
                if a.decoupled_weight_decay
                else "L2 weight decay (wd * x added to the gradient)"
            )
        if a.uncompressed_steps:
            w = a.uncompressed_steps
            parts.append(f"steps 1-{w} uncompressed, the codecs from step {w + 1}")
        parts = [p for p in parts if p]
        return "; " + "; ".join(parts) if parts else ""
