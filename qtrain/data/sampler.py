"""Disjoint, deterministic worker shards and a resumable per-worker batch sampler."""

from __future__ import annotations

import torch

from qtrain.seeding import derive_seed


def shard_indices(num_samples: int, workers: int, worker: int, seed: int) -> torch.Tensor:
    """Worker ``worker`` (0-based) of ``workers``: a contiguous slice of one seeded permutation of
    the training set. Shards are disjoint, cover the set, and differ in size by at most one."""
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is not in 0..{workers - 1}")
    if num_samples < workers:
        raise ValueError(f"{num_samples} training samples cannot be shared by {workers} workers")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(derive_seed(seed, "shards")))
    return torch.tensor_split(order, workers)[worker]


class ShardSampler:
    """Batches of ``batch_size`` indices from one worker's shard, reshuffled every epoch.

    Every worker's epoch is the same number of batches, the smallest shard's:
    ``smallest // batch_size``, where ``smallest`` is ``num_samples // workers`` (the short tail
    is dropped; a shard smaller than the batch gives one batch of ``smallest`` samples). So every
    worker ends its epochs at the same step, which a loop over epochs (the library's
    ``session.shard``) needs, and ``train.epochs`` counts the same steps on every worker. Epoch e's
    order comes from a generator seeded by (seed, worker, e), so the whole state is two
    integers: (epoch, position).
    """

    def __init__(
        self,
        shard: torch.Tensor,
        batch_size: int,
        seed: int,
        worker: int,
        shuffle: bool = True,
        smallest=None,
    ):
        """``smallest``: the smallest shard's size (default: this one's)."""
        self.shard = shard
        smallest = len(shard) if smallest is None else smallest
        self.batch = min(batch_size, smallest)
        self.batches_per_epoch = smallest // self.batch
        self.seed, self.worker, self.shuffle = seed, worker, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return self.shard
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "data", self.worker, epoch))
        return self.shard[torch.randperm(len(self.shard), generator=gen)]

    def next_batch(self) -> torch.Tensor:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._order = self._epoch_order(self.epoch)
        start = self.position * self.batch
        self.position += 1
        return self._order[start : start + self.batch]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``state``'s (epoch, position); a position past this shard's epoch (a
        checkpoint of another dataset, batch size or worker count) is a ValueError."""
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.batches_per_epoch:
            raise ValueError(
                f"data position (epoch {epoch}, batch {position}) is outside this shard's epochs of "
                f"{self.batches_per_epoch} batches (a checkpoint of another dataset or batch size?)"
            )
        self.epoch, self.position = epoch, position
        self._order = self._epoch_order(self.epoch)
