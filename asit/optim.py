"""AdamW with decoupled weight decay on weights only: biases and norm parameters are not decayed."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def param_groups(model: nn.Module, lr_scale: Callable[[str], float] | None = None) -> list[dict]:
    """The parameters in groups of one decay flag and one learning-rate scale (`lr_scale(name)`, 1 for
    all without it): one-dimensional parameters are biases and LayerNorm scales, and decaying them only
    hurts (DINO, MAE)."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((p.ndim > 1, lr_scale(name) if lr_scale else 1.0), []).append(p)
    return [{"params": params, "decay": decay, "lr_scale": scale} for (decay, scale), params in groups.items()]


def build_adamw(model: nn.Module, lr_scale: Callable[[str], float] | None = None) -> torch.optim.AdamW:
    # The fused kernel (CPU and CUDA): the same update as the per-tensor loop, in one pass over the weights.
    return torch.optim.AdamW(param_groups(model, lr_scale), lr=0.0, weight_decay=0.0, fused=True)


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        # float(): a numpy scalar would make the checkpoint unloadable with weights_only
        group["lr"] = float(lr) * group.get("lr_scale", 1.0)  # checkpoints from before the scale
        group["weight_decay"] = float(weight_decay) if group["decay"] else 0.0


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   params, clip_grad: float, frozen=()) -> torch.Tensor:
    """One update from `loss`: backward (scaled when the scaler is on: fp16), unscale, clip the norm of
    `params`' gradients to `clip_grad` (0: no clipping), drop the gradients of `frozen`, step. Returns
    the gradient norm before clipping (0 when not clipped)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad) if clip_grad > 0 else torch.zeros(())
    for p in frozen:
        p.grad = None
    scaler.step(optimizer)
    scaler.update()
    return grad_norm
