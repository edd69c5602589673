"""Checkpoints are data, never code: plain dicts of tensors and builtins, written atomically and read
with `weights_only=True`.

Two formats are written:
- `checkpoint.pt`, the whole training state (student, teacher, optimiser, scaler, loss centres, step,
  config, front end), from which a run resumes, and `checkpoint.prev.pt`, the one before it, from which
  it resumes when the newest cannot be read;
- `teacher_backbone.pt`, the teacher's backbone as a timm state dict plus what is needed to feed it
  (front end, grid, architecture), which fine-tuning consumes.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, MissingError, UserError

BACKBONE_FORMAT = "asit-backbone-v1"

log = logging.getLogger("asit")


def atomic_save(obj: Any, path: str | Path, keep_previous: bool = False) -> None:
    """Write to a temporary file in the same folder, then rename: a killed run never leaves half a file.

    `keep_previous`: the file replaced stays as `previous(path)`, so that a newest file that turns out
    unreadable has an older one to fall back on (`load_newest`). A failed write (a full disk, an I/O
    error) is a UserError, and leaves the files that were there as they were.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous(path))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports some failed writes as RuntimeErrors
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        free = shutil.disk_usage(next(p for p in path.parents if p.exists())).free
        raise UserError(f"could not save {path}: {reason}; {free:,} bytes free there, about {_nbytes(obj):,} "
                        f"bytes needed. The files already there are left as they were: free some space or "
                        f"write elsewhere, then run again") from e
    finally:
        tmp.unlink(missing_ok=True)


def _nbytes(obj: Any) -> int:
    """The bytes of the tensors in `obj`: what its file needs, give or take a little."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        obj = list(obj.values())
    return sum(map(_nbytes, obj)) if isinstance(obj, (list, tuple)) else 0


def previous(path: str | Path) -> Path:
    """Where `atomic_save(keep_previous=True)` keeps the file it replaced: checkpoint.pt -> checkpoint.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def load(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch cannot tell garbage from a pickle that would run code: both are refused unread.
        raise InputError(f"{path}: not a checkpoint of tensors and plain data (corrupt, or holding objects "
                         f"that could run code when loaded; asit reads with weights_only=True)") from None
    except (RuntimeError, EOFError, ValueError, IndexError) as e:
        raise InputError(f"{path}: cannot be read: truncated or corrupt ({e or 'no data'})") from None


def load_newest(path: str | Path) -> tuple[Any, Path] | None:
    """The checkpoint at `path` and where it was read, or None if there is none.

    If `path` cannot be read (a copy cut short, a disk fault), the older one that `atomic_save` kept
    is read instead, with a warning.
    """
    path = Path(path)
    found = [p for p in (path, previous(path)) if p.exists()]
    errors = []
    for candidate in found:
        try:
            return load(candidate), candidate
        except UserError as e:
            errors.append(str(e))
            if candidate != found[-1]:
                log.warning("%s; falling back on the previous checkpoint, %s", e, found[-1])
    if not found:
        return None
    raise InputError(f"no checkpoint to resume from can be read: {'; '.join(errors)}. Move "
                     f"{' and '.join(p.name for p in found)} out of {path.parent} to start afresh")


def backbone_checkpoint(backbone: torch.nn.Module, arch: str, patch_size: int | list[int], patch_stride: int | list[int],
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


def load_backbone(path: str | Path, network: str = "teacher") -> tuple[dict[str, torch.Tensor], dict]:
    """A ViT backbone's state dict from any file asit accepts, and what is known about it.

    Accepted: `teacher_backbone.pt`; an asit `checkpoint.pt` (its teacher is taken unless `network` is
    "student": the teacher is usually the better model, but after a short run it lags the student); a
    timm/DeiT-style state dict, bare or under "model"/"state_dict".
    The metadata dict may hold "frontend", "grid", "arch", "patch_size", "patch_stride".
    """
    if network not in ("teacher", "student"):
        raise ValueError(f"network: expected teacher or student, got {network!r}")
    obj = load(path)
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    pretraining = "teacher" in obj and isinstance(obj["teacher"], dict)
    if network == "student" and not pretraining:
        raise InputError(f"{path}: only a pretraining checkpoint.pt holds a student; point at one, or read "
                         f"the teacher")
    if obj.get("format") == BACKBONE_FORMAT:
        meta = {k: v for k, v in obj.items() if k not in ("model", "format")}
        return obj["model"], meta
    if pretraining:
        meta = {"frontend": obj.get("frontend"), "grid": obj.get("grid"), "arch": obj.get("arch"),
                "patch_size": obj.get("patch_size"),
                "patch_stride": obj.get("patch_size")}  # pretraining's patches never overlap
        return _strip(obj[network], "backbone."), meta
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise InputError(f"{path}: no tensors found; is this a ViT state dict?")
    return state, {}
