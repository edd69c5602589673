"""Audio front end: waveform -> normalised 128-bin log-mel filterbank, AST's recipe exactly.

Kaldi-compatible fbank with the same settings as AST and `ASTFeatureExtractor`, so AST-family weights
and normalisation statistics carry over. Layout is [F, T] (frequency x time), AST's, so fine-tuning and
the Hugging Face export need no transposes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch

from .errors import InputError

AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


@dataclass
class FrontEndConfig:
    sample_rate: int = 16000  # every file is resampled to this rate
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    # Normalisation: (x - mean) / (2 * std). AudioSet's statistics by default; `asit stats DATA`
    # prints a data set's own.
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD

    def __post_init__(self):
        for name in ("sample_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms", "std"):
            if getattr(self, name) <= 0:
                raise ValueError(f"frontend.{name} must be positive, got {getattr(self, name)}")

    @property
    def window_samples(self) -> int:
        # Kaldi truncates to whole samples (C++ static_cast), and torchaudio with this very expression:
        # 275 samples at 11025 Hz, where rounding would give 276.
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def hop_samples(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    def frames_in(self, num_samples: int) -> int:
        """Frames kaldi's fbank makes from `num_samples` (snip_edges: only whole windows)."""
        window = self.window_samples
        return 0 if num_samples < window else 1 + (num_samples - window) // self.hop_samples


def fbank(wave: torch.Tensor, cfg: FrontEndConfig, subtract_mean: bool = True) -> torch.Tensor:
    """Log-mel filterbank of a mono waveform [S] in [-1, 1]: returns [num_mel_bins, frames], unnormalised.

    `torchaudio.compliance.kaldi.fbank` with AST's settings (hanning window, htk_compat, no energy, no
    dither), to the bit on the CPU, computed by `asit.batched_fbank.BatchedFbank`: torchaudio's function
    rebuilds its window and mel matrix on every call, which costs the loader more than the transform.
    `subtract_mean=False` skips the whole-clip DC removal, as `ASTFeatureExtractor` does. Kaldi removes
    each frame's DC anyway, so only float rounding differs (up to ~5e-4 in near-silent bands).
    """
    module = _fbank_module(cfg.sample_rate, cfg.num_mel_bins, cfg.frame_length_ms, cfg.frame_shift_ms, wave.device)
    return module(wave[None], subtract_mean)[0]


@functools.lru_cache(maxsize=8)
def _fbank_module(sample_rate: int, num_mel_bins: int, frame_length_ms: float, frame_shift_ms: float,
                  device: torch.device):
    from .batched_fbank import BatchedFbank  # it is built on FrontEndConfig, defined here

    # On the wave's device: the HEAR API computes features where the model is.
    return BatchedFbank(FrontEndConfig(sample_rate, num_mel_bins, frame_length_ms, frame_shift_ms)).to(device)


def normalise(spec: torch.Tensor, cfg: FrontEndConfig) -> torch.Tensor:
    # Dividing by 2 std (AST's choice) keeps most values within [-1, 1].
    return (spec - cfg.mean) / (2 * cfg.std)


def frontend_metadata(cfg: FrontEndConfig, num_frames: int) -> dict:
    """What a checkpoint must carry so that a model is always fed what it was trained on."""
    return {**dataclasses.asdict(cfg), "num_frames": num_frames}


def check_frontend(saved: dict, current: FrontEndConfig, source: str) -> None:
    """Refuse a checkpoint whose front end differs from the data config, saying what differs."""
    mine = dataclasses.asdict(current)
    diffs = [f"{k}: checkpoint {saved[k]!r} vs config {mine[k]!r}"
             for k in mine if k in saved and not _same(saved[k], mine[k])]
    if diffs:
        raise InputError(f"{source}: front end differs from the config: " + "; ".join(diffs))


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def clip_fbank(wave: torch.Tensor, cfg: FrontEndConfig) -> torch.Tensor:
    """`fbank` of a whole clip [S] -> [F, T]; a clip shorter than one window is zero-padded to one
    (kaldi refuses it) and so gives a single frame."""
    # As ASTFeatureExtractor, to the bit: a classifier exported to Hugging Face sees the same input.
    return fbank(torch.nn.functional.pad(wave, (0, max(0, cfg.window_samples - wave.shape[-1]))), cfg,
                 subtract_mean=False)


def fit_frames(spec: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[F, T] -> [F, num_frames]: zero-pad or cut at the end, in the log-mel domain (AST, ASTFeatureExtractor)."""
    return torch.nn.functional.pad(spec, (0, max(0, num_frames - spec.shape[1])))[:, :num_frames]


def clip_features(wave: torch.Tensor, cfg: FrontEndConfig, num_frames: int) -> torch.Tensor:
    """A classification clip [S] -> normalised features [F, num_frames], as `ASTFeatureExtractor`.

    The padding is log-mel 0 and is normalised with the rest, so it is not the data mean: this is what
    AST and Hugging Face feed their models, and what AST-family weights expect.
    """
    return normalise(fit_frames(clip_fbank(wave, cfg), num_frames), cfg)


def fbank_statistics(wave: torch.Tensor, cfg: FrontEndConfig, num_frames: int) -> torch.Tensor:
    """Hand-crafted clip features [2F]: the per-bin mean and std over time of the normalised fbank of
    the frames a model with `num_frames` reads (the first ones, no padding): the reference a learnt
    embedding of the same input should beat."""
    spec = normalise(clip_fbank(wave, cfg)[:, :num_frames], cfg)
    return torch.cat([spec.mean(dim=1), spec.std(dim=1, correction=0)])


def clip_windows(wave: torch.Tensor, cfg: FrontEndConfig, num_frames: int) -> torch.Tensor:
    """A clip of any length [S] -> normalised windows [W, F, num_frames] that cover it all.

    A clip that fits one window gives exactly `clip_features`. A longer one is cut into windows with a
    hop of half a window, plus one ending at the clip's end so that the tail is never dropped.
    """
    spec = clip_fbank(wave, cfg)  # [F, T]
    frames = spec.shape[1]
    if frames <= num_frames:
        return normalise(fit_frames(spec, num_frames), cfg)[None]
    hop = max(1, num_frames // 2)
    starts = list(range(0, frames - num_frames + 1, hop))
    if starts[-1] != frames - num_frames:
        starts.append(frames - num_frames)
    return normalise(torch.stack([spec[:, s:s + num_frames] for s in starts]), cfg)
