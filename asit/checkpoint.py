"""Checkpoints are data, never code: plain dicts of tensors and builtins, written atomically and read
with `weights_only=True`.

Two formats are written:
- `checkpoint.pt`, the whole training state (student, teacher, optimiser, scaler, loss centres, step,
  config, front end), from which a run resumes;
- `teacher_backbone.pt`, the teacher's backbone as a timm state dict plus what is needed to feed it
  (front end, grid, architecture), which fine-tuning consumes.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

BACKBONE_FORMAT = "asit-backbone-v1"


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a checkpoint that can be read safely (weights_only=True): {e}") from None


def backbone_checkpoint(backbone: torch.nn.Module, arch: str, patch_size: int, patch_stride: int,
                        grid: tuple[int, int], frontend: dict) -> dict:
    return {
        "format": BACKBONE_FORMAT,
        "model": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "arch": arch,
        "patch_size": patch_size,
        "patch_stride": patch_stride,
        "grid": list(grid),
        "frontend": frontend,
    }


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_backbone(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A ViT backbone's state dict from any file asit accepts, and what is known about it.

    Accepted: `teacher_backbone.pt`; an asit `checkpoint.pt` (its teacher is taken, not the student:
    the teacher is the better model); a timm/DeiT-style state dict, bare or under "model"/"state_dict".
    The metadata dict may hold "frontend", "grid", "arch", "patch_size", "patch_stride".
    """
    obj = load(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    if obj.get("format") == BACKBONE_FORMAT:
        meta = {k: v for k, v in obj.items() if k not in ("model", "format")}
        return obj["model"], meta
    if "teacher" in obj and isinstance(obj["teacher"], dict):
        meta = {"frontend": obj.get("frontend"), "grid": obj.get("grid"), "arch": obj.get("arch"),
                "patch_size": obj.get("patch_size"),
                "patch_stride": obj.get("patch_size")}  # pretraining's patches never overlap
        return _strip(obj["teacher"], "backbone."), meta
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{path}: no tensors found; is this a ViT state dict?")
    return state, {}
