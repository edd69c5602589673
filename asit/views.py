"""Pretraining views: one clip -> two independent random crops -> normalised log-mel spectrograms.

All randomness of a sample comes from (seed, epoch, index), never from a worker's or a process's RNG,
so the views of a clip are the same whatever the number of workers or processes, and a resumed run sees
exactly the views an uninterrupted one would have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .audio import AudioError, load_audio
from .features import FrontEndConfig, fbank, normalise
from .sources import AudioItem

log = logging.getLogger("asit")

# Give up on a sample after this many unreadable files in a row: the data set is broken, not a file.
MAX_CONSECUTIVE_FAILURES = 50


def random_crop(wave: torch.Tensor, cfg: FrontEndConfig, rng: np.random.Generator) -> torch.Tensor:
    """A window of `crop_samples`; shorter clips are zero-padded at the end."""
    n = cfg.crop_samples
    if wave.numel() <= n:
        return torch.nn.functional.pad(wave, (0, n - wave.numel()))
    start = int(rng.integers(0, wave.numel() - n + 1))
    return wave[start:start + n]


def make_views(wave: torch.Tensor, cfg: FrontEndConfig, num_frames: int, rng: np.random.Generator,
               num_views: int = 2) -> torch.Tensor:
    """[S] waveform -> [num_views, 1, F, num_frames] normalised spectrograms."""
    wave = wave - wave.mean()
    if rng.random() < cfg.time_roll_p:
        wave = torch.roll(wave, int(rng.integers(0, wave.numel())))
    views = [normalise(fbank(random_crop(wave, cfg, rng), cfg)[:, :num_frames], cfg) for _ in range(num_views)]
    return torch.stack(views)[:, None]


class PretrainViews(Dataset):
    """Indexed by (clip index, epoch), as yielded by `GlobalBatchSampler`."""

    def __init__(self, items: Sequence[AudioItem], cfg: FrontEndConfig, num_frames: int, seed: int):
        self.items = list(items)
        self.cfg = cfg
        self.num_frames = num_frames
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        rng = np.random.default_rng([self.seed, epoch, index])
        # An unreadable file is replaced by the next readable one: deterministic, so every process and
        # every resumed run makes the same substitution. The failures are counted by the training loop.
        for failed in range(MAX_CONSECUTIVE_FAILURES):
            item = self.items[(index + failed) % len(self.items)]
            try:
                wave = load_audio(item.path, self.cfg.sample_rate)
            except AudioError as e:
                log.warning("skipping %s", e)
                continue
            return {"views": make_views(wave, self.cfg, self.num_frames, rng), "index": index, "failed": failed}
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_FAILURES} unreadable audio files in a row from {self.items[index].path}: "
            f"is the data set readable at all?"
        )


class GlobalBatchSampler(Sampler):
    """Yields, for every remaining step, this process's share of the step's global batch.

    Each epoch shuffles the whole data set with its own seed and cuts it into global batches (the last
    incomplete one is dropped); process r takes elements r, r + W, ... of each. One process with batch
    W * b therefore sees exactly the clips that W processes with batch b see together.
    """

    def __init__(self, num_items: int, batch_size: int, rank: int, world_size: int, seed: int,
                 total_steps: int, start_step: int = 0):
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = num_items // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the data has {num_items} clips, fewer than one global batch of {self.global_batch} "
                f"(train.batch_size={batch_size} x {world_size} processes)"
            )
        self.num_items, self.rank, self.world_size = num_items, rank, world_size
        self.seed, self.total_steps, self.start_step = seed, total_steps, start_step

    def __len__(self) -> int:
        return self.total_steps - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, order_epoch = None, None
        for step in range(self.start_step, self.total_steps):
            epoch, i = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
                order_epoch = epoch
            batch = order[i * self.global_batch:(i + 1) * self.global_batch]
            yield [(int(j), epoch) for j in batch[self.rank::self.world_size]]
