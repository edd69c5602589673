"""The ASiT pretraining loop.

audio -> two random crops -> log-mel views -> GMML corruption -> student (corrupted views) and EMA
teacher (clean views) -> reconstruction + local + global losses -> AdamW -> EMA -> checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from asit import distributed, gmml
from asit.batched_fbank import BatchedFbank
from asit.checkpoint import atomic_save, backbone_checkpoint, load_backbone, load_newest
from asit.config import ConfigError, pair, to_dict
from asit.errors import InputError
from asit.features import check_frontend, frontend_metadata, normalise
from asit.losses import ASiTLoss
from asit.model import build_network, ema_update
from asit.monitor import OnlineMonitor
from asit.optim import build_adamw, optimizer_step, set_hyperparameters
from asit.runlog import RunLog
from asit.runtime import autocast, compiled, resolve_precision, step_seed
from asit.sampler import GlobalBatchSampler
from asit.schedules import cosine, linear_then_constant, momentum_for_half_life
from asit.sources import check_files_exist, list_audio
from asit.synthetic import LABELS_FILE, default_cache_dir, ensure_synthetic_dataset
from asit.views import BadFiles, PretrainViews
from asit.vit import adapt_state_dict, grid_of, set_attention

from .config import PretrainConfig

log = logging.getLogger("asit")


class NonFiniteLossError(RuntimeError):
    pass


def training_items(cfg: PretrainConfig) -> tuple[list, str | None]:
    """The training clips, and the labelled set the monitor reads by default (the embedded set's labels)."""
    if cfg.data.train:
        items = list_audio(cfg.data.train)
        check_files_exist(cfg.data.train, items)
        return items, None
    root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    folder = ensure_synthetic_dataset(root, num_clips=cfg.data.synthetic_clips, sample_rate=cfg.frontend.sample_rate)
    log.info("data.train is empty: using the embedded synthetic set in %s", folder)
    return list_audio(folder), str(folder / LABELS_FILE)


class Schedules:
    """Every per-step value of the run, derived from its planned length."""

    def __init__(self, cfg: PretrainConfig, total_steps: int, global_batch: int):
        t, loss = cfg.train, cfg.loss
        self.lr = cosine(t.lr * global_batch / 256, t.min_lr, total_steps, round(t.warmup_frac * total_steps))
        self.weight_decay = cosine(t.weight_decay, t.weight_decay_end, total_steps)
        momentum = (t.momentum_teacher if t.teacher_half_life is None
                    else momentum_for_half_life(t.teacher_half_life * total_steps))
        self.momentum = cosine(momentum, 1.0, total_steps)
        self.teacher_temp = linear_then_constant(loss.warmup_teacher_temp, loss.teacher_temp, total_steps,
                                                 round(loss.teacher_temp_warmup_frac * total_steps))


def repeat_copies(teacher_out: dict, copies: int, local_select: torch.Tensor) -> dict:
    """The teacher's outputs on the clean views (its local head on every token) as the targets of
    `copies` corrupted copies: rows repeated, local targets taken at each copy's `local_select` [copies
    2B, N] tokens, in the order the student's local head reads them."""
    out = {k: v.repeat(copies, 1) for k, v in teacher_out.items() if k != "local"}
    if "local" in teacher_out:
        per_token = teacher_out["local"].unflatten(0, (-1, local_select.shape[1]))  # [2B, N, K]
        out["local"] = per_token.repeat(copies, 1, 1)[local_select]
    return out


class Pretrainer:
    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        self.env = distributed.init(cfg.train.device)
        self.device = self.env.device
        self.out = Path(cfg.output_dir)
        self.amp_dtype = resolve_precision(cfg.train.precision, self.device)

        # Data: each process loads its share of every global batch.
        items, labelled = training_items(cfg)
        self.patch = pair(cfg.model.patch_size)  # (frequency, time)
        if cfg.frontend.num_mel_bins % self.patch[0]:
            raise ConfigError(f"frontend.num_mel_bins={cfg.frontend.num_mel_bins} is not a multiple of the "
                             f"patch's {self.patch[0]} mel bins (model.patch_size={cfg.model.patch_size})")
        self.dataset = PretrainViews(items, cfg.frontend, cfg.views, cfg.seed, self.patch[1])
        self.num_frames = self.dataset.num_frames
        # views.frontend=device: the loader hands over waveform crops, and their fbank is made here.
        self.fbank = BatchedFbank(cfg.frontend).to(self.device) if cfg.views.frontend == "device" else None
        self.bad_files = BadFiles(items)
        probe = GlobalBatchSampler(len(items), cfg.train.batch_size, 0, self.env.world_size, cfg.seed, 0)
        self.steps_per_epoch = probe.steps_per_epoch
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.global_batch = probe.global_batch

        # Networks: the teacher starts as the student and then follows it by EMA only.
        torch.manual_seed(cfg.seed)
        loss = cfg.loss
        heads = dict(use_rec=loss.w_rec > 0, use_local=loss.w_local > 0, use_global=loss.w_global > 0)
        input_size = (cfg.frontend.num_mel_bins, self.num_frames)
        self.student = build_network(cfg.model, input_size, teacher=False, **heads).to(self.device)
        self.teacher = build_network(cfg.model, input_size, teacher=True, **heads).to(self.device)
        if cfg.model.init:
            self.load_init_backbone(cfg.model.init)
        self.teacher.load_state_dict({k: v for k, v in self.student.state_dict().items()
                                      if not k.startswith("rec_head.")})
        self.teacher.requires_grad_(False)
        for net in (self.student, self.teacher):
            set_attention(net, cfg.model.attention, self.device, self.amp_dtype)
            if cfg.model.head_batchnorm and self.env.enabled and self.device.type == "cuda":
                # Head batch norm over the global batch, as one process would see it. SyncBatchNorm is
                # CUDA-only: CPU processes normalise by their own share of the batch.
                nn.SyncBatchNorm.convert_sync_batchnorm(net)

        self.criterion = ASiTLoss(loss, cfg.model.global_out_dim, cfg.model.local_out_dim).to(self.device)
        self.optimizer = build_adamw(self.student)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.schedules = Schedules(cfg, self.total_steps, self.global_batch)
        self.start_step = self.resume()
        self.model = (DistributedDataParallel(self.student, device_ids=[self.device] if self.device.type == "cuda" else None)
                      if self.env.enabled else self.student)
        # What runs forward: the DDP-wrapped student and the teacher, compiled if asked.
        self.teacher_forward = self.teacher
        if cfg.train.compile:
            self.model, self.teacher_forward = compiled(self.model), compiled(self.teacher)
        self.runlog = RunLog(self.out, enabled=self.env.is_main)
        # Online evaluation, on the main process only (the others wait for it at the next step's reduce).
        self.monitor = (OnlineMonitor.from_config(cfg.monitor, labelled, cfg.frontend, self.num_frames, cfg.seed)
                        if self.env.is_main else None)

    # ---- weights in and out -------------------------------------------------------------------
    def load_init_backbone(self, path: str) -> None:
        state, meta = load_backbone(path)
        if meta.get("frontend"):
            check_frontend(meta["frontend"], self.cfg.frontend, path)
        state = adapt_state_dict(state, self.student.backbone, path, meta.get("grid"))
        self.student.backbone.load_state_dict(state)
        log.info("initialised the backbone from %s", path)

    @property
    def patch_meta(self) -> int | list[int]:
        """The patch as checkpoints record it: one number when square (as before non-square patches)."""
        return self.patch[0] if self.patch[0] == self.patch[1] else list(self.patch)

    def checkpoint(self, step: int) -> dict:
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss": self.criterion.state_dict(),
            "step": step,
            "config": to_dict(self.cfg),
            "frontend": frontend_metadata(self.cfg.frontend, self.num_frames),
            "arch": self.cfg.model.arch,
            "patch_size": self.patch_meta,
            "grid": list(grid_of(self.student.backbone)),
        }

    def save(self, step: int) -> None:
        found = {}
        for part in distributed.all_gather_object(self.bad_files.reasons):
            found |= part
        if not self.env.is_main:
            return
        self.write_bad_files(found)
        atomic_save(self.checkpoint(step), self.out / "checkpoint.pt", keep_previous=self.keep_newest)
        self.keep_newest = True
        backbone = backbone_checkpoint(self.teacher.backbone, self.cfg.model.arch, self.patch_meta, self.patch_meta,
                                       grid_of(self.teacher.backbone),
                                       frontend_metadata(self.cfg.frontend, self.num_frames))
        atomic_save(backbone, self.out / "teacher_backbone.pt")

    def resume(self) -> int:
        newest = self.out / "checkpoint.pt"
        # The next save keeps the checkpoint it replaces as the previous one, unless that one is unreadable.
        self.keep_newest = True
        found = load_newest(newest)
        if found is None:
            return 0
        ckpt, path = found
        self.keep_newest = path == newest
        check_frontend(ckpt["frontend"], self.cfg.frontend, str(path))
        for name, module in (("student", self.student), ("teacher", self.teacher), ("loss", self.criterion)):
            try:
                module.load_state_dict(ckpt[name])
            except RuntimeError as e:
                raise InputError(f"{path}: the {name} does not match this config ({e})") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        log.info("resumed from %s at step %d", path, ckpt["step"])
        return ckpt["step"]

    # ---- the algorithm ------------------------------------------------------------------------
    def corrupt(self, views: torch.Tensor, ids: torch.Tensor, step: int):
        """Corrupt both views, gmml.copies times; every tensor's rows are [view 0 of each clip; view 1 of
        each clip] for copy 0, then the same for copy 1, and so on (copy c of view v draws as view 2c + v)."""
        parts = [gmml.corrupt(views[:, v], self.cfg.gmml, self.patch, self.cfg.seed, step, ids, view=2 * c + v)
                 for c in range(self.cfg.gmml.copies) for v in (0, 1)]
        return (torch.cat([p.views for p in parts]), torch.cat([p.pixel_mask for p in parts]),
                torch.cat([p.token_mask for p in parts]))

    def train_step(self, batch: dict, step: int) -> tuple[dict, dict]:
        cfg, s = self.cfg, self.schedules
        epoch = step // self.steps_per_epoch
        set_hyperparameters(self.optimizer, s.lr[step], s.weight_decay[step])
        # Stochastic depth draws from the global RNG: seeding it per step makes resumes exact.
        torch.manual_seed(step_seed(cfg.seed, step, self.env.rank))

        views = batch["views"].to(self.device, non_blocking=True)  # [B, 2, 1, F, T], or crops [B, 2, S]
        if self.fbank is not None:
            specs = normalise(self.fbank(views.flatten(0, 1))[..., :self.num_frames], cfg.frontend)
            views = specs.unflatten(0, views.shape[:2])[:, :, None]
        clean = torch.cat([views[:, 0], views[:, 1]])  # [2B, 1, F, T]
        copies = cfg.gmml.copies
        corrupted, pixel_mask, token_mask = self.corrupt(views, batch["index"], step)  # [copies 2B, ...]
        # The local loss reads corrupted tokens only (paper), or every token (reference code).
        local_select = token_mask if cfg.loss.local_loss_tokens == "corrupted" else torch.ones_like(token_mask)
        # With several copies the teacher reads every token once, and each copy takes its own.
        teacher_select = local_select if copies == 1 else torch.ones_like(token_mask[:len(clean)])

        with autocast(self.device, self.amp_dtype):
            with torch.inference_mode():  # cheaper than no_grad: no autograd bookkeeping at all
                teacher_out = self.teacher_forward(clean, teacher_select)
                if copies > 1:
                    teacher_out = repeat_copies(teacher_out, copies, local_select)
            student_out = self.model(corrupted, local_select)
            losses = self.criterion(student_out, teacher_out, clean.repeat(copies, 1, 1, 1),
                                    pixel_mask if cfg.gmml.enabled else None, s.teacher_temp[step], copies)

        # The prototypes stay put while the rest settles.
        frozen = self.student.last_layers() if epoch < cfg.train.freeze_last_layer_epochs else ()
        grad_norm = optimizer_step(losses["loss"], self.optimizer, self.scaler, self.student.parameters(),
                                   cfg.train.clip_grad, frozen)
        ema_update(self.teacher, self.student, s.momentum[step])

        losses["grad_norm"] = grad_norm
        return losses, {"clean": clean, "corrupted": corrupted, "student": student_out, "teacher": teacher_out}

    # ---- the run ------------------------------------------------------------------------------
    def loader(self) -> DataLoader:
        sampler = GlobalBatchSampler(len(self.dataset), self.cfg.train.batch_size, self.env.rank,
                                     self.env.world_size, self.cfg.seed, self.stop_step, self.start_step)
        workers = self.cfg.data.num_workers
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=4 if workers > 0 else None)

    @property
    def stop_step(self) -> int:
        t = self.cfg.train
        return self.total_steps if t.max_steps is None else min(self.total_steps, t.max_steps)

    def run(self) -> Path:
        cfg, env = self.cfg, self.env
        if env.is_main:
            log.info("pretraining %s: %d clips, %d steps of %d clips (%d per epoch), %s on %s x%d",
                     cfg.model.arch, len(self.dataset), self.total_steps, self.global_batch,
                     self.steps_per_epoch, self.amp_dtype or "fp32", self.device, env.world_size)
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        last_save = self.start_step
        bar = tqdm(total=self.stop_step, initial=self.start_step, disable=not env.is_main, desc="pretrain")
        if self.start_step == 0 and self.start_step < self.stop_step:
            self.evaluate(0)  # the untrained network: the random-backbone reference of this run
        tic, last_log = time.perf_counter(), self.start_step
        for step, batch in enumerate(self.loader(), start=self.start_step):
            losses, outputs = self.train_step(batch, step)
            nonfinite |= ~torch.isfinite(losses["loss"].detach())
            self.bad_files.add(batch)
            self.check_bad_files()
            done = step + 1
            bar.update(1)
            if done % cfg.train.log_every_steps == 0 or done == self.stop_step:
                self.check_finite(nonfinite, step, last_save)
                values = self.log_values(losses, outputs, step, (time.perf_counter() - tic) / (done - last_log))
                bar.set_postfix(loss=f"{values['loss/total']:.4f}")
                self.runlog.scalars(done, values | {"data/bad_files": len(self.bad_files.reasons)})
                tic, last_log = time.perf_counter(), done
            if self.monitor is not None and (done % cfg.monitor.every_steps == 0 or done == self.stop_step):
                tic += self.evaluate(done)  # seconds_per_step counts training steps only
            if done % cfg.train.image_every_steps == 0 and "rec" in outputs["student"]:
                self.log_images(done, outputs)
            if done % cfg.train.save_every_steps == 0 or done == self.stop_step:
                self.check_finite(nonfinite, step, last_save)
                self.save(done)
                last_save = done
        bar.close()
        self.runlog.close()
        if self.start_step >= self.stop_step and env.is_main:
            log.info("nothing to do: %s is already at step %d", self.out / "checkpoint.pt", self.start_step)
        return self.out / "teacher_backbone.pt"

    def evaluate(self, step: int) -> float:
        """The online monitor's scores at `step`, logged; returns the seconds it took (0 without one)."""
        if self.monitor is None:
            return 0.0
        networks = {"teacher": self.teacher.backbone} | ({"student": self.student.backbone}
                                                          if self.cfg.monitor.student else {})
        values = self.monitor(networks, self.device, self.amp_dtype)
        self.runlog.scalars(step, values)
        log.info("monitor at step %d: %s (%.1f s)", step, ", ".join(
            f"{k.removeprefix('monitor/')} {v:.3f}" for k, v in values.items() if k != "monitor/seconds"),
            values["monitor/seconds"])
        return values["monitor/seconds"]

    def check_finite(self, nonfinite: torch.Tensor, step: int, last_save: int) -> None:
        if bool(distributed.all_reduce_sum(nonfinite.float()) > 0):
            raise NonFiniteLossError(
                f"non-finite loss at or before step {step + 1}; stopping. The last good checkpoint "
                f"(step {last_save}) is left in {self.out}. Try a lower train.lr, train.precision=fp32, "
                f"or check the data for extreme values."
            )

    def check_bad_files(self) -> None:
        bad, seen, limit = len(self.bad_files.reasons), self.bad_files.num_seen, self.cfg.data.max_bad_fraction
        if seen >= 20 and bad > limit * seen:
            path = self.write_bad_files(self.bad_files.reasons)  # this process's alone: the others never stop here
            raise InputError(
                f"{bad} of the {seen} audio files read so far cannot be read (unreadable, empty, silent or "
                f"non-finite), more than data.max_bad_fraction={limit}: the data set looks broken. They are "
                f"listed in {path}; fix or remove them, or raise data.max_bad_fraction"
            )

    def write_bad_files(self, found: dict[str, str]) -> Path:
        """output_dir/bad_files.txt: path and reason of every unreadable file met, by this run and the runs
        it resumes."""
        path = self.out / "bad_files.txt"
        earlier = dict(line.split("\t", 1) for line in path.read_text().splitlines()) if path.exists() else {}
        listed = earlier | found
        if len(listed) > len(earlier):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_text("".join(f"{file}\t{reason}\n" for file, reason in listed.items()))
            os.replace(tmp, path)
            log.info("%d unreadable files skipped, listed in %s", len(listed), path)
        return path

    @torch.no_grad()
    def log_values(self, losses: dict, outputs: dict, step: int, seconds_per_step: float) -> dict:
        s = self.schedules
        values = {f"loss/{'total' if k == 'loss' else k}": v for k, v in losses.items()
                  if not k.endswith("entropy") and k != "grad_norm"}
        # Collapse monitors: the teacher's entropy near 0 (one prototype wins) or near ln K (uniform),
        # and the spread of its normalised class embeddings near 0 (every clip maps to one point).
        for head, out_dim in (("global", self.cfg.model.global_out_dim), ("local", self.cfg.model.local_out_dim)):
            if f"{head}_entropy" in losses:
                values[f"collapse/{head}_entropy_frac"] = losses[f"{head}_entropy"] / math.log(out_dim)
        embed = F.normalize(outputs["teacher"]["cls"].float(), dim=-1)
        values["collapse/teacher_embed_std"] = embed.std(dim=0).mean()
        values = {k: float(distributed.all_reduce_mean(torch.as_tensor(v, device=self.device).float()))
                  for k, v in values.items()}
        values |= {"opt/grad_norm": float(losses["grad_norm"]), "opt/lr": float(s.lr[step]),
                   "opt/weight_decay": float(s.weight_decay[step]), "opt/teacher_momentum": float(s.momentum[step]),
                   "opt/teacher_temp": float(s.teacher_temp[step]), "time/seconds_per_step": seconds_per_step,
                   "epoch": step // self.steps_per_epoch}
        return values

    def log_images(self, step: int, outputs: dict) -> None:
        self.runlog.spectrograms(step, {
            "view/clean": outputs["clean"][0, 0],
            "view/corrupted": outputs["corrupted"][0, 0],
            "view/reconstruction": outputs["student"]["rec"][0, 0],
        })


def pretrain(cfg: PretrainConfig) -> Path:
    """Run (or resume) a pretraining run; returns the path of the teacher backbone it leaves."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with distributed.process_group(cfg.train.device):
        return Pretrainer(cfg).run()
