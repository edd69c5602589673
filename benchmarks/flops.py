"""Analytic matmul FLOPs of the ViT, the heads and a whole ASiT pretraining step.

One multiply-add counts as 2 FLOPs. Only matmuls and convolutions are counted: norms, softmax, GELU,
the losses, clipping, AdamW and the EMA are O(parameters) or O(activations) elementwise work, under 1%
of the matmuls here (and the FLOPs torch.utils.flop_counter counts are the same).
"""

from __future__ import annotations

from asit.model import ModelConfig
from asit.vit import ARCHS


def vit_forward_flops(views: int, grid: tuple[int, int], width: int, depth: int = 12, prefix_tokens: int = 1,
                      patch_pixels: int = 256, mlp_ratio: float = 4.0) -> dict[str, int]:
    """Matmul FLOPs of a ViT forward over `views` inputs of `grid` patches, split by kind.

    With n views, P = grid patches, N = P + prefix tokens, D = width, H = mlp_ratio * D, L = depth:
        patch_embed  2 n P (patch_pixels) D            the patch projection (a strided convolution)
        attn_linear  L * 2 n N D (3D + D)              qkv and the output projection
        attn_scores  L * 2 * 2 n N^2 D                 Q K^T and the weighted sum A V (all heads together)
        mlp          L * 2 * 2 n N D H                 fc1 and fc2
    """
    patches = grid[0] * grid[1]
    tokens = patches + prefix_tokens
    hidden = int(width * mlp_ratio)  # as timm's Block
    return {
        "patch_embed": 2 * views * patches * patch_pixels * width,
        "attn_linear": depth * 2 * views * tokens * width * 4 * width,
        "attn_scores": depth * 2 * 2 * views * tokens * tokens * width,
        "mlp": depth * 2 * 2 * views * tokens * width * hidden,
    }


def mlp_head_flops(rows: int, in_dim: int, hidden: int, bottleneck: int) -> int:
    """The heads' 3-layer MLP (in -> hidden -> hidden -> bottleneck) on `rows` vectors."""
    return 2 * rows * (in_dim * hidden + hidden * hidden + hidden * bottleneck)


def dino_head_flops(rows: int, in_dim: int, hidden: int, bottleneck: int, prototypes: int) -> int:
    """MLP, then the (weight-normalised) bias-free layer to K prototypes."""
    return mlp_head_flops(rows, in_dim, hidden, bottleneck) + 2 * rows * bottleneck * prototypes


def rec_head_flops(rows: int, in_dim: int, hidden: int, bottleneck: int, patch: int) -> int:
    """MLP, then the transposed convolution (kernel = stride = patch): bottleneck -> patch^2 pixels per token."""
    return mlp_head_flops(rows, in_dim, hidden, bottleneck) + 2 * rows * bottleneck * patch * patch


def step_flops(model: ModelConfig, grid: tuple[int, int], clips: int, local_tokens: float) -> dict[str, float]:
    """Matmul FLOPs of one ASiT pretraining step of `clips` clips (2 views each), every loss on.

        teacher  = ViT(2B views) + global head(2B class tokens) + local head(M tokens)       forward only
        student  = ViT(2B views) + global head(2B) + local head(M) + reconstruction head(2B P tokens)
        step     = teacher + 3 * student - patch_embed

    M (`local_tokens`) is the number of tokens the local loss reads in the whole step (both views; the
    corrupted ones by default, so it varies per step: pass the measured mean). The student costs 3x its
    forward (backward = grads of the inputs + grads of the weights, each as much as the forward), except
    the patch embedding, whose input is data and needs no gradient: 2x. The teacher has no reconstruction
    head. This is exactly what torch.utils.flop_counter counts on the same step (tests/test_bench.py).
    """
    width = ARCHS[model.arch][0]
    views = 2 * clips
    rows = views * grid[0] * grid[1]
    dims = (width, model.head_hidden_dim, model.head_bottleneck_dim)
    backbone = vit_forward_flops(views, grid, width, patch_pixels=model.patch_size**2)
    heads = dino_head_flops(views, *dims, model.global_out_dim) + dino_head_flops(local_tokens, *dims, model.local_out_dim)
    rec = rec_head_flops(rows, *dims, model.patch_size)
    parts = {
        "teacher_forward": sum(backbone.values()) + heads,
        "student_forward": sum(backbone.values()) + heads + rec,
        "student_backward": 2 * (sum(backbone.values()) + heads + rec) - backbone["patch_embed"],
    }
    return {**parts, "total": sum(parts.values())}
