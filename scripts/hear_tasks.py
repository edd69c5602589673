"""Two small tasks in the HEAR 2021 layout, built from the Speech Commands sample (16 kHz, real speech),
for scripts/hear_check.sh:

- commands-scene: one word per clip, 30 classes (a scene task: `get_scene_embeddings`);
- commands-event: 4 s clips of three words in silence, each word an event with its onset and offset in
  ms (an event task: `get_timestamp_embeddings`, labels looked up at every timestamp).

Splits are by speaker (a speaker's clips all in one of train / valid / test), as HEAR's own tasks keep
them. Layout (what heareval's embedding runner reads):

    OUT/<task>/task_metadata.json, labelvocabulary.csv, {train,valid,test}.json
    OUT/<task>/16000/{train,valid,test}/*.wav

    python scripts/hear_tasks.py ../shared/data/speech_commands_sample runs/hear-check/tasks
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000
SPLITS = ("train", "valid", "test")
EVENT_SECONDS = 4.0
WORDS_PER_EVENT_CLIP = 3


def split_of(speaker: str) -> str:
    """60 / 20 / 20 by a hash of the speaker: stable across runs and machines."""
    bucket = int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 5
    return SPLITS[0] if bucket < 3 else SPLITS[bucket - 2]


def write_task(root: Path, name: str, embedding_type: str, prediction_type: str, duration: float | None,
               labels: list[str], splits: dict[str, dict[str, list]]) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    metadata = {"task_name": name, "version": "asit-check", "embedding_type": embedding_type,
                "prediction_type": prediction_type, "split_mode": "trainvaltest", "sample_duration": duration,
                "evaluation": ["top1_acc"] if embedding_type == "scene" else ["event_onset_200ms_fms"],
                "splits": list(SPLITS), "default_mode": "full", "mode": "full"}
    (root / name / "task_metadata.json").write_text(json.dumps(metadata, indent=2))
    (root / name / "labelvocabulary.csv").write_text(
        "idx,label\n" + "".join(f"{i},{label}\n" for i, label in enumerate(labels)))
    for split, data in splits.items():
        (root / name / f"{split}.json").write_text(json.dumps(data, indent=2))


def main(source: Path, out: Path) -> None:
    clips = sorted(source.glob("*/*.wav"))
    if not clips:
        raise SystemExit(f"no WAV files under {source}/<word>/: point at the Speech Commands sample")
    words = sorted({p.parent.name for p in clips})
    scene: dict[str, dict[str, list]] = {s: {} for s in SPLITS}
    by_split: dict[str, list[tuple[str, np.ndarray]]] = {s: [] for s in SPLITS}
    for path in clips:
        audio, rate = sf.read(str(path), dtype="float32")
        if rate != RATE:
            raise SystemExit(f"{path}: {rate} Hz, expected {RATE}")
        split = split_of(path.stem.split("_nohash_")[0])
        name = f"{path.parent.name}_{path.name}"
        wav = out / "commands-scene" / str(RATE) / split / name
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(wav), np.pad(audio, (0, max(0, RATE - len(audio)))), RATE)  # 1 s, as sample_duration says
        scene[split][name] = [path.parent.name]
        by_split[split].append((path.parent.name, audio))
    write_task(out, "commands-scene", "scene", "multiclass", 1.0, words, scene)

    event: dict[str, dict[str, list]] = {s: {} for s in SPLITS}
    length = int(EVENT_SECONDS * RATE)
    for split, items in by_split.items():
        for n in range(len(items) // WORDS_PER_EVENT_CLIP):
            clip = np.zeros(length, dtype=np.float32)
            events = []
            for k, (word, audio) in enumerate(items[n * WORDS_PER_EVENT_CLIP:(n + 1) * WORDS_PER_EVENT_CLIP]):
                start = int((0.2 + 1.25 * k) * RATE)  # 1.25 s apart: words of up to 1 s never overlap
                clip[start:start + len(audio)] = audio
                events.append({"label": word, "start": 1000 * start / RATE,
                               "end": 1000 * (start + len(audio)) / RATE})
            name = f"{split}_{n:03d}.wav"
            wav = out / "commands-event" / str(RATE) / split / name
            wav.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(wav), clip, RATE)
            event[split][name] = events
    write_task(out, "commands-event", "event", "multilabel", EVENT_SECONDS, words, event)
    print(f"HEAR tasks in {out}: commands-scene ({sum(len(s) for s in scene.values())} clips), "
          f"commands-event ({sum(len(s) for s in event.values())} clips)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
