"""Deterministic, resumable, distributed batching with size grouping.

An epoch is a shuffled list of *pools* (``pool_batches`` global batches each). Within a pool,
images are grouped by processed size so that padding stays small; in elastic training the sizes
come from the predicted phi, so the training loop groups each pool after predicting it
(``group_by_size``). Everything is a function of (seed, epoch), so a resumed run sees the same
order, and each rank of a ``torchrun`` job takes its own shard of every pool.
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_pools(num_images: int, batch_size: int, pool_batches: int, seed: int, epoch: int
                ) -> list[list[int]]:
    """Global pools of ``pool_batches * batch_size`` image indices for one epoch (last partial pool dropped)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_images, generator=g).tolist()
    pool = pool_batches * batch_size
    return [order[i: i + pool] for i in range(0, num_images - pool + 1, pool)]


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's part of a global batch."""
    return batch[rank::world_size]


def group_by_size(sizes: list[tuple[int, int]], batch_size: int,
                  max_padding: float | None = None) -> list[list[int]]:
    """Split positions 0..n-1 into batches of ``batch_size`` that pad little when batched.

    Greedy: the largest remaining image seeds a batch; images are added one at a time, each
    time the one that adds the fewest padded pixels to the batch's (max h) x (max w) canvas.
    With ``max_padding`` a batch is closed early when that image would make more than this
    fraction of its canvas padding (the parts of a mixed step: engine.train_step).
    Deterministic (ties go to the larger, then the earlier image). Returns batches of
    positions into ``sizes``, largest first.
    """
    hw = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    area = hw[:, 0] * hw[:, 1]
    left = np.ones(len(hw), dtype=bool)
    batches = []
    while left.any():
        cand = np.flatnonzero(left)
        seed = int(cand[np.lexsort((-cand, area[cand]))[-1]])
        left[seed] = False
        batch, H, W, used = [seed], int(hw[seed, 0]), int(hw[seed, 1]), int(area[seed])
        while len(batch) < batch_size and left.any():
            cand = np.flatnonzero(left)
            nH, nW = np.maximum(H, hw[cand, 0]), np.maximum(W, hw[cand, 1])
            added_padding = (len(batch) + 1) * nH * nW - (used + area[cand]) \
                - (len(batch) * H * W - used)
            j = int(cand[np.lexsort((cand, -area[cand], added_padding))[0]])
            canvas = (len(batch) + 1) * max(H, int(hw[j, 0])) * max(W, int(hw[j, 1]))
            if max_padding is not None and 1 - (used + area[j]) / canvas > max_padding:
                break
            left[j] = False
            batch.append(j)
            H, W, used = max(H, int(hw[j, 0])), max(W, int(hw[j, 1])), used + int(area[j])
        batches.append(batch)
    return batches


class PoolSampler(torch.utils.data.Sampler):
    """Yields the global pools (lists of dataset indices) of one epoch, from ``start_pool`` on.

    Use as ``batch_sampler`` of a DataLoader: each loaded "batch" is one pool.
    """

    def __init__(self, num_images: int, batch_size: int, pool_batches: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} must be divisible by the "
                             f"number of processes {world_size}")
        if num_images < batch_size * pool_batches:
            raise ValueError(f"{num_images} images are fewer than one pool "
                             f"({pool_batches} batches of {batch_size}); lower --batch-size")
        self.num_images, self.batch_size, self.pool_batches = num_images, batch_size, pool_batches
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_pool = 0, 0

    def set_epoch(self, epoch: int, start_pool: int = 0) -> None:
        self.epoch, self.start_pool = epoch, start_pool

    def __len__(self) -> int:
        return self.num_images // (self.batch_size * self.pool_batches) - self.start_pool

    def __iter__(self):
        pools = epoch_pools(self.num_images, self.batch_size, self.pool_batches, self.seed,
                            self.epoch)
        yield from pools[self.start_pool:]
