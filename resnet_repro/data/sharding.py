"""Which images each rank reads, in which order. Pure functions of (seed, epoch, rank, world).

Training: one seeded permutation of the whole split per epoch, cut into global batches; rank r
takes the r-th slice of every global batch. So 2 ranks x batch B see exactly the images of
1 rank x batch 2B, and a run resumed at an epoch boundary reads the same order as one never stopped.
Evaluation: contiguous, non-overlapping chunks, every image exactly once across ranks, no padding.
"""

from __future__ import annotations

import numpy as np


def steps_per_epoch(num_images: int, global_batch: int) -> int:
    """Full global batches per epoch (the incomplete last batch is dropped in training)."""
    return num_images // global_batch


def train_indices(
    num_images: int, *, epoch: int, seed: int, batch_size: int, rank: int, world_size: int
) -> np.ndarray:
    """Indices into the training list that `rank` reads this epoch, in order."""
    global_batch = batch_size * world_size
    steps = steps_per_epoch(num_images, global_batch)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_images)[: steps * global_batch]
    per_step = order.reshape(steps, world_size, batch_size)
    return per_step[:, rank, :].reshape(-1)


def eval_indices(num_images: int, *, rank: int, world_size: int) -> np.ndarray:
    """Contiguous chunk of the evaluation list for `rank`; chunks cover every image once."""
    bounds = np.linspace(0, num_images, world_size + 1).round().astype(int)
    return np.arange(bounds[rank], bounds[rank + 1])
