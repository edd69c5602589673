"""X-ARES (`python -m xares.run`) on machines X-ARES 0.1.3 does not run on as it is: without FFmpeg,
or without a GPU.

    ASIT_CKPT=runs/pretrain-tiny/teacher_backbone.pt python -m asit.xares_run asit/hear.py TASK.py...

It takes `xares.run`'s arguments and runs `xares.run.main` with two differences:
- audio is decoded by soundfile (libsndfile: WAV, FLAC, Ogg, MP3), not `torchaudio.load`, which in
  torchaudio 2.9 needs torchcodec and FFmpeg; without them X-ARES's loader skips every clip with a warning
  and stops at "Empty dataloader";
- `--max-jobs` is 0 (one process) by default where no GPU is visible: X-ARES spreads its jobs over the
  GPUs and divides by their count.
"""

from __future__ import annotations

import argparse
import io
import sys

import soundfile as sf
import torch

AUDIO = ("wav", "flac", "ogg", "mp3")  # what X-ARES's tars hold that libsndfile reads


def soundfile_audio(key: str, data: bytes) -> tuple[torch.Tensor, int] | None:
    """webdataset's decoder contract, as its `torch_audio`: the sample named `key` (an extension) ->
    (waveform [channels, samples] float32, sample rate), or None for a key that is not audio."""
    if key.rsplit(".", 1)[-1].lower() not in AUDIO:
        return None
    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return torch.from_numpy(audio.T.copy()), rate


def use_soundfile() -> None:
    """Make webdataset's audio decoder soundfile's: X-ARES's loader looks it up when it builds a pipeline."""
    try:
        import webdataset
    except ImportError:
        return
    webdataset.torch_audio = soundfile_audio


# At import, not in main: with a GPU, X-ARES runs its jobs in spawned processes, which import this module
# (the launcher's main module) afresh but never call main.
use_soundfile()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m asit.xares_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoder_py", help="the encoder file, e.g. asit/hear.py (checkpoint from $ASIT_CKPT)")
    parser.add_argument("tasks_py", nargs="+", help="X-ARES task files, e.g. src/tasks/esc50_task.py")
    parser.add_argument("--max-jobs", type=int, default=1 if torch.cuda.is_available() else 0,
                        help="concurrent tasks, one per GPU (default: 1 with a GPU, 0 = one process without)")
    parser.add_argument("--from-stage", type=int, default=0, help="first stage: 0 download, 1 encode, 2 score")
    parser.add_argument("--to-stage", type=int, default=2, help="last stage")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    try:
        from xares import run
    except ImportError as err:
        raise SystemExit(f"X-ARES is not installed ({err}): pip install -e \".[xares]\"") from None
    run.main(args)


if __name__ == "__main__":
    sys.exit(main())
