"""The ASiT network: a ViT backbone with the heads its losses need.

The student carries all three heads; the teacher is the same network without the reconstruction head
(it never reconstructs) and without stochastic depth. A head whose loss is switched off is not built at
all, so an ablation computes exactly what it claims to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .heads import DINOHead, ReconstructionHead
from .config import pair
from .vit import build_vit, grid_of


@dataclass
class ModelConfig:
    arch: str = "small"  # tiny | small | base
    # Mel bins x frames of a patch: one number (square, the paper's 16), or [frequency, time], e.g.
    # [16, 4]: 40 ms tokens, as speech models use (M2D, SSAST's frame patches). Patches do not overlap
    # in pretraining (stride = patch size).
    patch_size: int | tuple[int, int] = 16
    drop_path: float = 0.1  # stochastic depth of the student's last block; the teacher has none
    # Optional backbone to start from (continued pretraining, e.g. domain adaptation on small data):
    # an asit checkpoint.pt or teacher_backbone.pt, or a timm ViT state dict (RGB ones are averaged
    # into one channel and their positional embedding resampled).
    init: str | None = None
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_batchnorm: bool = False  # batch norm in the distillation heads' MLPs (see configs/ablation/base.yaml)
    global_out_dim: int = 8192  # K of the class-token head
    local_out_dim: int = 1024  # K of the per-token head
    # The attention kernel, never the result: separate ops for bf16 on CPUs, SDPA elsewhere (asit.vit.set_attention).
    attention: Literal["auto", "fused", "math"] = "auto"

    def __post_init__(self):
        pair(self.patch_size, "model.patch_size")  # fails here, naming the key, rather than in the model


class ASiTNetwork(nn.Module):
    def __init__(self, backbone: nn.Module, global_head: nn.Module | None, local_head: nn.Module | None,
                 rec_head: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.global_head = global_head
        self.local_head = local_head
        self.rec_head = rec_head

    def last_layers(self) -> list[nn.Parameter]:
        """The prototype layers that stay frozen early on (DINO: it stabilises the first epoch)."""
        return [h.last_layer.weight for h in (self.global_head, self.local_head) if h is not None]

    def forward(self, x: torch.Tensor, local_select: torch.Tensor) -> dict[str, torch.Tensor]:
        # x: [B, 1, F, T]; local_select: [B, N] bool, the tokens the local loss reads
        feats = self.backbone.forward_features(x)  # [B, 1 + N, D], after the final norm
        cls, tokens = feats[:, 0], feats[:, 1:]
        out = {"cls": cls}
        if self.global_head is not None:
            out["global"] = self.global_head(cls)  # [B, K_global]
        if self.local_head is not None:
            # Only the tokens the loss reads go through the 2048-wide MLP.
            out["local"] = self.local_head(tokens[local_select])  # [M, K_local]
        if self.rec_head is not None:
            out["rec"] = self.rec_head(tokens)  # [B, 1, F, T]
        return out


def build_network(cfg: ModelConfig, input_size: tuple[int, int], *, teacher: bool, use_rec: bool,
                  use_local: bool, use_global: bool) -> ASiTNetwork:
    backbone = build_vit(cfg.arch, input_size, cfg.patch_size, drop_path=0.0 if teacher else cfg.drop_path)
    width = backbone.embed_dim

    def dino(out_dim: int) -> DINOHead:
        return DINOHead(width, out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim, cfg.head_batchnorm)

    return ASiTNetwork(
        backbone,
        global_head=dino(cfg.global_out_dim) if use_global else None,
        local_head=dino(cfg.local_out_dim) if use_local else None,
        rec_head=(ReconstructionHead(width, pair(cfg.patch_size), grid_of(backbone), cfg.head_hidden_dim,
                                     cfg.head_bottleneck_dim) if use_rec and not teacher else None),
    )


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, for every teacher parameter (matched by name)."""
    student_params = dict(student.named_parameters())
    t = [p for _, p in teacher.named_parameters()]
    s = [student_params[name] for name, _ in teacher.named_parameters()]
    # lerp: t + (1 - m)(s - t), the same average in one pass over the weights instead of two
    torch._foreach_lerp_(t, s, 1.0 - momentum)
