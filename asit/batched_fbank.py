"""Batched, device-agnostic Kaldi log-mel fbank: `asit.features.fbank` for a whole batch in one call.

`BatchedFbank(cfg)(waves [B, S]) -> [B, num_mel_bins, frames]` is the unnormalised log-mel that
`asit.features.fbank(waves[i], cfg)` gives for each row, i.e. `torchaudio.compliance.kaldi.fbank` with
AST's settings: optional whole-clip DC removal, snip_edges framing, per-frame DC removal, pre-emphasis
0.97, Kaldi's "hanning" window, zero padding to a power of two, power spectrum, Kaldi's mel banks
(low_freq 20 Hz, high_freq Nyquist) and a log floored at float32's epsilon. The window and the mel matrix
are built once, as buffers, so `.to(device)` moves them and the batch runs wherever the model does.

Tolerance against torchaudio's kaldi.fbank, in the log domain: on the CPU the same float32 operations
run in the same order, so the output is bit-identical (max error 0.0 on noise, a 50 Hz-7.9 kHz sweep,
1e-4-amplitude noise whose low bands sit on the epsilon floor, and 50 FSDD recordings; torch 2.9); the
tests assert 1e-4. Where rounding differs by an ulp (cuFFT, other kernels) the log magnifies it only in
bands far below the frame's loudest, which hold float32 rounding noise: perturbing the window by one
ulp moves bands within 60 dB of the frame's peak by <= 1e-4, speech by up to 1e-3 and a pure sweep's
bands 100+ dB down by up to 1.4e-2. On CUDA, float32 matmuls must stay exact: with TF32 enabled
(`torch.backends.cuda.matmul.allow_tf32`) the mel projection errs by up to 8e-4 (emulated).

Not included: dither (the front end uses none), the energy coefficient (use_energy=False), VTLN, window
types other than hanning, and resampling, which stays a separate step before this one.
"""

from __future__ import annotations

import math

import torch

from asit.features import FrontEndConfig

# Kaldi floors the mel energies at float32's epsilon whatever the compute dtype.
_EPSILON = torch.finfo(torch.float32).eps
_PREEMPHASIS = 0.97
_LOW_FREQ = 20.0
_CPU_FRAMES = 1024  # frames per slice on the CPU, see forward


def _mel(freq):
    return 1127.0 * math.log(1.0 + freq / 700.0)


def kaldi_mel_banks(num_bins: int, n_fft: int, sample_rate: float) -> torch.Tensor:
    """Kaldi's triangular mel filters as a [n_fft // 2 + 1, num_bins] matrix (the Nyquist bin weighs 0).

    Built in float32 with Kaldi's formulas in torchaudio's order: Kaldi computes them in float too, and
    these are then torchaudio's weights to the bit (a float64 build differs by up to 1.4e-5).
    """
    mel_low, mel_high = _mel(_LOW_FREQ), _mel(0.5 * sample_rate)
    delta = (mel_high - mel_low) / (num_bins + 1)  # +1: the outer triangles spread past the band edges
    bins = torch.arange(num_bins, dtype=torch.float32)[:, None]
    left, center, right = (mel_low + (bins + k) * delta for k in (0.0, 1.0, 2.0))
    # The triangles are linear in mel, not in Hz.
    freq = sample_rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float32)
    mel = 1127.0 * (1.0 + freq / 700.0).log()
    banks = torch.minimum((mel - left) / (center - left), (right - mel) / (right - center)).clamp_min(0.0)
    return torch.nn.functional.pad(banks, (0, 1)).T


class BatchedFbank(torch.nn.Module):
    """`asit.features.fbank` over a batch [B, S] -> [B, num_mel_bins, frames], on the input's device."""

    def __init__(self, cfg: FrontEndConfig):
        super().__init__()
        self.window_size, self.hop = cfg.window_samples, cfg.hop_samples
        self.n_fft = 1 << (self.window_size - 1).bit_length()
        # Kaldi's "hanning" is the symmetric Hann window. Not persistent: derived from cfg, so checkpoints
        # holding a model with this module carry no copy of them.
        window = torch.hann_window(self.window_size, periodic=False, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)
        mel = kaldi_mel_banks(cfg.num_mel_bins, self.n_fft, cfg.sample_rate)
        self.register_buffer("mel", mel.contiguous(), persistent=False)

    def forward(self, waves: torch.Tensor, subtract_mean: bool = True) -> torch.Tensor:
        """[B, S] waveforms in [-1, 1] -> [B, num_mel_bins, frames] log-mel, unnormalised.

        `subtract_mean` removes each clip's DC first, as `asit.features.fbank`.
        """
        if waves.shape[-1] < self.window_size:
            raise ValueError(f"clips of {waves.shape[-1]} samples are shorter than one window ({self.window_size})")
        # Autocast off and the buffers' dtype (float32 unless moved): a bf16 mel projection rounds powers
        # and weights to 8 significant bits, up to 4e-2 off in the log (measured), noise Kaldi's features
        # never had and checkpoints were not trained on.
        with torch.autocast(waves.device.type, enabled=False):
            x = waves.to(self.window.dtype)
            if subtract_mean:
                x = x - x.mean(dim=-1, keepdim=True)
            if x.device.type != "cpu":
                return self._log_mel(x)
            # On the CPU, freshly mapped memory for a whole batch's intermediates costs more than the
            # arithmetic (a whole batch of 6 s clips in one go is slower than a per-clip loop); slices of ~1k
            # frames stay in the allocator's reused memory and the cache.
            frames = 1 + (x.shape[-1] - self.window_size) // self.hop
            return torch.cat([self._log_mel(rows) for rows in x.split(max(1, _CPU_FRAMES // frames))])

    def _log_mel(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.unfold(-1, self.window_size, self.hop)  # [B, T, W] view, snip_edges: whole windows only
        frames = frames - frames.mean(dim=-1, keepdim=True)
        # Pre-emphasis written into the FFT's zero-padded buffer; the first sample is its own predecessor,
        # as in Kaldi. The same float ops as torchaudio, so on the CPU the result is its to the bit.
        emph = torch.nn.functional.pad(frames, (0, self.n_fft - self.window_size))
        emph[..., 1:self.window_size] -= _PREEMPHASIS * frames[..., :-1]
        emph[..., 0] -= _PREEMPHASIS * frames[..., 0]
        emph[..., :self.window_size] *= self.window
        power = torch.fft.rfft(emph).abs().pow_(2)
        return (power @ self.mel).clamp_min_(_EPSILON).log_().transpose(1, 2)
