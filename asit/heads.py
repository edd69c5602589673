"""Projection heads on top of the backbone's tokens: DINO heads for distillation, and the
reconstruction head that turns patch tokens back into spectrogram pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .errors import InputError


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, batchnorm: bool = False) -> nn.Sequential:
    """Linear-GELU-Linear-GELU-Linear, optionally with batch norm after the hidden linears (DINO's
    `use_bn_in_head`). The norm uses the statistics of the batch, also in the teacher."""
    def hidden(d_in: int) -> list[nn.Module]:
        norm = [nn.BatchNorm1d(hidden_dim, track_running_stats=False)] if batchnorm else []
        return [nn.Linear(d_in, hidden_dim), *norm, nn.GELU()]

    return nn.Sequential(*hidden(in_dim), *hidden(hidden_dim), nn.Linear(hidden_dim, out_dim))


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> bias-free linear layer to K prototypes with unit-norm rows.

    The prototypes' norm is frozen at 1 (weight normalisation with g = 1), which with the L2-normalised
    bottleneck bounds the logits and keeps the distillation stable.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 batchnorm: bool = False):
        super().__init__()
        self.batchnorm = batchnorm
        self.mlp = _mlp(in_dim, hidden_dim, bottleneck_dim, batchnorm)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.apply(_init_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., D] -> [..., K]
        if self.batchnorm and x[..., 0].numel() < 2:
            # Otherwise torch's own error, which does not say which setting is at fault.
            raise InputError(f"a DINO head with batch norm needs at least 2 inputs per process, got "
                             f"{x[..., 0].numel()} (few clips and few corrupted tokens): raise train.batch_size "
                             f"or the corruption ratio, or set model.head_batchnorm=false")
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_layer.weight, dim=-1))


class ReconstructionHead(nn.Module):
    """Per-token MLP, then a transposed convolution (kernel = stride = patch) back to pixels."""

    def __init__(self, in_dim: int, patch_size: tuple[int, int], grid: tuple[int, int], hidden_dim: int = 2048,
                 bottleneck_dim: int = 256):
        super().__init__()
        self.grid = tuple(grid)
        self.mlp = _mlp(in_dim, hidden_dim, bottleneck_dim)
        self.to_pixels = nn.ConvTranspose2d(bottleneck_dim, 1, kernel_size=patch_size, stride=patch_size)
        self.apply(_init_linear)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # tokens: [B, N, D] -> [B, 1, F, T]
        # The transposed convolution's patches do not overlap, so it is one matmul per token (the
        # module keeps its parameters): CPU kernels of transposed convolutions are slow at this shape.
        w, (p, q) = self.to_pixels.weight, self.to_pixels.kernel_size  # w: [C, 1, p, q]
        pixels = F.linear(self.mlp(tokens), w.flatten(1).T, self.to_pixels.bias.expand(p * q))
        return rearrange(pixels, "b (f t) (p q) -> b 1 (f p) (t q)", f=self.grid[0], p=p)
