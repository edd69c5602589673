"""The backbone: timm's VisionTransformer on one-channel spectrograms, plus weight adaptation.

We compose timm's ViT rather than fork it: only the patch embedding changes (a configurable stride, as
AST overlaps patches when fine-tuning). Loading weights from another grid (other clip length, stride or
input size) or from an RGB image model goes through `adapt_state_dict`, the one place that knows how.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn

from .config import Pair, pair
from .errors import InputError

ARCHS = {  # name -> (width, heads); all are 12 blocks deep with MLP ratio 4
    "tiny": (192, 3),
    "small": (384, 6),
    "base": (768, 12),
}


class PatchProjection(nn.Conv2d):
    """A convolution whose kernel is a whole patch, computed as one matmul over the unfolded patches:
    the same function and parameters as nn.Conv2d. CPU convolution kernels are slow at this shape (a
    large kernel, one input channel), while the matmul runs on the fast GEMM kernels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, D, gh, gw]
        grid = [(size - k) // s + 1 for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride)]
        patches = F.unfold(x, self.kernel_size, stride=self.stride)  # [B, C k k, gh gw]
        tokens = F.linear(patches.transpose(1, 2), self.weight.flatten(1), self.bias)  # [B, gh gw, D]
        return tokens.transpose(1, 2).unflatten(2, grid)


class SpectrogramPatchEmbed(PatchEmbed):
    """timm's PatchEmbed with a stride that may be smaller than the patch (overlapping patches); patch and
    stride may differ between frequency and time."""

    def __init__(self, *args, stride: Pair | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        p = self.patch_size
        stride = pair(stride or p, "patch_stride")
        self.proj = PatchProjection(
            self.proj.in_channels, self.proj.out_channels, kernel_size=p, stride=stride,
            bias=self.proj.bias is not None,
        )
        self.stride = stride
        self.grid_size = tuple((s - k) // st + 1 for s, k, st in zip(self.img_size, p, stride))
        self.num_patches = self.grid_size[0] * self.grid_size[1]


def build_vit(
    arch: str,
    input_size: tuple[int, int],
    patch_size: int | Pair = 16,
    patch_stride: int | Pair | None = None,
    drop_path: float = 0.0,
    dist_token: bool = False,
) -> VisionTransformer:
    """A ViT over [B, 1, F, T] spectrograms with a class token and no classifier (`num_classes=0`).

    `patch_size` and `patch_stride`: one number (square), or (frequency, time), e.g. (16, 4): finer
    time tokens for speech, as M2D and SSAST's frame patches.

    `dist_token` adds AST's distillation token: timm's one register token is exactly that (a learned
    prefix token after the class token, with its own positional embedding).
    """
    if arch not in ARCHS:
        raise ValueError(f"model.arch: unknown {arch!r}; choose one of {sorted(ARCHS)}")
    width, heads = ARCHS[arch]
    return VisionTransformer(
        img_size=tuple(input_size),
        patch_size=pair(patch_size),
        in_chans=1,
        num_classes=0,
        embed_dim=width,
        depth=12,
        num_heads=heads,
        mlp_ratio=4.0,
        drop_path_rate=drop_path,
        reg_tokens=1 if dist_token else 0,
        embed_layer=partial(SpectrogramPatchEmbed, stride=pair(patch_stride or patch_size, "patch_stride")),
    )


def pool_tokens(patches: torch.Tensor, prefix: torch.Tensor, rows: int) -> dict[str, torch.Tensor]:
    """The readouts of a frozen ViT from its normed patch tokens [B, N, D] (frequency rows outer, time
    inner) and prefix tokens [B, P, D]: each [B, D], or [B, rows * D] and [B, 2 * rows * D] for freq and
    freq_std.

    cls: the mean of the prefix tokens ((cls + dist) / 2 for AST); mean: the mean of the patch tokens;
    freq: each frequency row's tokens averaged over time, rows concatenated, which keeps where in
    frequency a pattern is (the readout of MSM-MAE, M2D and ATST, EVAR's for frozen audio ViTs);
    freq_std: freq followed by each row's standard deviation over time (how much it varies, as the
    per-bin std of fbank statistics).
    """
    per_row = rearrange(patches, "b (f t) d -> b f t d", f=rows)
    freq = per_row.mean(dim=2).flatten(1)
    return {"cls": prefix.mean(dim=1), "mean": patches.mean(dim=1), "freq": freq,
            "freq_std": torch.cat([freq, per_row.std(dim=2, correction=0).flatten(1)], dim=1)}


ATTENTION = ("auto", "fused", "math")


def set_attention(module: nn.Module, kind: str, device: torch.device, amp_dtype: torch.dtype | None) -> None:
    """Pick the attention kernel of every timm attention layer in `module`; the result is the same.

    fused: `scaled_dot_product_attention` (flash / memory-efficient kernels). math: q k^T, softmax and
    the product with v as separate ops. auto: math when training on a CPU under bf16/fp16 autocast,
    where the fused CPU kernel's backward is the slower one (on AVX-512 and AMX CPUs alike: `make
    bench` times both), fused everywhere else (fp32 on a CPU, CPU inference, GPUs).
    """
    if kind not in ATTENTION:
        raise ValueError(f"attention: expected one of {ATTENTION}, got {kind!r}")
    fused = kind == "fused" or (kind == "auto" and (device.type != "cpu" or amp_dtype is None))
    for m in module.modules():
        if isinstance(m, Attention):
            m.fused_attn = fused


def grid_of(vit: VisionTransformer) -> tuple[int, int]:
    return tuple(vit.patch_embed.grid_size)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    shrink: str = "cut",
) -> torch.Tensor:
    """Adapt a [1, prefix + Fo*To, D] positional embedding to an (Fn, Tn) grid, one axis at a time.

    Growing an axis interpolates bilinearly. Shrinking an axis cuts its centre (AST's rule, which keeps
    the learned embeddings exact) or interpolates (`shrink="interpolate"`). Prefix tokens (class,
    distillation) are untouched.
    """
    if shrink not in ("cut", "interpolate"):
        raise ValueError(f"shrink must be 'cut' or 'interpolate', got {shrink!r}")
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if patches.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(
            f"pos_embed holds {patches.shape[1]} patch positions, not the {old_grid[0]}x{old_grid[1]} "
            f"grid it was said to have"
        )
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    grid = rearrange(patches, "1 (f t) d -> 1 d f t", f=old_grid[0])
    for axis, (old, new) in enumerate(zip(old_grid, new_grid)):
        if new == old:
            continue
        if new < old and shrink == "cut":
            start = old // 2 - new // 2
            grid = grid.narrow(2 + axis, start, new)
        else:
            size = list(grid.shape[2:])
            size[axis] = new
            grid = F.interpolate(grid.float(), size=tuple(size), mode="bilinear", align_corners=False)
            grid = grid.to(pos_embed.dtype)
    return torch.cat([prefix, rearrange(grid, "1 d f t -> 1 (f t) d")], dim=1)


class WeightShapeError(InputError):
    pass


def adapt_state_dict(
    state: dict[str, torch.Tensor],
    vit: VisionTransformer,
    source: str,
    old_grid: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Make a ViT state dict (asit, timm or DeiT; one or three input channels) fit `vit`.

    RGB patch-embedding weights are averaged into one channel (AST); a distillation token missing from
    the source is started as a copy of the class token (AST); the positional embedding is resampled to
    `vit`'s grid, from `old_grid` if known, else from a square grid. Classifier heads are dropped.
    Anything else that does not fit is an error naming the tensor.
    """
    target = vit.state_dict()
    # DeiT's distillation token is timm's register token (`build_vit(dist_token=True)`).
    state = {("reg_token" if k == "dist_token" else k): v for k, v in state.items()
             if not k.startswith(("head.", "fc_norm.", "head_dist."))}
    if "reg_token" in target and "reg_token" not in state and "cls_token" in state:
        state = _add_dist_token(state)
    out = {}
    for key, value in state.items():
        if key not in target:
            raise WeightShapeError(f"{source}: tensor {key} does not exist in a ViT of this kind")
        if key == "patch_embed.proj.weight" and value.shape[1] == 3 and target[key].shape[1] == 1:
            value = value.mean(dim=1, keepdim=True)
        if key == "pos_embed" and value.shape != target[key].shape:
            prefix = vit.num_prefix_tokens
            grid = _source_grid(value.shape[1] - prefix, old_grid, source)
            value = resample_pos_embed(value, grid, grid_of(vit), prefix)
        if value.shape != target[key].shape:
            raise WeightShapeError(
                f"{source}: tensor {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target[key].shape)}"
            )
        out[key] = value
    missing = sorted(set(target) - set(out))
    if missing:
        raise WeightShapeError(f"{source}: missing tensors {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    return out


def _add_dist_token(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AST's start for a distillation token the source lacks: the class token and its position, copied.

    The two tokens then have identical outputs until fine-tuning moves them apart (but every token now
    attends to the class token twice, so outputs differ slightly from the source model's).
    """
    state = dict(state, reg_token=state["cls_token"].clone())
    if "pos_embed" in state:
        pos = state["pos_embed"]  # [1, 1 + N, D] -> [1, 2 + N, D]
        state["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1], pos[:, 1:]], dim=1)
    return state


def _source_grid(num_patches: int, old_grid: tuple[int, int] | None, source: str) -> tuple[int, int]:
    side = round(num_patches**0.5)
    grid = tuple(old_grid) if old_grid else (side, side)
    if grid[0] * grid[1] != num_patches:
        known = "as its metadata says" if old_grid else "assumed square: the source does not say"
        raise WeightShapeError(
            f"{source}: tensor pos_embed holds {num_patches} patch positions, not a {grid[0]}x{grid[1]} "
            f"grid ({known})"
        )
    return grid
