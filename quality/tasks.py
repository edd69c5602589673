"""The development benchmark's data, built from the project's shared audio as CSVs.

Three speaker-disjoint tasks and one unlabelled pretraining set. Every evaluation CSV has a `group`
column (the speaker, or a stretch of one recording) that the linear probe's cross-validation keeps
together, so the probe's regularisation is chosen on voices or stretches it did not fit.

- fsdd: spoken digits (10 classes), FSDD with one speaker held out (every take of it is test; the
  other five speakers train). The held-out speaker is never heard in pretraining.
- hyke: speaker identification (83 classes), the Hyke corpus' own protocol: line 1 of every speaker
  trains, lines 2-5 test, all cut into crops of the model's window. Lines 2-5 are never heard in
  pretraining.
- commands: keyword spotting (30 words), the Speech Commands sample, 5-fold cross-validation with the
  folds split by speaker. Its 300 clips are also in the pretraining set (unlabelled): a user pretrains
  on their own domain's audio; the other two tasks are strictly held out.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from asit.sources import AudioItem, list_audio, write_csv
from finetune.data import fsdd_name

REPO = Path(__file__).resolve().parents[1]
FSDD_HELD_OUT = "george"
CROP_SECONDS = 1.0  # the tiny model's window: a crop is one clip the model reads whole
PRETRAIN_CHUNK_SECONDS = 3.0  # Hyke line 1 as pretraining clips: room for two random 1 s views
MAX_TEST_CROPS = 10  # per Hyke test file, evenly spaced: lines 2-5 hold 3900 s in all
HYKE_GROUP_CROPS = 8  # the probe's cross-validation holds out stretches of 8 consecutive seconds
COMMANDS_FOLDS = 5


@dataclass(frozen=True)
class Task:
    name: str
    what: str
    classes: int
    overrides: tuple[str, ...]  # data.* settings of the probe run (configs/quality/probe.yaml)


def data_root() -> Path:
    return Path(os.environ.get("DATA", REPO.parent / "shared" / "data"))


def commands_speaker(path: str) -> str:
    """The speaker of a Speech Commands clip, `<speaker>_nohash_<n>.wav`."""
    return Path(path).stem.split("_nohash_")[0]


def write_crops(source: Path, out_dir: Path, seconds: float, limit: int | None = None) -> list[Path]:
    """Non-overlapping crops of `seconds` of one file, written as WAVs at its own rate (once).

    With `limit`, at most that many crops, evenly spaced over the file.
    """
    info = sf.info(str(source))
    length = round(seconds * info.samplerate)
    count = info.frames // length
    starts = np.arange(count) * length
    if limit and count > limit:
        starts = starts[np.linspace(0, count - 1, limit).round().astype(int)]
    paths = []
    for start in starts:
        path = out_dir / f"{source.stem}_{start // info.samplerate:04d}s_{seconds:g}.wav"
        if not path.exists():
            audio, rate = sf.read(str(source), start=int(start), frames=length, dtype="int16")
            out_dir.mkdir(parents=True, exist_ok=True)
            sf.write(str(path.with_suffix(".tmp.wav")), audio, rate, subtype="PCM_16")
            os.replace(path.with_suffix(".tmp.wav"), path)
        paths.append(path)
    return paths


def hyke_files() -> list[tuple[str, int, Path]]:
    """(speaker, line, path) of every Hyke recording."""
    rows = []
    for path in sorted((data_root() / "hyke_speaker_id").glob("*_audio/*/*.wav")):
        speaker, line = path.stem.rsplit("_", 1)
        rows.append((speaker, int(line), path))
    if not rows:
        raise FileNotFoundError(f"no Hyke recordings under {data_root() / 'hyke_speaker_id'}")
    return rows


def build(out: Path) -> tuple[Path, list[Task]]:
    """Write the pretraining CSV and every task's CSVs under `out`; returns (pretrain.csv, tasks)."""
    root = data_root()
    crops = out / "crops"

    fsdd = list_audio(root / "fsdd" / "recordings")
    fsdd_train, fsdd_test = [], []
    for item in fsdd:
        digit, speaker, _ = fsdd_name(item.path)
        labelled = AudioItem(item.path, (digit,), group=speaker)
        (fsdd_test if speaker == FSDD_HELD_OUT else fsdd_train).append(labelled)

    hyke_train, hyke_test, hyke_pretrain = [], [], []
    for speaker, line, path in hyke_files():
        if line == 1:
            for i, crop in enumerate(write_crops(path, crops / "hyke", CROP_SECONDS)):
                hyke_train.append(AudioItem(str(crop), (speaker,), group=f"{speaker}:{i // HYKE_GROUP_CROPS}"))
            hyke_pretrain += [AudioItem(str(p)) for p in write_crops(path, crops / "hyke_pretrain",
                                                                    PRETRAIN_CHUNK_SECONDS)]
        else:
            hyke_test += [AudioItem(str(p), (speaker,), group=speaker)
                          for p in write_crops(path, crops / "hyke", CROP_SECONDS, MAX_TEST_CROPS)]

    commands = []
    for item in list_audio(root / "speech_commands_sample"):
        speaker = commands_speaker(item.path)
        fold = int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % COMMANDS_FOLDS
        commands.append(AudioItem(item.path, (Path(item.path).parent.name,), fold=str(fold), group=speaker))

    csvs = {"fsdd_train": fsdd_train, "fsdd_test": fsdd_test, "hyke_train": hyke_train,
            "hyke_test": hyke_test, "commands": commands,
            "pretrain": [AudioItem(i.path) for i in fsdd_train + commands] + hyke_pretrain}
    for name, items in csvs.items():
        write_csv(items, out / f"{name}.csv")
    tasks = [
        Task("fsdd", f"spoken digits, speaker {FSDD_HELD_OUT} held out", 10,
             (f"data.train={out / 'fsdd_train.csv'}", f"data.test={out / 'fsdd_test.csv'}")),
        Task("hyke", "speaker identification, line 1 trains, lines 2-5 test", 83,
             (f"data.train={out / 'hyke_train.csv'}", f"data.test={out / 'hyke_test.csv'}")),
        Task("commands", f"30 keywords, {COMMANDS_FOLDS}-fold CV over speakers", 30,
             (f"data.train={out / 'commands.csv'}", "data.cv=true")),
    ]
    return out / "pretrain.csv", tasks
