"""A run's plan: everything about it that every rank (and the simulator) derives from the config,
built once, in dependency order: config -> setup (data, algorithm, links, steps) -> model ->
partition of its flat vector -> the engines and samplers of the ranks of the topology."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qtrain.config import dump_yaml
from qtrain.engine.flat import FlatModel
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
        )

    def sampler(self, worker: int):
        return build_sampler(self.setup, worker)

    def describe(self) -> str:
        s = self.setup
        ds = s.dataset
        return (
            f"{s.algorithm.name}, {self.topology.num_workers} workers, {s.steps} steps, "
            f"data {ds.name} ({ds.task}, {len(ds.x_train)} train samples), "
            f"{self.partition.numel} parameters in {self.partition.describe()}; "
            f"uplink {s.uplink.describe()}; downlink {s.downlink.describe()}"
        )
