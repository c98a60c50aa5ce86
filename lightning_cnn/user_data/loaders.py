"""Images streamed from disk: a torch DataLoader with worker processes, wrapped to behave like ``InMemoryLoader``.

The same sample order as the in-memory loader (``shard_indices``: one permutation per (seed, epoch), each rank
its slice), so a run reads the same batches from a folder as from the same images in memory. Decoding happens in
the workers; a file a worker cannot decode travels back as data and is raised here, in the main process, as one
line naming it.
"""

from __future__ import annotations

import math
import os

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data import default_collate

from ..datamodule import _rank_and_world, in_groups, shard_indices
from .image_folder import UnreadableImage


def default_workers() -> int:
    """Worker processes when --workers is not given: one per core but one (the training step's), at least 1."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class ShardSampler(Sampler):
    """The indices ``InMemoryLoader`` would visit this epoch on this rank; Lightning calls ``set_epoch``."""

    def __init__(self, n: int, shuffle: bool, seed: int, pad: bool):
        self.n, self.shuffle, self.seed, self.pad, self.epoch = n, shuffle, seed, pad, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rank, world_size = _rank_and_world()
        return iter(shard_indices(self.n, rank=rank, world_size=world_size, shuffle=self.shuffle, seed=self.seed,
                                  epoch=self.epoch, pad=self.pad).tolist())

    def __len__(self) -> int:
        rank, world_size = _rank_and_world()
        return math.ceil(self.n / world_size) if self.pad else len(range(rank, self.n, world_size))


def collate_or_unreadable(samples: list):
    """A batch, or the first ``UnreadableImage`` among the samples (raised by ``StreamingLoader``)."""
    for sample in samples:
        if isinstance(sample, UnreadableImage):
            return sample
    return default_collate(samples)


class StreamingLoader:
    """Batches of a map-style ``dataset`` decoded by ``workers`` processes (0: in this process).

    Like ``InMemoryLoader``: ``sampler`` has ``set_epoch``, training shuffles and pads shards, evaluation does
    neither; ``batches_per_item=k`` yields lists of k batches. Workers persist across epochs and prefetch.
    """

    batch_sampler = None  # Lightning looks for set_epoch on ``sampler`` (see InMemoryLoader)

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, *, workers: int = 0,
                 pin_memory: bool = False, batches_per_item: int = 1):
        self.sampler = ShardSampler(len(dataset), shuffle, seed, pad=shuffle)
        self.batch_size, self.batches_per_item = batch_size, batches_per_item
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 collate_fn=collate_or_unreadable, pin_memory=pin_memory,
                                 persistent_workers=workers > 0, prefetch_factor=4 if workers else None)

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.sampler) / self.batch_size) / self.batches_per_item)

    def __iter__(self):
        return in_groups(self._checked_batches(), self.batches_per_item)

    def _checked_batches(self):
        for batch in self.loader:
            if isinstance(batch, UnreadableImage):
                raise batch.as_user_error()
            yield batch
