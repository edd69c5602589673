"""The one sampler of both training loops: each step's global batch, shared out among processes.

Epoch e is a permutation of all clips drawn from (seed, e), or, with `weights` (fine-tuning's balanced
sampling), as many draws with replacement; it is cut into global batches of batch_size x world_size (the
last incomplete one is dropped) and process r takes elements r, r + W, ... of each. One process with
batch W * b therefore sees exactly the clips that W processes with batch b see together, and a run that
resumes at step s sees what an uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from .errors import InputError


class GlobalBatchSampler(Sampler):
    """For every step in [start_step, stop_step), this process's share of the step's global batch: pairs
    (clip index, epoch) for pretraining, whose views are drawn from both, or clip indices
    (`with_epoch=False`). `set_epoch(e)` makes the range epoch e's steps, for a loop by epochs."""

    def __init__(self, num_items: int, batch_size: int, rank: int, world_size: int, seed: int,
                 stop_step: int = 0, start_step: int = 0, weights: np.ndarray | None = None,
                 with_epoch: bool = True):
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = num_items // self.global_batch
        if self.steps_per_epoch == 0:
            raise InputError(
                f"the data has {num_items} clips, fewer than one global batch of {self.global_batch} "
                f"(train.batch_size={batch_size} x {world_size} processes)"
            )
        self.num_items, self.rank, self.world_size, self.seed = num_items, rank, world_size, seed
        self.start_step, self.stop_step, self.weights, self.with_epoch = start_step, stop_step, weights, with_epoch

    def set_epoch(self, epoch: int) -> None:
        self.start_step, self.stop_step = epoch * self.steps_per_epoch, (epoch + 1) * self.steps_per_epoch

    def __len__(self) -> int:
        return self.stop_step - self.start_step

    def order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        if self.weights is None:
            return rng.permutation(self.num_items)
        return rng.choice(self.num_items, size=self.num_items, replace=True, p=self.weights)

    def __iter__(self) -> Iterator[list]:
        order, order_epoch = None, None
        for step in range(self.start_step, self.stop_step):
            epoch, i = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self.order(epoch), epoch
            share = order[i * self.global_batch:(i + 1) * self.global_batch][self.rank::self.world_size]
            yield [(int(j), epoch) for j in share] if self.with_epoch else [int(j) for j in share]
