"""A deterministic, resumable, sharded sampler.

Every process gets the same permutation of the dataset for an epoch (seeded by ``seed`` and the epoch) and takes
every ``num_replicas``-th index from ``rank``. Training pads the permutation so all ranks run the same number of
batches (DDP needs that); validation does not pad (each sample counts once; totals are all-reduced). Resuming in the
middle of an epoch skips the batches already consumed without loading them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ShardedEpochSampler(Sampler[int]):
    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 pad: bool = True):
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.n, self.replicas, self.rank = num_samples, num_replicas, rank
        self.shuffle, self.seed, self.pad = shuffle, seed, pad
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's permutation; ``skip`` local indices (= consumed batches x batch size) are dropped."""
        self.epoch, self.skip = int(epoch), int(skip)

    def local_indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(int(self.seed) * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.pad:
            total = math.ceil(self.n / self.replicas) * self.replicas
            while len(order) < total:  # repeat the head, as torch's DistributedSampler does
                order += order[: total - len(order)]
        return order[self.rank :: self.replicas]

    def local_length(self) -> int:
        if self.pad:
            return math.ceil(self.n / self.replicas)
        return len(range(self.rank, self.n, self.replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.local_indices()[self.skip :])

    def __len__(self) -> int:
        return max(0, self.local_length() - self.skip)
