"""Pretraining views: one clip -> two independent random crops -> normalised log-mel spectrograms.

All randomness of a sample comes from (seed, epoch, index), never from a worker's or a process's RNG,
so the views of a clip are the same whatever the number of workers or processes, and a resumed run sees
exactly the views an uninterrupted one would have.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .audio import AudioError, load_audio
from .errors import InputError
from .features import FrontEndConfig, fbank, normalise
from .sources import AudioItem

log = logging.getLogger("asit")

# Give up on a sample after this many unreadable files in a row: the data set is broken, not a file.
MAX_CONSECUTIVE_FAILURES = 50


@dataclass
class ViewsConfig:
    """How pretraining cuts its two views from a clip: settings of the run, not of the model's input (the
    front end's), so a checkpoint does not pin them."""

    crop_seconds: float = 6.0  # length of one view; the frame count is derived from it
    time_roll_p: float = 0.5  # probability of a circular time shift of the waveform before cropping
    # Where the fbank of the crops is computed: in the loader workers (per clip), or batched on the
    # training device (asit.batched_fbank, the same numbers): for GPUs whose step outruns the CPU cores'
    # fbank, and for few-core machines, where workers compete with the step for the cores.
    frontend: Literal["loader", "device"] = "loader"

    def __post_init__(self):
        if self.crop_seconds <= 0:
            raise ValueError(f"views.crop_seconds must be positive, got {self.crop_seconds}")
        if not 0.0 <= self.time_roll_p <= 1.0:
            raise ValueError(f"views.time_roll_p must be in [0, 1], got {self.time_roll_p}")

    def crop_samples(self, frontend: FrontEndConfig) -> int:
        return round(self.crop_seconds * frontend.sample_rate)

    def num_frames(self, frontend: FrontEndConfig, multiple: int = 1) -> int:
        """Frames in one view, rounded down to a multiple of the patch size (6 s -> 598 -> 592)."""
        frames = frontend.frames_in(self.crop_samples(frontend)) // multiple * multiple
        if frames == 0:
            raise ValueError(f"views.crop_seconds={self.crop_seconds} gives fewer than {multiple} frames; "
                             f"use a longer crop")
        return frames


def random_crop(wave: torch.Tensor, n: int, rng: np.random.Generator) -> torch.Tensor:
    """A window of `n` samples; shorter clips are zero-padded at the end."""
    if wave.numel() <= n:
        return torch.nn.functional.pad(wave, (0, n - wave.numel()))
    start = int(rng.integers(0, wave.numel() - n + 1))
    return wave[start:start + n]


def make_crops(wave: torch.Tensor, cfg: FrontEndConfig, views: ViewsConfig, rng: np.random.Generator,
               num_views: int = 2) -> torch.Tensor:
    """[S] waveform -> [num_views, crop_samples]: the DC-free clip, time-rolled with p = time_roll_p,
    cropped at random num_views times."""
    wave = wave - wave.mean()
    if rng.random() < views.time_roll_p:
        wave = torch.roll(wave, int(rng.integers(0, wave.numel())))
    n = views.crop_samples(cfg)
    return torch.stack([random_crop(wave, n, rng) for _ in range(num_views)])


def crop_features(crops: torch.Tensor, cfg: FrontEndConfig, num_frames: int) -> torch.Tensor:
    """[..., S] crops -> [..., 1, F, num_frames] normalised spectrograms, one fbank per crop."""
    specs = torch.stack([fbank(c, cfg)[:, :num_frames] for c in crops.reshape(-1, crops.shape[-1])])
    return normalise(specs, cfg).reshape(*crops.shape[:-1], 1, *specs.shape[1:])



class PretrainViews(Dataset):
    """Indexed by (clip index, epoch), as yielded by `asit.sampler.GlobalBatchSampler`."""

    def __init__(self, items: Sequence[AudioItem], cfg: FrontEndConfig, views: ViewsConfig, seed: int,
                 patch_frames: int = 16):
        self.items = list(items)
        self.cfg, self.views = cfg, views
        self.num_frames = views.num_frames(cfg, multiple=patch_frames)  # whole patches in time
        self.seed = seed
        self.bad: dict[int, str] = {}  # item -> why it cannot be read; in each loader process its own

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        rng = np.random.default_rng([self.seed, epoch, index])
        # An unreadable file is replaced by the next readable one: deterministic, so every process and
        # every resumed run makes the same substitution. The training loop reports and counts the files
        # that failed (`BadFiles`): items index, index + 1, ..., one "\n"-separated reason each.
        n = len(self.items)
        for failed in range(MAX_CONSECUTIVE_FAILURES):
            wave = self.read((index + failed) % n)
            if wave is not None:
                crops = make_crops(wave, self.cfg, self.views, rng)
                views = crops if self.views.frontend == "device" else crop_features(crops, self.cfg, self.num_frames)
                return {"views": views, "index": index, "failed": failed,
                        "errors": "\n".join(self.bad[(index + k) % n] for k in range(failed))}
        raise InputError(
            f"{MAX_CONSECUTIVE_FAILURES} unreadable audio files in a row from {self.items[index].path}: "
            f"is the data set readable at all?"
        )

    def read(self, i: int) -> torch.Tensor | None:
        """Item i's waveform, or None if it cannot be read: a file that failed once is not read again."""
        if i not in self.bad:
            try:
                return load_audio(self.items[i].path, self.cfg.sample_rate)
            except AudioError as e:
                self.bad[i] = " ".join(str(e).split())  # one line: the reasons travel "\n"-separated
        return None


class BadFiles:
    """The unreadable files a run has met, each warned about once, out of the distinct files it read.

    Fed the batches of `PretrainViews`: every loader process finds failures on its own, and this,
    in the training process, is where they meet.
    """

    def __init__(self, items: Sequence[AudioItem]):
        self.items = items
        self.seen = np.zeros(len(items), dtype=bool)
        self.reasons: dict[str, str] = {}  # path -> why it cannot be read

    def add(self, batch: dict) -> None:
        n = len(self.items)
        for index, failed, errors in zip(batch["index"].tolist(), batch["failed"].tolist(), batch["errors"]):
            self.seen[[(index + k) % n for k in range(failed + 1)]] = True
            for k, error in enumerate(errors.split("\n")[:failed]):
                path = self.items[(index + k) % n].path
                if path not in self.reasons:
                    self.reasons[path] = error.removeprefix(f"{path}: ")
                    log.warning("skipping %s", error)

    @property
    def num_seen(self) -> int:
        return int(np.count_nonzero(self.seen))
