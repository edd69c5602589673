"""Labelled clips for fine-tuning: label vocabulary and task, splits (given, k-fold, FSDD), the dataset
and the training sampler.

Targets are always [C] float rows, one-hot for single-label data and multi-hot for tags: mixup, both
losses and both metric families read the same thing.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from asit.audio import load_audio
from asit.distributed import Dist
from asit.errors import InputError
from asit.features import FrontEndConfig, clip_features, fbank_statistics
from asit.sources import AudioItem, list_audio

from .config import DataConfig


@dataclass(frozen=True)
class Labels:
    keys: tuple[str, ...]  # as the data writes them (AudioSet mids in AST manifests)
    names: tuple[str, ...]  # for people: display names where a class_labels csv gives them
    multilabel: bool

    def __len__(self) -> int:
        return len(self.keys)

    def targets(self, items: list[AudioItem]) -> torch.Tensor:
        """[N, C] float one-/multi-hot rows; a label outside the vocabulary is an error naming the file."""
        index = {k: i for i, k in enumerate(self.keys)}
        out = torch.zeros(len(items), len(self.keys))
        for row, item in enumerate(items):
            if not self.multilabel and len(item.labels) != 1:
                raise InputError(f"{item.path}: single-label task, but the clip has labels {list(item.labels)}")
            for label in item.labels:
                if label not in index:
                    raise InputError(f"{item.path}: label {label!r} is not in the vocabulary "
                                     f"({len(self.keys)} classes, from the training set or data.class_labels)")
                out[row, index[label]] = 1.0
        return out


def read_class_labels(path: str | Path) -> tuple[list[str], list[str]]:
    """AST's class_labels_indices.csv -> (mids, display names), in index order."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f, skipinitialspace=True))
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise InputError(f"{path}: expected the columns index, mid, display_name")
    rows.sort(key=lambda r: int(r["index"]))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        raise InputError(f"{path}: the index column must run 0, 1, ..., {len(rows) - 1}")
    return [r["mid"] for r in rows], [r["display_name"] for r in rows]


def build_labels(train: list[AudioItem], cfg: DataConfig) -> Labels:
    if cfg.class_labels:
        keys, names = read_class_labels(cfg.class_labels)
    else:
        keys = sorted({label for item in train for label in item.labels})
        names = keys
    if not keys:
        raise InputError(f"{cfg.train}: the training clips have no labels (for a folder per class, set "
                         f"data.labels_from_folders=true)")
    multilabel = (cfg.task == "multi" or
                  (cfg.task == "auto" and any(len(item.labels) != 1 for item in train)))
    return Labels(tuple(keys), tuple(names), multilabel)


# ---- splits -------------------------------------------------------------------------------------
@dataclass
class Split:
    name: str  # "" for a single run, "fold_<k>" in cross-validation
    train: list[AudioItem]
    val: list[AudioItem] | None
    test: list[AudioItem] | None


FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)$")


def fsdd_name(path: str | Path) -> tuple[str, str, int] | None:
    """(digit, speaker, take) of a Free Spoken Digit Dataset file, `{digit}_{speaker}_{take}.wav`, or None."""
    match = FSDD_NAME.match(Path(path).stem)
    return (match[1], match[2], int(match[3])) if match else None


def fsdd_split(folder: str | Path, spec: str) -> tuple[list[AudioItem], list[AudioItem], list[AudioItem]]:
    """(train, val, test) of the Free Spoken Digit Dataset; see DataConfig.fsdd_split for the rules."""
    if spec != "official" and not spec.startswith("speaker:"):
        raise InputError(f"data.fsdd_split: expected official or speaker:<name>, got {spec!r}")
    held_out = spec.removeprefix("speaker:") if spec != "official" else None
    parts: dict[str, list[AudioItem]] = {"train": [], "val": [], "test": []}
    speakers = set()
    for item in list_audio(folder):
        name = fsdd_name(item.path)
        if name is None:
            raise InputError(f"{item.path}: not an FSDD file name ({{digit}}_{{speaker}}_{{index}}.wav)")
        digit, speaker, take = name
        speakers.add(speaker)
        if held_out is None:
            part = "test" if take < 5 else "val" if take < 10 else "train"
        else:
            part = "test" if speaker == held_out else "val" if take < 5 else "train"
        parts[part].append(AudioItem(item.path, (digit,), group=speaker))
    if held_out is not None and held_out not in speakers:
        raise InputError(f"data.fsdd_split: no speaker {held_out!r} in {folder} "
                         f"(speakers: {', '.join(sorted(speakers))})")
    return parts["train"], parts["val"], parts["test"]


def make_splits(cfg: DataConfig) -> list[Split]:
    """One split, or one per held-out fold in cross-validation."""
    if cfg.fsdd_split:
        return [Split("", *fsdd_split(cfg.train, cfg.fsdd_split))]
    train = list_audio(cfg.train, cfg.labels_from_folders)
    val = list_audio(cfg.val, cfg.labels_from_folders) if cfg.val else None
    test = list_audio(cfg.test, cfg.labels_from_folders) if cfg.test else None
    if not cfg.cv:
        return [Split("", train, val, test)]
    unfolded = [item.path for item in train if item.fold is None]
    if unfolded:
        raise InputError(f"data.cv needs a fold for every clip of {cfg.train}; {unfolded[0]} has none")
    present = sorted({item.fold for item in train}, key=_natural)
    folds = [str(f) for f in cfg.folds] if cfg.folds else present
    missing = sorted(set(folds) - set(present))
    if missing:
        raise InputError(f"data.folds: fold {missing[0]} does not occur in {cfg.train} (folds: {', '.join(present)})")
    if len(present) < 2:
        raise InputError(f"data.cv needs at least two folds in {cfg.train}, found {present}")
    return [Split(f"fold_{f}", [i for i in train if i.fold != f], [i for i in train if i.fold == f], test)
            for f in folds]


def _natural(fold: str):
    return (0, int(fold), "") if fold.isdigit() else (1, 0, fold)


# ---- clips --------------------------------------------------------------------------------------
class ClipDataset(Dataset):
    """Whole clips as AST feeds them: [1, F, num_frames] normalised fbank, cut or zero-padded.

    The features of a clip never change (augmentation happens on the batch), so a small set can compute
    them once (`cache`) instead of reading and resampling every file every epoch.
    """

    def __init__(self, items: list[AudioItem], targets: torch.Tensor, frontend: FrontEndConfig, num_frames: int):
        self.items, self.targets = items, targets
        self.frontend, self.num_frames = frontend, num_frames
        self.cached: torch.Tensor | None = None  # [N, 1, F, T]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        if self.cached is not None:
            x = self.cached[index]
        else:
            # An unreadable file raises AudioError naming it: a labelled set with holes gives wrong scores.
            wave = load_audio(self.items[index].path, self.frontend.sample_rate)
            x = self.features(wave)
        return {"x": x, "y": self.targets[index], "index": index}

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        return clip_features(wave, self.frontend, self.num_frames)[None]

    def cache(self, env: Dist, batch_size: int, num_workers: int) -> None:
        """Compute every clip's features once (each process a share) and serve them from memory."""
        self.cached = collect(lambda x: {"x": x}, self, env, batch_size, num_workers)["x"]


class FbankStatistics(ClipDataset):
    """The hand-crafted reference of frozen evaluations: each clip as `fbank_statistics` [2F]."""

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        return fbank_statistics(wave, self.frontend, self.num_frames)


def datasets(split: Split, labels: Labels, frontend: FrontEndConfig, num_frames: int) -> dict[str, ClipDataset]:
    """The split's sets that exist: "train", and "val" and "test" if given."""
    return {name: ClipDataset(items, labels.targets(items), frontend, num_frames)
            for name, items in (("train", split.train), ("val", split.val), ("test", split.test)) if items}


@torch.no_grad()
def collect(fn: Callable[[torch.Tensor], dict[str, torch.Tensor]], dataset: ClipDataset, env: Dist,
            batch_size: int, num_workers: int) -> dict[str, torch.Tensor]:
    """`fn` over every clip of `dataset`; each process runs a 1/W share, and every process gets all
    rows back, in dataset order, as float32 CPU tensors."""
    shard = Subset(dataset, range(env.rank, len(dataset), env.world_size))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers)
    parts: dict[str, list[torch.Tensor]] = {"index": []}
    for batch in loader:
        for key, value in fn(batch["x"].to(env.device, non_blocking=True)).items():
            parts.setdefault(key, []).append(value.float().cpu())
        parts["index"].append(batch["index"])
    shares = [parts]
    if env.enabled:
        shares = [None] * env.world_size
        dist.all_gather_object(shares, parts)
    keys = {key for share in shares for key in share}  # a process with an empty share has only "index"
    rows = {key: torch.cat([t for share in shares for t in share.get(key, [])]) for key in keys}
    order = rows.pop("index").argsort()
    return {key: value[order] for key, value in rows.items()}


def balanced_weights(targets: torch.Tensor) -> np.ndarray:
    """AST's sampling weight of a clip: the sum over its labels of 1 / (number of clips with that label).

    Single-label data then draws every class equally often; a clip with several rare tags more often.
    """
    counts = targets.sum(dim=0).double()
    per_label = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    weights = (targets.double() @ per_label).numpy()
    if (weights <= 0).any():
        # Clips without any label would never be drawn: give them the smallest weight of a labelled clip.
        weights[weights <= 0] = weights[weights > 0].min()
    return weights / weights.sum()
