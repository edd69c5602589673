"""A small X-ARES task on local real audio, for scripts/hear_check.sh: the Speech Commands sample
(30 words, 16 kHz), split 60 / 20 / 20 by speaker as scripts/hear_tasks.py splits it.

Build its audio tars once (X-ARES's own writer; the task is `private`, so X-ARES downloads nothing):

    python scripts/xares_commands_task.py ../shared/data/speech_commands_sample runs/hear-check/xares

then run it (the task reads $ASIT_XARES_ENV, the folder above):

    ASIT_XARES_ENV=runs/hear-check/xares ASIT_CKPT=... python -m asit.xares_run asit/hear.py scripts/xares_commands_task.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from xares.task import TaskConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hear_tasks import SPLITS, split_of  # noqa: E402  (the same speaker split as the HEAR tasks)

NAME = "commands"


def words(source: Path) -> list[str]:
    return sorted(p.name for p in source.iterdir() if p.is_dir())


def commands_config(encoder) -> TaskConfig:
    env = Path(os.environ.get("ASIT_XARES_ENV", "runs/hear-check/xares"))
    labels = (env / NAME / "labels.txt").read_text().split()
    index = {word: i for i, word in enumerate(labels)}
    return TaskConfig(encoder=encoder, name=NAME, env_root=str(env), private=True, output_dim=len(labels),
                      label_processor=lambda x: index[x["label"]], train_split="train", valid_split="valid",
                      test_split="test", epochs=10, batch_size_train=32, num_encoder_workers=0)


def build(source: Path, env: Path) -> None:
    from xares.audiowebdataset import write_audio_tar

    clips = sorted(source.glob("*/*.wav"))
    if not clips:
        raise SystemExit(f"no WAV files under {source}/<word>/: point at the Speech Commands sample")
    out = env / NAME
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        chosen = [p for p in clips if split_of(p.stem.split("_nohash_")[0]) == split]
        write_audio_tar([str(p) for p in chosen], [p.parent.name for p in chosen], str(out / f"{split}-*.tar"),
                        num_shards=1, force=True)
    (out / "labels.txt").write_text("\n".join(words(source)) + "\n")
    (out / ".audio_tar_ready").touch()  # X-ARES's sign that the audio is in place
    print(f"X-ARES task {NAME} in {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    build(Path(sys.argv[1]), Path(sys.argv[2]))
