"""``session.shard(dataset)``: a worker's share of any map-style torch ``Dataset``, as a
``DataLoader`` that remembers where it is, so a resumed run sees the same batches.

The shard, the order and the position are the built-in sampler's (``data/sampler.py``, the one
``qtrain train`` uses): worker ``w`` of ``N`` takes a contiguous slice of one seeded permutation
of the indices, and every epoch reshuffles the shard with a generator seeded by (seed, worker,
epoch). Every worker gets the same number of batches per epoch, ``(len(dataset) // N) //
batch_size`` (the smallest shard's; the short tail is dropped), so every worker makes the same
number of steps. The position (epoch, batches handed to
the loop) is counted where the loop receives a batch, after any prefetching, and is part of the
worker's checkpoint: a resume continues mid-epoch with the next batch. Each epoch's DataLoader
gets its own seeded generator, so the loader never draws from the global torch generator (which a
user's dropout draws from, and which the checkpoint restores)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from qtrain.data import ShardSampler, shard_indices
from qtrain.library.errors import UsageError
from qtrain.seeding import derive_seed

_OURS = ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last")


class ShardedLoader:
    """Iterate it once per epoch (``for x, y in loader``); ``len(loader)`` is the batches per
    epoch. ``loader_kwargs`` go to each epoch's ``DataLoader`` (``num_workers``, ``collate_fn``,
    ``pin_memory``, ...)."""

    def __init__(
        self, dataset, batch_size: int, shuffle: bool, seed: int, workers: int, worker: int, **loader_kwargs
    ):
        taken = [k for k in _OURS if k in loader_kwargs]
        if taken:
            raise UsageError(
                f"session.shard(): {', '.join(taken)} is decided by the shard (pass batch_size= and "
                "shuffle= to shard itself; every worker takes the same number of batches per epoch)"
            )
        try:
            n = len(dataset)
        except TypeError:
            raise UsageError(
                "session.shard() needs a map-style Dataset (with __len__ and __getitem__); shard an "
                "IterableDataset yourself with session.worker_index and session.num_workers"
            ) from None
        if n < workers:
            raise UsageError(f"session.shard(): the dataset has {n} samples for {workers} workers")
        if batch_size < 1:
            raise UsageError(f"session.shard(): batch_size must be at least 1, got {batch_size}")
        self.dataset, self.seed, self.worker = dataset, seed, worker
        self.sampler = ShardSampler(
            shard_indices(n, workers, worker, seed), batch_size, seed, worker, shuffle, n // workers
        )
        self.batch_size, self.batches_per_epoch = self.sampler.batch, self.sampler.batches_per_epoch
        self.loader_kwargs = loader_kwargs

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def position(self) -> int:
        """Batches of the current epoch handed to the loop."""
        return self.sampler.position

    @property
    def epoch(self) -> int:
        """The epoch the next pass runs or continues (0-based): after a resume, the epoch the
        checkpoint was in, so ``for epoch in range(loader.epoch, epochs)`` picks up where it was."""
        s = self.sampler
        return s.epoch + 1 if s.position >= s.batches_per_epoch else s.epoch

    def __iter__(self):
        """One epoch: the rest of the current one, or the next whole one."""
        s = self.sampler
        epoch, start = (s.epoch + 1, 0) if s.position >= s.batches_per_epoch else (s.epoch, s.position)
        order, b = s._epoch_order(epoch), s.batch
        batches = [order[i * b : (i + 1) * b].tolist() for i in range(start, s.batches_per_epoch)]
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "loader", self.worker, epoch))
        loader = DataLoader(self.dataset, batch_sampler=batches, generator=generator, **self.loader_kwargs)
        for batch in loader:
            s.next_batch()  # the position moves where the loop receives the batch
            yield batch

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
