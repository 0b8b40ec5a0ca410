"""Training order and per-batch seeds: pure functions of the run seed, the epoch and the rank.

:class:`EpochSampler` shuffles with a generator seeded from ``(seed, epoch)``, shards by rank
like ``DistributedSampler`` and yields ``(epoch, index)`` keys (the dataset seeds each item's
draws from them); :class:`ShardSampler` splits the validation set; :func:`batch_seed` seeds a
batch's strong policy. So a resumed run replays the same data, with any number of workers.
"""
from __future__ import annotations

import math
import random
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler, get_worker_info

__all__ = ["EpochSampler", "ShardSampler", "batch_seed", "worker_init"]

_MASK64 = 2**64 - 1
_ORDER_STREAM = 0x0D3E  # tags of the independent streams derived from the run seed
_BATCH_STREAM = 0xB47C


class EpochSampler(Sampler):
    """Training order: a shuffle seeded from ``(seed, epoch)``, sharded by rank, as keys.

    Yields ``(epoch, index)`` keys (see :func:`sldistill.data.datasets.split_key`). With
    ``world_size > 1`` it splits like ``DistributedSampler``: the permutation is padded by
    wrapping around to a multiple of ``world_size`` and rank ``r`` takes positions
    ``r, r + world_size, ...``, so every process gets ``ceil(n / world_size)`` samples (equal
    shards; DDP needs the same number of steps everywhere). Call :meth:`set_epoch` before
    each epoch (the trainer does); the order is then a pure function of ``(seed, epoch)``.
    """

    def __init__(self, num_samples: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        if num_samples < 1:
            raise ValueError(f"EpochSampler needs at least one sample, got {num_samples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.rank, self.world_size, self.shuffle = int(rank), int(world_size), bool(shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order (and the augmentation keys) of ``epoch`` (>= 0) from now on."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        """This rank's sample indices in ``epoch``, in order."""
        n = self.num_samples
        if self.shuffle:
            entropy = [self.seed & _MASK64, int(epoch), _ORDER_STREAM]
            state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)
            g = torch.Generator().manual_seed(int(state[0]) & (2**63 - 1))
            perm = torch.randperm(n, generator=g).tolist()
        else:
            perm = list(range(n))
        total = len(self) * self.world_size
        while len(perm) < total:  # pad by wrapping (more than once when n < world_size)
            perm += perm[: total - len(perm)]
        return perm[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, i) for i in self.order(epoch)])

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...`` of ``num_samples``, in order: each sample on
    exactly one process, nothing padded (shards may differ in length by one). For evaluation,
    where sums are all-reduced."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.indices = range(int(rank), int(num_samples), int(world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def batch_seed(seed: int, rank: int, epoch: int, indices: Sequence[int]) -> int:
    """Seed of one batch's strong-policy generator: a pure function of its arguments."""
    ss = np.random.SeedSequence([int(seed) & _MASK64, _BATCH_STREAM, int(rank), int(epoch), len(indices),
                                 *(int(i) for i in indices)])
    return int(ss.generate_state(1, np.uint64)[0]) & (2**63 - 1)


def worker_init(worker_id: int) -> None:
    """Seed python's and numpy's global generators from the worker seed (for user transforms;
    ours never use the global generators)."""
    info = get_worker_info()
    seed = int(info.seed) if info is not None else 0
    random.seed(seed)
    np.random.seed(seed % 2**32)
