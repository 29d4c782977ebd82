"""Built-in datasets, worker shards and the per-worker batch sampler."""

from qtrain.data.base import Dataset
from qtrain.data.registry import DATASETS, load_dataset
from qtrain.data.sampler import ShardSampler, shard_indices

__all__ = ["DATASETS", "Dataset", "ShardSampler", "load_dataset", "shard_indices"]
