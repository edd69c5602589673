"""A small procedurally generated audio set, so that a run needs no data download.

The clips are written once into a cache folder as 16-bit WAV files and are then
read through the same loader as real data, so the whole input pipeline is
exercised. Each clip mixes 1-4 sound events on a low noise floor. Its label is
the kind of its primary event, which is always the loudest (at least 6 dB above
the others at peak), so the set doubles as a toy classification task.
"""

import csv
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

KINDS = ("tone", "chirp", "harmonic", "noise", "clicks")

# Part of the folder name: bump it whenever the generated audio changes, so a
# cache written by an older version is never mistaken for the current set.
VERSION = 1

# Written last, so its presence marks a complete set.
LABELS_FILE = "labels.csv"

PRIMARY_DBFS = (-12.0, -6.0)
BACKGROUND_DBFS = (-30.0, -18.0)
NOISE_FLOOR_DBFS = (-70.0, -55.0)
MIN_EVENT_SECONDS = 0.05
# Headroom so that the 16-bit files never clip.
MAX_PEAK = 0.9


def default_cache_dir() -> Path:
    """`$ASIT_CACHE_DIR` if set, else `~/.cache/asit`."""
    env = os.environ.get("ASIT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "asit"


def ensure_synthetic_dataset(
    root: Path | None = None,
    num_clips: int = 512,
    seconds: float = 2.0,
    sample_rate: int = 16000,
    seed: int = 0,
) -> Path:
    """The folder of the synthetic set (`clip_00000.wav`, ..., `labels.csv`), generated if missing.

    `labels.csv` (columns path, label) is readable by `asit.sources.list_audio`.
    Generation is atomic: the set is built in a private sibling folder and
    renamed into place, so a killed run never leaves a set that looks complete
    (at worst a hidden `.synthetic-*.tmp` folder, which is safe to delete).
    """
    if num_clips < 1 or seconds <= 0:
        raise ValueError(f"need num_clips >= 1 and seconds > 0, got {num_clips} and {seconds}")
    root = Path(root) if root is not None else default_cache_dir()
    name = f"synthetic-v{VERSION}-n{num_clips}-s{float(seconds)}-r{sample_rate}-seed{seed}"
    folder = root / name
    if _is_complete(folder):
        return folder
    # Unique per attempt: concurrent processes must not write into the same folder.
    staging = root / f".{name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir(parents=True)
    try:
        _write_dataset(staging, num_clips, round(seconds * sample_rate), sample_rate, seed)
        _publish(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def make_clip(seed: int, index: int, num_samples: int, sample_rate: int) -> tuple[np.ndarray, str]:
    """Clip `index` of the set as float32 samples, and its label.

    Seeded by (seed, index) alone, so a clip is the same whatever the set size.
    """
    rng = np.random.default_rng([seed, index])
    # Cycling the primary kind keeps the classes balanced at any set size.
    primary = KINDS[index % len(KINDS)]
    clip = rng.standard_normal(num_samples) * _amplitude(rng.uniform(*NOISE_FLOOR_DBFS))
    for _, onset, event in _events(rng, primary, num_samples, sample_rate):
        clip[onset : onset + len(event)] += event
    peak = np.abs(clip).max()
    if peak > MAX_PEAK:
        clip *= MAX_PEAK / peak
    return clip.astype(np.float32), primary


def _events(
    rng: np.random.Generator, primary: str, num_samples: int, sample_rate: int
) -> list[tuple[str, int, np.ndarray]]:
    """(kind, onset, samples) of the primary event followed by 0-3 quieter background events."""
    background = [KINDS[k] for k in rng.integers(len(KINDS), size=rng.integers(0, 4))]
    min_length = int(MIN_EVENT_SECONDS * sample_rate)
    events = []
    for kind in [primary, *background]:
        is_primary = not events
        level = rng.uniform(*(PRIMARY_DBFS if is_primary else BACKGROUND_DBFS))
        fraction = rng.uniform(0.5, 0.95) if is_primary else rng.uniform(0.1, 0.6)
        length = min(max(int(fraction * num_samples), min_length), num_samples)
        onset = int(rng.integers(0, num_samples - length + 1))
        event = _RENDERERS[kind](rng, length, sample_rate) * _envelope(rng, length, sample_rate)
        events.append((kind, onset, event * (_amplitude(level) / np.abs(event).max())))
    return events


def _is_complete(folder: Path) -> bool:
    return (folder / LABELS_FILE).is_file()


def _write_dataset(
    folder: Path, num_clips: int, num_samples: int, sample_rate: int, seed: int
) -> None:
    rows = []
    for index in range(num_clips):
        clip, label = make_clip(seed, index, num_samples, sample_rate)
        name = f"clip_{index:05d}.wav"
        sf.write(folder / name, clip, sample_rate, subtype="PCM_16")
        rows.append((name, label))
    with open(folder / LABELS_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)


def _publish(staging: Path, folder: Path) -> None:
    try:
        os.replace(staging, folder)
    except OSError:
        # Another process published first; its set is identical, so keep it.
        if not _is_complete(folder):
            raise


def _amplitude(dbfs: float) -> float:
    return 10.0 ** (dbfs / 20.0)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    # Pitch is perceived on a log scale: spread frequencies evenly across octaves.
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _phase(frequency: np.ndarray, sample_rate: int) -> np.ndarray:
    """Phase of a sinusoid whose instantaneous frequency (Hz) varies per sample."""
    return 2.0 * np.pi * np.cumsum(frequency) / sample_rate


def _raised_cosine(n: int) -> np.ndarray:
    """A smooth rise from 0 towards 1 over n samples."""
    return 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)


def _envelope(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    # Smooth attack and release: hard edges would add broadband clicks to every event.
    attack = max(1, min(int(rng.uniform(0.005, 0.05) * sample_rate), n // 4))
    release = max(1, int(rng.uniform(0.2, 0.6) * n))
    envelope = np.ones(n)
    envelope[:attack] = _raised_cosine(attack)
    envelope[n - release :] = _raised_cosine(release)[::-1]
    return envelope


def _tone(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    frequency = np.full(n, _log_uniform(rng, 100, min(4000, 0.45 * sample_rate)))
    if rng.random() < 0.5:  # slight vibrato, as in a sung or bowed note
        t = np.arange(n) / sample_rate
        depth, rate = rng.uniform(0.003, 0.02), rng.uniform(3, 8)
        frequency *= 1 + depth * np.sin(2 * np.pi * rate * t)
    return np.sin(_phase(frequency, sample_rate) + rng.uniform(0, 2 * np.pi))


def _chirp(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    top = min(6000, 0.45 * sample_rate)
    start, end = _log_uniform(rng, 100, top), _log_uniform(rng, 100, top)
    ramp = np.linspace(0, 1, n)
    if rng.random() < 0.5:
        frequency = start + (end - start) * ramp
    else:
        frequency = start * (end / start) ** ramp
    return np.sin(_phase(frequency, sample_rate))


def _harmonic(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """A voiced-like sound: a gliding fundamental with 3-10 harmonics of falling strength."""
    fundamental = _log_uniform(rng, 80, 800)
    frequency = fundamental * (1 + rng.uniform(-0.1, 0.1) * np.linspace(0, 1, n))
    harmonics = np.arange(1, rng.integers(3, 11) + 1)
    weights = harmonics ** -rng.uniform(0.7, 2.0)
    # Harmonics at or above Nyquist would alias back as inharmonic tones.
    weights[harmonics * frequency.max() >= 0.45 * sample_rate] = 0.0
    return weights @ np.sin(np.outer(harmonics, _phase(frequency, sample_rate)))


def _noise(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """White noise filtered to a band with a Gaussian shape in log frequency."""
    centre = _log_uniform(rng, 200, min(6000, 0.4 * sample_rate))
    width_octaves = rng.uniform(0.2, 1.5)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    octaves = np.log2(np.maximum(np.fft.rfftfreq(n, 1 / sample_rate), 1.0) / centre)
    spectrum *= np.exp(-0.5 * (octaves / width_octaves) ** 2)
    return np.fft.irfft(spectrum, n)


def _clicks(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """A train of short damped resonances at a random rate, slightly irregular."""
    count = max(1, round(n * _log_uniform(rng, 2, 40) / sample_rate))
    spacing = n / count
    # Centred in their slots and jittered by at most 10% of the spacing, so that
    # every click lies well inside the event rather than in its silent edges.
    times = (np.arange(count) + 0.5 + rng.uniform(-0.1, 0.1, size=count)) * spacing
    train = np.zeros(n)
    train[times.astype(int)] = rng.uniform(0.6, 1.0, size=count)
    decay = rng.uniform(0.0005, 0.003) * sample_rate  # in samples
    resonance = _log_uniform(rng, 1000, 0.4 * sample_rate)
    k = np.arange(int(6 * decay) + 1)
    click = np.exp(-k / decay) * np.sin(2 * np.pi * resonance * k / sample_rate)
    return np.convolve(train, click)[:n]


_RENDERERS = {
    "tone": _tone,
    "chirp": _chirp,
    "harmonic": _harmonic,
    "noise": _noise,
    "clicks": _clicks,
}
