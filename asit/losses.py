"""ASiT's three losses: masked reconstruction, local (per-token) and global (class-token) distillation.

    student distribution  softmax(s / tau_s)
    teacher distribution  softmax((t - c) / tau_t)   with centre c and a sharper tau_t
Centring stops one prototype from dominating, sharpening stops the uniform collapse; together they keep
self-distillation from collapsing (DINO).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum, global_mean


@dataclass
class LossConfig:
    # Weights of the three terms; 0 switches a term off (and its head is not built). The paper sets
    # all to 1; the reference code weighs the reconstruction 2.
    w_rec: float = 1.0
    w_local: float = 1.0
    w_global: float = 1.0
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07  # reached after `teacher_temp_warmup_frac` of training, then held
    teacher_temp_warmup_frac: float = 0.3
    center_momentum: float = 0.9
    # The paper (Eq. 5-6) distils only corrupted tokens; the reference code distils all of them.
    local_loss_tokens: Literal["corrupted", "all"] = "corrupted"

    def __post_init__(self):
        for name in ("w_rec", "w_local", "w_global"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0")
        if self.w_rec == self.w_local == self.w_global == 0:
            raise ValueError("loss: every term is switched off (w_rec = w_local = w_global = 0)")


class DistillationLoss(nn.Module):
    """Cross-entropy from the centred, sharpened teacher to the student, row by row; owns its centre."""

    def __init__(self, out_dim: int, student_temp: float, center_momentum: float):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, teacher_temp: float) -> dict:
        # student, teacher: [n, K], row i of one is the target of row i of the other
        student, teacher = student.float(), teacher.float()
        targets = F.softmax((teacher - self.center) / teacher_temp, dim=-1)
        ce = -(targets * F.log_softmax(student / self.student_temp, dim=-1)).sum(dim=-1)
        loss = global_mean(ce)
        entropy = global_mean(-(targets * targets.clamp_min(1e-12).log()).sum(dim=-1).detach())
        self.update_center(teacher)
        return {"loss": loss, "entropy": entropy}

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        # The batch mean is taken over every process's teacher outputs, so the centre stays identical
        # across processes without being broadcast.
        count = all_reduce_sum(torch.tensor(float(teacher.shape[0]), device=teacher.device)).clamp_min(1)
        batch_center = all_reduce_sum(teacher.sum(dim=0, keepdim=True)) / count
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


def swap_views(x: torch.Tensor, copies: int = 1) -> torch.Tensor:
    """[view0 rows; view1 rows] -> [view1 rows; view0 rows], in each of `copies` consecutive blocks of
    rows: the cross-view pairing of the global loss."""
    return x.unflatten(0, (copies, 2, -1)).flip(1).flatten(0, 2)


def reconstruction_loss(rec: torch.Tensor, clean: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
    """L1 between the reconstruction and the clean view, over corrupted pixels (all of them if None)."""
    err = (rec.float() - clean.float()).abs()
    return global_mean(err, None if pixel_mask is None else pixel_mask.float())


class ASiTLoss(nn.Module):
    def __init__(self, cfg: LossConfig, global_out_dim: int, local_out_dim: int):
        super().__init__()
        self.cfg = cfg
        self.global_distill = (DistillationLoss(global_out_dim, cfg.student_temp, cfg.center_momentum)
                               if cfg.w_global > 0 else None)
        self.local_distill = (DistillationLoss(local_out_dim, cfg.student_temp, cfg.center_momentum)
                              if cfg.w_local > 0 else None)

    def forward(self, student: dict, teacher: dict, clean: torch.Tensor, pixel_mask: torch.Tensor | None,
                teacher_temp: float, copies: int = 1) -> dict[str, torch.Tensor]:
        """Rows of every tensor are ordered [view 0 of each clip; view 1 of each clip], repeated for each
        of `copies` corrupted copies (the teacher's and the clean views' rows as well)."""
        cfg = self.cfg
        terms, total = {}, 0.0
        if cfg.w_rec > 0:
            terms["rec"] = reconstruction_loss(student["rec"], clean, pixel_mask)
            total = total + cfg.w_rec * terms["rec"]
        if self.local_distill is not None:
            out = self.local_distill(student["local"], teacher["local"], teacher_temp)
            terms["local"], terms["local_entropy"] = out["loss"], out["entropy"]
            total = total + cfg.w_local * terms["local"]
        if self.global_distill is not None:
            # Teacher on the clean view 1 teaches the student on the corrupted view 2, and vice versa.
            out = self.global_distill(student["global"], swap_views(teacher["global"], copies), teacher_temp)
            terms["global"], terms["global_entropy"] = out["loss"], out["entropy"]
            total = total + cfg.w_global * terms["global"]
        terms["loss"] = total
        return terms

