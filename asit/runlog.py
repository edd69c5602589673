"""What a run leaves to read: `log.jsonl` (one JSON object per logged step) and tensorboard events."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class RunLog:
    """Rank 0 writes; other ranks get a RunLog with `enabled=False` that does nothing."""

    def __init__(self, output_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only where it is used

            self.dir = Path(output_dir)
            self.dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.dir / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def spectrograms(self, step: int, images: dict[str, torch.Tensor]) -> None:
        """[F, T] spectrograms as images, low frequencies at the bottom as people read them."""
        if not self.enabled:
            return
        for name, spec in images.items():
            spec = spec.detach().float().cpu().flip(0)
            spec = (spec - spec.min()) / (spec.max() - spec.min()).clamp_min(1e-6)
            self.writer.add_image(name, spec[None], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
