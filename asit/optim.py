"""AdamW with decoupled weight decay on weights only: biases and norm parameters are not decayed."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module) -> list[dict]:
    # One-dimensional parameters are biases and LayerNorm scales: decaying them only hurts (DINO, MAE).
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "decay": True}, {"params": no_decay, "decay": False}]


def build_adamw(model: nn.Module) -> torch.optim.AdamW:
    # The fused kernel (CPU and CUDA): the same update as the per-tensor loop, in one pass over the weights.
    return torch.optim.AdamW(param_groups(model), lr=0.0, weight_decay=0.0, fused=True)


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = float(lr)  # a numpy scalar would make the checkpoint unloadable with weights_only
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
