"""Fine-tuning augmentations (AST's recipe), batched on the training device: mixup and SpecAugment.

Both work on normalised spectrograms [B, 1, F, T], after the front end:
- Mixup blends whole spectrograms, not waveforms as AST does: one batched op instead of a second file
  read and fbank per clip. (Mixing log-mel spectrograms is not mixing the sounds, but it is what most
  later audio transformers do, and the targets are mixed with the same weight either way.)
- SpecAugment fills its masks with 0, which in normalised space is the data set's mean. AST masks before
  normalising, i.e. with a log-mel value of 0, far above AudioSet's mean of -4.3; the mean hides the
  content without adding an artefact.

Randomness comes from a numpy Generator the caller seeds per step, so a resumed run, or one with another
number of loader workers, draws the same masks and mixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class AugmentConfig:
    # Probability that a training clip is mixed with another clip of its batch (AST: 0.5 AudioSet,
    # 0.6 Speech Commands, 0 ESC-50).
    mixup: float = 0.0
    mixup_alpha: float = 10.0  # lambda ~ Beta(alpha, alpha); AST's 10 keeps most mixes near half/half
    # SpecAugment: one frequency and one time mask per clip, each of a width drawn uniformly from
    # 0..max. AST: 48 bins and 192 frames on 10 s clips; scale the time mask with the clip length.
    freq_mask: int = 0
    time_mask: int = 0

    def __post_init__(self):
        if not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"augment.mixup is a probability in [0, 1], got {self.mixup}")
        if self.mixup_alpha <= 0:
            raise ValueError(f"augment.mixup_alpha must be positive, got {self.mixup_alpha}")
        if self.freq_mask < 0 or self.time_mask < 0:
            raise ValueError("augment.freq_mask and augment.time_mask are widths, they cannot be negative")


def mixup(x: torch.Tensor, y: torch.Tensor, rate: float, alpha: float,
          rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each clip, with probability `rate`, with a random other clip of the batch.

    x: [B, ...] inputs, y: [B, C] (one- or multi-hot) targets. Clip i becomes
    lam_i * x_i + (1 - lam_i) * x_j and its target lam_i * y_i + (1 - lam_i) * y_j, with the same lam_i
    for both; clips that are not mixed have lam_i = 1. Returns the mixed x, y and lam [B].
    """
    b = x.shape[0]
    if rate == 0.0 or b < 2:
        return x, y, torch.ones(b, device=x.device)
    lam = np.where(rng.random(b) < rate, rng.beta(alpha, alpha, b), 1.0)
    # The partner is one of the other b - 1 clips, never the clip itself (that would mix nothing).
    partner = torch.from_numpy((np.arange(b) + rng.integers(1, b, b)) % b).to(x.device)
    lam = torch.from_numpy(lam).to(x.device)
    lx = lam.view(b, *([1] * (x.dim() - 1))).to(x.dtype)
    ly = lam.view(b, 1).to(y.dtype)
    return lx * x + (1 - lx) * x[partner], ly * y + (1 - ly) * y[partner], lam


def random_bands(batch: int, size: int, max_width: int, rng: np.random.Generator) -> torch.Tensor:
    """[batch, size] bool: one band per row, of a width uniform in 0..max_width, at a uniform position."""
    width = rng.integers(0, min(max_width, size) + 1, batch)
    start = rng.integers(0, size - width + 1)  # the band always fits inside the axis
    pos = np.arange(size)
    return torch.from_numpy((pos >= start[:, None]) & (pos < (start + width)[:, None]))


def spec_augment(x: torch.Tensor, freq_mask: int, time_mask: int, rng: np.random.Generator) -> torch.Tensor:
    """x: [B, 1, F, T] normalised spectrograms -> a copy with one frequency and one time band set to 0."""
    if freq_mask == 0 and time_mask == 0:
        return x
    b, _, f, t = x.shape
    freq = random_bands(b, f, freq_mask, rng).to(x.device)  # [B, F]
    time = random_bands(b, t, time_mask, rng).to(x.device)  # [B, T]
    hidden = freq[:, None, :, None] | time[:, None, None, :]  # [B, 1, F, T]
    return x.masked_fill(hidden, 0.0)
