"""Audio front end: waveform -> normalised 128-bin log-mel filterbank, AST's recipe exactly.

Kaldi-compatible fbank with the same settings as AST and `ASTFeatureExtractor`, so AST-family weights
and normalisation statistics carry over. Layout is [F, T] (frequency x time), AST's, so fine-tuning and
the Hugging Face export need no transposes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torchaudio

AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


@dataclass
class FrontEndConfig:
    sample_rate: int = 16000  # every file is resampled to this rate
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    crop_seconds: float = 6.0  # length of one view; the frame count is derived from it
    time_roll_p: float = 0.5  # probability of a circular time shift of the waveform before cropping
    # Normalisation: (x - mean) / (2 * std). AudioSet's statistics by default; `asit stats DATA`
    # prints a data set's own.
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD

    def __post_init__(self):
        for name in ("sample_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms", "crop_seconds", "std"):
            if getattr(self, name) <= 0:
                raise ValueError(f"frontend.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.time_roll_p <= 1.0:
            raise ValueError(f"frontend.time_roll_p must be in [0, 1], got {self.time_roll_p}")

    @property
    def crop_samples(self) -> int:
        return round(self.crop_seconds * self.sample_rate)

    def frames_in(self, num_samples: int) -> int:
        """Frames kaldi's fbank makes from `num_samples` (snip_edges: only whole windows)."""
        window = round(self.frame_length_ms * self.sample_rate / 1000)
        hop = round(self.frame_shift_ms * self.sample_rate / 1000)
        return 0 if num_samples < window else 1 + (num_samples - window) // hop

    def num_frames(self, multiple: int = 1) -> int:
        """Frames in one crop, rounded down to a multiple of the patch size (6 s -> 598 -> 592)."""
        frames = self.frames_in(self.crop_samples) // multiple * multiple
        if frames == 0:
            raise ValueError(
                f"frontend.crop_seconds={self.crop_seconds} gives fewer than {multiple} frames; "
                f"use a longer crop"
            )
        return frames


def fbank(wave: torch.Tensor, cfg: FrontEndConfig) -> torch.Tensor:
    """Log-mel filterbank of a mono waveform [S] in [-1, 1]: returns [num_mel_bins, frames], unnormalised."""
    wave = wave - wave.mean()  # DC removal, as AST
    feats = torchaudio.compliance.kaldi.fbank(
        wave[None],
        sample_frequency=cfg.sample_rate,
        num_mel_bins=cfg.num_mel_bins,
        frame_length=cfg.frame_length_ms,
        frame_shift=cfg.frame_shift_ms,
        window_type="hanning",
        htk_compat=True,
        use_energy=False,
        dither=0.0,
    )
    return feats.T  # kaldi gives [frames, bins]; AST's layout is [bins, frames]


def normalise(spec: torch.Tensor, cfg: FrontEndConfig) -> torch.Tensor:
    # Dividing by 2 std (AST's choice) keeps most values within [-1, 1].
    return (spec - cfg.mean) / (2 * cfg.std)


def frontend_metadata(cfg: FrontEndConfig, num_frames: int) -> dict:
    """What a checkpoint must carry so that a model is always fed what it was trained on."""
    return {**dataclasses.asdict(cfg), "num_frames": num_frames}


def check_frontend(saved: dict, current: FrontEndConfig, source: str) -> None:
    """Refuse a checkpoint whose front end differs from the data config, saying what differs."""
    mine = dataclasses.asdict(current)
    ignore = {"crop_seconds", "time_roll_p"}  # choices of the run, not of the model's input space
    diffs = [
        f"{k}: checkpoint {saved[k]!r} vs config {mine[k]!r}"
        for k in mine
        if k in saved and k not in ignore and not _same(saved[k], mine[k])
    ]
    if diffs:
        raise ValueError(f"{source}: front end differs from the config: " + "; ".join(diffs))


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b
