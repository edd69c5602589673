"""Online evaluation during pretraining: is the network learning, and how fast? (DINO's k-NN monitor)

Every `monitor.every_steps` steps a small labelled set is embedded by the teacher and the student
backbones and scored on held-out clips by a weighted k-NN and a quick linear probe, each on two readouts
of the last block: [class token, mean of patch tokens] and each frequency row's tokens averaged over
time (`asit.vit.pool_tokens`). The scores at step 0 are the untrained network's: the random-backbone
reference of the same run comes for free.

The clips are read once, when the run starts, as a frozen evaluation reads them (the start of each clip,
zero-padded in the log-mel domain to the view length). The monitor draws no random numbers from torch's
generator and leaves every module in the mode it found it, so a run computes the same losses with the
monitor on or off.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .audio import load_audio
from .errors import InputError
from .features import FrontEndConfig, clip_features
from .frozen import knn_scores, validation_folds
from .runtime import autocast
from .sources import AudioItem, list_audio
from .vit import pool_tokens

log = logging.getLogger("asit")

READOUTS = {"": ("cls", "mean"), "_freq": ("freq",)}  # log-key suffix -> the pooled readouts concatenated


@dataclass
class MonitorConfig:
    # A labelled folder (labels from its sub-folders), .json manifest or .csv (a `label` column) to
    # score the networks on while they train. null: with data.train empty, the embedded synthetic set,
    # each clip labelled with the kind of its main sound event; otherwise no monitor.
    data: str | None = None
    # The clips scored; null: a seeded half of `data` (whole groups, e.g. speakers, where the data has a
    # `group` column), the other half fitting the probe and voting in the k-NN.
    test: str | None = None
    every_steps: int = 100  # 0 switches the monitor off
    # At most this many clips of each of the two sets (fitting, scored), drawn evenly: the monitor's
    # cost is embedding them with each network, and it must stay a few percent of the run.
    max_clips: int = 128
    knn_k: int = 20
    # The quick linear probe's ridge strengths, in units of the mean squared norm of a standardised
    # embedding, chosen by cross-validation on the fitting half (`ridge_probe`).
    probe_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    probe_folds: int = 3
    student: bool = True  # score the student too: after a short run the teacher lags it

    def __post_init__(self):
        if self.every_steps < 0 or self.max_clips < 2 or self.knn_k < 1:
            raise ValueError("monitor: every_steps must be >= 0, max_clips >= 2 and knn_k >= 1")
        if self.probe_folds < 2 or not self.probe_grid:
            raise ValueError("monitor: probe_folds must be at least 2 and probe_grid not empty")


def evenly(items: list, limit: int) -> list:
    if len(items) <= limit:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def split_half(items: list[AudioItem], seed: int) -> tuple[list[AudioItem], list[AudioItem]]:
    """(fit, test): a seeded half of the groups (of the clips, where clips have no group) is test."""
    keys = sorted({item.group or item.path for item in items})
    rng = np.random.default_rng([seed, 2])
    test = set(rng.permutation(keys)[: len(keys) // 2].tolist())
    return ([i for i in items if (i.group or i.path) not in test], [i for i in items if (i.group or i.path) in test])


class OnlineMonitor:
    """The labelled clips' features and targets, held in memory, and the scores of any backbone on them."""

    def __init__(self, fit: list[AudioItem], test: list[AudioItem], frontend: FrontEndConfig, num_frames: int,
                 cfg: MonitorConfig, seed: int, source: str):
        self.cfg, self.seed = cfg, seed
        for item in fit + test:
            if len(item.labels) != 1:
                raise InputError(f"{source}: {item.path} has {len(item.labels)} labels; the online monitor "
                                 f"(monitor.data) needs one label per clip")
        names = sorted({item.labels[0] for item in fit})
        unknown = sorted({item.labels[0] for item in test} - set(names))
        if len(names) < 2:
            raise InputError(f"{source}: the online monitor's fitting clips carry {len(names)} label(s); it needs "
                             f"at least 2 (check monitor.data)")
        if unknown:
            raise InputError(f"{source}: the online monitor scores labels its fitting clips never show "
                             f"({', '.join(unknown[:3])}); check monitor.data and monitor.test")
        index = {name: i for i, name in enumerate(names)}
        self.num_classes = len(names)
        self.groups = [item.group for item in fit]
        self.y = {part: torch.tensor([index[i.labels[0]] for i in items]) for part, items in (("fit", fit), ("test", test))}
        self.x = {part: torch.stack([clip_features(load_audio(i.path, frontend.sample_rate), frontend, num_frames)[None]
                                     for i in items]) for part, items in (("fit", fit), ("test", test))}

    @classmethod
    def from_config(cls, cfg: MonitorConfig, default: str | None, frontend: FrontEndConfig, num_frames: int,
                    seed: int) -> OnlineMonitor | None:
        """The monitor of a run, or None: off, or no labelled data (`default` is the embedded set's)."""
        source = cfg.data or default
        if not cfg.every_steps or source is None:
            return None
        items = list_audio(source, labels_from_folders=True)
        fit, test = (items, list_audio(cfg.test, labels_from_folders=True)) if cfg.test else split_half(items, seed)
        try:
            return cls(evenly(fit, cfg.max_clips), evenly(test, cfg.max_clips), frontend, num_frames, cfg, seed,
                       source)
        except InputError as e:
            if cfg.data:  # the user's labelled set: their mistake to fix
                raise
            # The embedded set is the run's default, not the user's choice: too few clips to split into
            # two halves with the same sound kinds must not stop the training.
            log.warning("no online monitor: %s", e)
            return None

    @torch.no_grad()
    def embed(self, backbone: torch.nn.Module, device: torch.device, amp: torch.dtype | None,
              batch_size: int = 128) -> dict[str, dict[str, torch.Tensor]]:
        """part -> readout -> [N, ...] float32 CPU embeddings of the last block (in eval mode)."""
        was_training = backbone.training
        backbone.eval()
        rows = backbone.patch_embed.grid_size[0]
        prefix = backbone.num_prefix_tokens
        out = {}
        for part, x in self.x.items():
            pooled = []
            for start in range(0, len(x), batch_size):
                with autocast(device, amp):
                    tokens = backbone.forward_features(x[start:start + batch_size].to(device))
                pooled.append({k: v.float().cpu() for k, v in
                               pool_tokens(tokens[:, prefix:], tokens[:, :prefix], rows).items()})
            out[part] = {k: torch.cat([p[k] for p in pooled]) for k in pooled[0]}
        backbone.train(was_training)
        return out

    def scores(self, backbone: torch.nn.Module, device: torch.device, amp: torch.dtype | None) -> dict[str, float]:
        """{knn, linear, knn_freq, linear_freq}: test accuracies of the k-NN and the probe, per readout."""
        feats = self.embed(backbone, device, amp)
        onehot = F.one_hot(self.y["fit"], self.num_classes).float()
        out = {}
        for suffix, names in READOUTS.items():
            fit, test = (torch.cat([feats[part][n] for n in names], dim=1) for part in ("fit", "test"))
            votes = knn_scores(fit, onehot, test, self.cfg.knn_k)
            probe = ridge_probe(fit, onehot, self.groups, self.cfg.probe_grid, self.cfg.probe_folds, self.seed)
            out[f"knn{suffix}"] = accuracy(votes, self.y["test"])
            out[f"linear{suffix}"] = accuracy(probe(test), self.y["test"])
        return out

    def __call__(self, networks: dict[str, torch.nn.Module], device: torch.device,
                 amp: torch.dtype | None) -> dict[str, float]:
        """Log values `monitor/<network>/<score>` of every backbone in `networks`, and the seconds taken."""
        tic = time.perf_counter()
        values = {f"monitor/{name}/{k}": v for name, net in networks.items()
                  for k, v in self.scores(net, device, amp).items()}
        return values | {"monitor/seconds": time.perf_counter() - tic}


def ridge_probe(x: torch.Tensor, onehot: torch.Tensor, groups: list, grid: tuple[float, ...], folds: int,
                seed: int):
    """A linear classifier fitted in closed form: ridge regression of the one-hot targets on the
    standardised features, its strength chosen from `grid` by K-fold cross-validation (folds that keep
    `groups` apart where given). A few small solves instead of the logistic probe's iterative fits: the
    monitor must cost little beside the training it watches. Returns features -> [N, C] scores.
    """
    x = x.double()
    mu, sigma = x.mean(dim=0), x.std(dim=0, correction=0).clamp_min(1e-6)
    z, y = (x - mu) / sigma, onehot.double()
    scale = float((z * z).sum(dim=1).mean())  # the kernel's diagonal: the grid is relative to it

    def fit(rows, alpha):
        # The dual form: an [n, n] solve, n (clips) being smaller than the width of the freq readouts.
        zr, yr = z[rows], y[rows]
        ym = yr.mean(dim=0)
        dual = torch.linalg.solve(zr @ zr.T + alpha * scale * torch.eye(len(zr), dtype=z.dtype), yr - ym)
        return zr.T @ dual, ym  # weight [D, C], bias [C]

    splits, _ = validation_folds(onehot.argmax(dim=1).numpy(), groups, False, folds, seed)
    cv = {alpha: np.mean([float(((z[va] @ w + b).argmax(1) == y[va].argmax(1)).double().mean())
                          for tr, va in splits for w, b in [fit(torch.as_tensor(tr), alpha)]])
          for alpha in grid}
    w, b = fit(torch.arange(len(z)), max(grid, key=lambda a: (cv[a], a)))  # ties: the stronger ridge
    return lambda feats: ((feats.double() - mu) / sigma) @ w + b


def accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    return float((scores.argmax(dim=1) == targets).float().mean())
