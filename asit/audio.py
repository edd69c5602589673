"""Reading audio files into mono float waveforms at a fixed sample rate."""

import functools
import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from .errors import InputError

# Peak below about -100 dBFS: nothing but dither or digital silence, which would
# normalise to a spectrogram of pure noise and teach the model nothing.
SILENCE_PEAK = 1e-5


class AudioError(InputError):
    """A file that cannot be used as training audio; the message starts with its path."""


def load_audio(path, sample_rate: int) -> torch.Tensor:
    """Read `path` as a 1-D float32 waveform in [-1, 1] at `sample_rate`.

    Channels are averaged to mono. The DC offset is kept: the spectrogram
    front end removes it, so doing it here too would be wasted work.
    """
    path = str(path)
    if "::" in path and path.rpartition("::")[0].endswith(".tar"):
        # A clip inside a tar shard ("<shard>.tar::<member>", asit.shards): its bytes, decoded and
        # checked below exactly as a file's.
        from .shards import read_member

        samples, file_rate = _read(path, io.BytesIO(read_member(path)))
    else:
        if not Path(path).is_file():
            raise AudioError(f"{path}: file not found")
        samples, file_rate = _read(path)
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    wave = torch.from_numpy(samples.mean(axis=1, dtype=np.float32))
    # Checked after the mix-down: channels in antiphase cancel to silence.
    peak = wave.abs().max().item()
    if peak < SILENCE_PEAK:
        raise AudioError(f"{path}: silent audio (peak {peak:.1e} < {SILENCE_PEAK:.0e})")
    if file_rate != sample_rate:
        wave = _resampler(file_rate, sample_rate)(wave)
    # Float files may exceed full scale and resampling can overshoot it slightly.
    return wave.clamp_(-1.0, 1.0)


@functools.lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    # Building the windowed-sinc kernel costs far more than filtering a short clip with it: build it once per
    # pair of rates (torchaudio.functional.resample rebuilds it on every call).
    return torchaudio.transforms.Resample(orig, new)


def _read(path: str, data=None) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 samples and the sample rate of the file `path`, or of the encoded
    `data` (a file object) that `path` names."""
    try:
        return sf.read(path if data is None else data, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        reason = getattr(err, "error_string", None) or str(err)
        raise AudioError(f"{path}: cannot decode audio ({reason})") from err
