"""Full fine-tuning (AST's recipe): every weight trains.

clip -> fbank, cut or padded to the model's frames -> mixup -> SpecAugment -> AST -> cross-entropy or
BCE -> AdamW with warm-up and step or cosine decay -> each epoch: validate, keep the best, average the
last epochs' weights -> evaluate best, last and averaged weights on val and test.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from asit import distributed
from asit.ast_model import classifier_checkpoint, load_exact
from asit.augment import mixup, spec_augment
from asit.checkpoint import atomic_save, load
from asit.config import to_dict
from asit.distributed import Dist
from asit.errors import InputError
from asit.frozen import classification_loss
from asit.optim import build_adamw, optimizer_step, set_hyperparameters
from asit.runlog import RunLog
from asit.runtime import autocast, resolve_precision, step_seed
from asit.sampler import GlobalBatchSampler
from asit.schedules import cosine

from .config import FinetuneConfig, TrainConfig
from .data import Labels, Split, balanced_weights, collect, datasets
from .evaluate import report, score, scores_from_logits, selection_metric
from .model import build_model

log = logging.getLogger("asit")


def layer_lr_scale(depth: int, decay: float) -> Callable[[str], float]:
    """Parameter name -> its learning-rate factor under layer-wise decay: decay^(depth + 1 - layer), where
    the embeddings (patches, positions, tokens) are layer 0, block i is i + 1, the final norm and the head
    depth + 1."""

    def scale(name: str) -> float:
        if name.startswith("backbone.blocks."):
            layer = int(name.split(".")[2]) + 1
        elif name.startswith("backbone.") and not name.startswith("backbone.norm"):
            layer = 0
        else:
            layer = depth + 1
        return decay ** (depth + 1 - layer)

    return scale


def lr_schedule(t: TrainConfig, steps_per_epoch: int) -> np.ndarray:
    """The learning rate of every step: linear warm-up, then a cosine to min_lr or AST's step decay."""
    total = t.epochs * steps_per_epoch
    if t.schedule == "cosine":
        return cosine(t.lr, t.min_lr, total, min(t.warmup_steps, total))
    step = np.arange(total)
    # AST's MultiStepLR: milestones at epochs decay_start, decay_start + decay_every, ... (0-based).
    epoch = step // steps_per_epoch
    decays = np.where(epoch >= t.decay_start, (epoch - t.decay_start) // t.decay_every + 1, 0)
    warmup = np.minimum(1.0, (step + 1) / max(1, t.warmup_steps))
    return t.lr * t.decay_gamma ** decays * warmup


class Finetuner:
    def __init__(self, cfg: FinetuneConfig, split: Split, labels: Labels, out: Path, env: Dist):
        self.cfg, self.labels, self.out, self.env = cfg, labels, out, env
        self.device = env.device
        self.amp_dtype = resolve_precision(cfg.train.precision, self.device)
        torch.manual_seed(cfg.seed)  # the new head's initialisation
        self.model, self.frontend = build_model(cfg, len(labels))
        self.model.to(self.device)
        self.sets = datasets(split, labels, self.frontend, cfg.model.num_frames)
        if cfg.data.cache_features:  # every epoch and every evaluation read each clip again
            for dataset in self.sets.values():
                dataset.cache(env, cfg.train.eval_batch_size, cfg.data.num_workers)

        t = cfg.train
        weights = balanced_weights(self.sets["train"].targets) if t.balanced_sampling else None
        self.sampler = GlobalBatchSampler(len(self.sets["train"]), t.batch_size, env.rank, env.world_size, cfg.seed,
                                          weights=weights, with_epoch=False)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.lr = lr_schedule(t, self.steps_per_epoch)
        self.bce = t.loss == "bce" or (t.loss == "auto" and labels.multilabel)
        self.key = selection_metric(labels.multilabel)
        depth = len(self.model.backbone.blocks)
        self.optimizer = build_adamw(self.model, layer_lr_scale(depth, t.layer_decay) if t.layer_decay < 1 else None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        # Model selection and weight averaging, carried across a resume by last.pt.
        self.best_score, self.best_epoch, self.best_state = -math.inf, -1, None
        self.average, self.averaged_epochs = None, 0
        self.start_epoch = self.resume()
        device_ids = [self.device] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=device_ids) if env.enabled else self.model
        self.runlog = RunLog(out, enabled=env.is_main)

    # ---- the recipe ---------------------------------------------------------------------------
    def train_step(self, batch: dict, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, aug = self.cfg, self.cfg.augment
        set_hyperparameters(self.optimizer, self.lr[step], cfg.train.weight_decay)
        # All randomness of a step from (seed, step, rank): stochastic depth reads the global RNG, the
        # augmentations their own generator. A resumed run repeats an uninterrupted one.
        torch.manual_seed(step_seed(cfg.seed, step, self.env.rank))
        rng = np.random.default_rng([cfg.seed, step, self.env.rank])

        x = batch["x"].to(self.device, non_blocking=True)  # [B, 1, F, T]
        y = batch["y"].to(self.device, non_blocking=True)  # [B, C] one- or multi-hot
        # Mix first, then mask the mixture, as AST: masks hide parts of what the model is asked about.
        x, y, _ = mixup(x, y, aug.mixup, aug.mixup_alpha, rng)
        x = spec_augment(x, aug.freq_mask, aug.time_mask, rng)
        with autocast(self.device, self.amp_dtype):
            logits = self.ddp(x)  # [B, C]
        loss = classification_loss(logits.float(), y, self.bce)

        grad_norm = optimizer_step(loss, self.optimizer, self.scaler, self.model.parameters(), cfg.train.clip_grad)
        return loss.detach(), grad_norm

    def end_epoch(self, epoch: int) -> dict:
        """Validate, keep the best weights, fold this epoch into the weight average, save."""
        t = self.cfg.train
        values = {}
        if "val" in self.sets:
            val = self.evaluate("val")
            values = {f"val/{k}": v for k, v in val.items()}
            if val[self.key] > self.best_score:
                self.best_score, self.best_epoch = val[self.key], epoch
                self.best_state = copy.deepcopy(self.model.state_dict())
                self.save("best.pt", self.best_state, {"epoch": epoch + 1, "val": val})
        if t.average_last and epoch >= t.epochs - t.average_last:
            # A running mean: one extra copy of the weights (on the CPU, where last.pt keeps it),
            # whatever the number of epochs averaged.
            self.averaged_epochs += 1
            current = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            if self.average is None:
                self.average = {k: v.clone() for k, v in current.items()}
            else:
                for k, v in self.average.items():
                    v += (current[k] - v) / self.averaged_epochs
        self.save("last.pt", self.model.state_dict(), {"train_state": self.train_state(epoch + 1)})
        return values

    def run(self) -> dict:
        cfg, env = self.cfg, self.env
        t = cfg.train
        if env.is_main:
            log.info("fine-tuning %s on %d clips (%d classes, %s-label): %d epochs of %d steps of %d clips, "
                     "%s on %s x%d", cfg.model.arch, len(self.sets["train"]), len(self.labels),
                     "multi" if self.labels.multilabel else "single", t.epochs, self.steps_per_epoch,
                     self.sampler.global_batch, self.amp_dtype or "fp32", self.device, env.world_size)
        loader = DataLoader(self.sets["train"], batch_sampler=self.sampler, num_workers=cfg.data.num_workers,
                            pin_memory=self.device.type == "cuda")
        bar = tqdm(total=t.epochs * self.steps_per_epoch, initial=self.start_epoch * self.steps_per_epoch,
                   disable=not env.is_main, desc="finetune")
        for epoch in range(self.start_epoch, t.epochs):
            self.sampler.set_epoch(epoch)
            self.ddp.train()
            running = torch.zeros((), device=self.device)
            for i, batch in enumerate(loader):
                step = epoch * self.steps_per_epoch + i
                loss, grad_norm = self.train_step(batch, step)
                running += loss
                bar.update(1)
                if (i + 1) % t.log_every_steps == 0 or i + 1 == self.steps_per_epoch:
                    mean_loss = float(distributed.all_reduce_mean(running)) / ((i % t.log_every_steps) + 1)
                    running.zero_()
                    if not math.isfinite(mean_loss):
                        raise FloatingPointError(f"non-finite loss at step {step + 1}; try a lower train.lr or "
                                                 f"train.precision=fp32 (the last epoch's weights are in {self.out})")
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    self.runlog.scalars(step + 1, {"loss/train": mean_loss, "opt/lr": float(self.lr[step]),
                                                   "opt/grad_norm": float(grad_norm), "epoch": epoch})
            values = self.end_epoch(epoch)
            if env.is_main and values:
                log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
                self.runlog.scalars((epoch + 1) * self.steps_per_epoch, values)
        bar.close()
        results = self.final_results()
        self.runlog.close()
        return results

    def final_results(self) -> dict:
        """Best (or, without a validation set, last), last and averaged weights on val and test."""
        has_best = self.best_state is not None
        last = self.evaluate_all(per_class=not has_best)
        results = {"selection": self.key, "last": {k: last[k] for k in ("val", "test")}}
        reported = last
        if self.average is not None:
            self.save("averaged.pt", self.average, {"epochs": self.averaged_epochs})
            self.model.load_state_dict(self.average)
            results["averaged"] = self.evaluate_all()
        if has_best:
            self.model.load_state_dict(self.best_state)
            reported = self.evaluate_all(per_class=True)
            results["best_epoch"] = self.best_epoch + 1
        return {**reported, **results}

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, name: str) -> torch.Tensor:
        self.model.eval()

        def logits(x):
            with autocast(self.device, self.amp_dtype):
                return {"logits": self.model(x)}

        out = collect(logits, self.sets[name], self.env, self.cfg.train.eval_batch_size, self.cfg.data.num_workers)
        return scores_from_logits(out["logits"], self.labels.multilabel)

    def evaluate(self, name: str) -> dict:
        return score(self.scores(name), self.sets[name].targets, self.labels.multilabel)

    def evaluate_all(self, per_class: bool = False) -> dict:
        names = [name for name in ("val", "test") if name in self.sets]
        return report({name: self.scores(name) for name in names},
                      {name: self.sets[name].targets for name in names}, self.labels, per_class)

    # ---- checkpoints --------------------------------------------------------------------------
    def save(self, name: str, state: dict, extra: dict) -> None:
        if not self.env.is_main:
            return
        model = copy.deepcopy(self.model).cpu()
        model.load_state_dict(state)
        atomic_save(classifier_checkpoint(model, model.cfg, self.frontend, list(self.labels.names),
                                          self.labels.multilabel, {"config": to_dict(self.cfg), **extra}),
                    self.out / name)

    def train_state(self, epochs_done: int) -> dict:
        return {
            "epoch": epochs_done,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "average": self.average,
            "averaged_epochs": self.averaged_epochs,
        }

    def resume(self) -> int:
        """Continue from output_dir/last.pt when it is there: returns the number of epochs done."""
        path = self.out / "last.pt"
        if not path.exists():
            return 0
        ckpt = load(path)
        if "train_state" not in ckpt:
            raise InputError(f"{path}: has no training state to resume from; use another output_dir")
        if ckpt["labels"] != list(self.labels.names):
            raise InputError(f"{path}: was trained on other labels; use another output_dir")
        load_exact(self.model, ckpt["model"], str(path))
        state = ckpt["train_state"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.average, self.averaged_epochs = state["average"], state["averaged_epochs"]
        if self.best_epoch >= 0:
            self.best_state = load(self.out / "best.pt")["model"]
        log.info("resumed from %s after epoch %d", path, state["epoch"])
        return state["epoch"]
