"""AST, the fine-tuning model: a ViT with a class and a distillation token and an MLP head on them.

The architecture is AST's exactly (and so Hugging Face's `ASTForAudioClassification`): token order
[cls, dist, patches] with a positional embedding over all of them, overlapping patches (stride 10),
the average of the two prefix tokens' outputs as the clip embedding, LayerNorm + Linear as the head.
The backbone is our timm ViT (`build_vit`), so pretrained asit and timm weights load into it by name.

A fine-tuned classifier is saved as a plain dict (`classifier_checkpoint`) that carries everything
needed to use it: architecture, front end, labels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load
from .config import pair
from .errors import InputError
from .features import FrontEndConfig, check_frontend, frontend_metadata
from .vit import ARCHS, WeightShapeError, adapt_state_dict, build_vit, pool_tokens

CLASSIFIER_FORMAT = "asit-classifier-v1"
POOLS = {"token": "cls", "mean": "mean"}  # ASTConfig.pool -> the `ASTModel.embed` output it reads
NORM_EPS = 1e-6  # timm's LayerNorm eps, used by the head too so that all norms agree (and HF matches)


@dataclass
class ASTConfig:
    arch: str  # tiny | small | base
    num_classes: int  # 0: no classifier layer; the model outputs the normalised pooled embedding
    num_mel_bins: int = 128
    num_frames: int = 1024  # 10 s at a 10 ms shift (AST's AudioSet input); any length >= patch_size
    patch_size: int | tuple[int, int] = 16  # one number (square) or (frequency, time), as `build_vit`
    patch_stride: int | tuple[int, int] = 10  # AST overlaps patches by 6 when fine-tuning
    # token: the mean of the prefix tokens' outputs, (cls + dist) / 2 as AST (cls without dist_token);
    # mean: the mean of the patch tokens
    pool: str = "token"
    drop_path: float = 0.0
    # AST's distillation token. Off, the model is exactly a pretrained backbone (one class token) plus a
    # head: what frozen evaluations of a backbone want, as a copied token shifts every attention a little.
    dist_token: bool = True

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"ast.arch: unknown {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.pool not in POOLS:
            raise ValueError(f"ast.pool must be one of {sorted(POOLS)}, got {self.pool!r}")
        if self.num_classes < 0:
            raise ValueError(f"ast.num_classes must be >= 0, got {self.num_classes}")
        patch, stride = self.patch, self.stride
        if not all(0 < s <= p for s, p in zip(stride, patch)):
            raise ValueError(f"ast.patch_stride must be in [1, patch_size={self.patch_size}] on each axis, got "
                             f"{self.patch_stride}")
        for name, p in zip(("num_mel_bins", "num_frames"), patch):
            if getattr(self, name) < p:
                raise ValueError(f"ast.{name}={getattr(self, name)} is smaller than one patch ({self.patch_size})")

    @property
    def patch(self) -> tuple[int, int]:  # (frequency, time)
        return pair(self.patch_size, "ast.patch_size")

    @property
    def stride(self) -> tuple[int, int]:  # (frequency, time)
        return pair(self.patch_stride, "ast.patch_stride")


class ASTModel(nn.Module):
    def __init__(self, cfg: ASTConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_vit(cfg.arch, (cfg.num_mel_bins, cfg.num_frames), cfg.patch_size,
                                  cfg.patch_stride, cfg.drop_path, dist_token=cfg.dist_token)
        width = self.backbone.embed_dim
        self.head = nn.Sequential(  # AST's mlp_head
            nn.LayerNorm(width, eps=NORM_EPS),
            nn.Linear(width, cfg.num_classes) if cfg.num_classes else nn.Identity(),
        )

    def embed(self, x: torch.Tensor, blocks: list[int] | None = None) -> dict[str, torch.Tensor]:
        """x [B, 1, F, T] -> the readouts of `asit.vit.pool_tokens` ("cls": (cls + dist) / 2, "mean",
        "freq", "freq_std"), read after the final norm (what frozen evaluations use): each [B, ...] from
        the last block, or, with `blocks` (0-based indices), [B, len(blocks), ...] from those, each
        through the final norm.
        """
        prefix = self.backbone.num_prefix_tokens
        rows = self.backbone.patch_embed.grid_size[0]
        if blocks is None:
            tokens = self.backbone.forward_features(x)  # [B, prefix + N, D], prefix = [cls, dist] or [cls]
            picked = [(tokens[:, prefix:], tokens[:, :prefix])]
        else:
            picked = self.backbone.forward_intermediates(x, indices=blocks, return_prefix_tokens=True, norm=True,
                                                         stop_early=True, output_fmt="NLC", intermediates_only=True)
        pooled = [pool_tokens(patches, prefix_tokens, rows) for patches, prefix_tokens in picked]
        stack = (lambda xs: xs[0]) if blocks is None else (lambda xs: torch.stack(xs, dim=1))
        return {name: stack([p[name] for p in pooled]) for name in pooled[0]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x)[POOLS[self.cfg.pool]])  # [B, C]


def load_backbone_weights(model: ASTModel, state: dict[str, torch.Tensor], meta: dict, source: str,
                          frontend: FrontEndConfig | None = None) -> None:
    """Load a pretrained backbone (from `asit.checkpoint.load_backbone`) into `model`, heads dropped.

    The weights are adapted to AST (`adapt_state_dict`): distillation token, one input channel, the
    positional embedding resampled from the source grid (`meta["grid"]`, else square) to the model's.
    With `frontend`, the source's recorded front end must match it: a model is fed what it learnt on.
    """
    if frontend is not None and meta.get("frontend"):
        check_frontend(meta["frontend"], frontend, source)
    model.backbone.load_state_dict(adapt_state_dict(state, model.backbone, source, meta.get("grid")))


def ast_from_backbone(state: dict[str, torch.Tensor], meta: dict, source: str) -> tuple[ASTModel, FrontEndConfig]:
    """A pretrained backbone as it is (no distillation token, no classifier), on its own input: its
    front end, clip length and stride. Its embeddings are exactly the backbone's.

    For frozen use of a backbone: only asit backbones record the input they were trained on, so
    other state dicts are refused.
    """
    saved = meta.get("frontend")
    if not saved:
        raise InputError(f"{source}: no front-end metadata; expected an asit teacher_backbone.pt or checkpoint.pt")
    frontend = frontend_config(saved)
    width = state["cls_token"].shape[-1] if "cls_token" in state else None
    arch = meta.get("arch") or {w: name for name, (w, _) in ARCHS.items()}.get(width)
    if arch is None:
        raise InputError(f"{source}: cannot tell the architecture (class token width {width})")
    patch = meta.get("patch_size") or 16
    cfg = ASTConfig(arch, num_classes=0, num_mel_bins=frontend.num_mel_bins, num_frames=saved["num_frames"],
                    patch_size=patch, patch_stride=meta.get("patch_stride") or patch, dist_token=False)
    model = ASTModel(cfg)
    load_backbone_weights(model, state, meta, source, frontend)
    return model.eval(), frontend


def frontend_config(saved: dict) -> FrontEndConfig:
    """The FrontEndConfig recorded by `frontend_metadata` (which adds the model's frame count)."""
    names = {f.name for f in dataclasses.fields(FrontEndConfig)}
    return FrontEndConfig(**{k: v for k, v in saved.items() if k in names})


def classifier_checkpoint(model: ASTModel, cfg: ASTConfig, frontend: FrontEndConfig, labels: list[str],
                          multilabel: bool, extra: dict | None = None) -> dict:
    """A fine-tuned classifier as plain data (tensors and builtins: it loads with weights_only=True)."""
    core = {
        "format": CLASSIFIER_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ast": asdict(cfg),
        "frontend": frontend_metadata(frontend, cfg.num_frames),
        "labels": [str(label) for label in labels],
        "multilabel": bool(multilabel),
    }
    if len(core["labels"]) != cfg.num_classes:
        raise ValueError(f"{len(core['labels'])} labels for a model with {cfg.num_classes} classes")
    clash = sorted(set(core) & set(extra or {}))
    if clash:
        raise ValueError(f"classifier_checkpoint: extra keys {clash} would overwrite the checkpoint's own")
    return {**core, **(extra or {})}


def load_classifier(path: str | Path) -> tuple[ASTModel, FrontEndConfig, list[str], bool]:
    """A classifier saved from `classifier_checkpoint`, in eval mode, with its front end and labels."""
    return classifier_from(load(path), str(path))


def is_classifier(ckpt) -> bool:
    return isinstance(ckpt, dict) and ckpt.get("format") == CLASSIFIER_FORMAT


def classifier_from(ckpt: dict, source: str) -> tuple[ASTModel, FrontEndConfig, list[str], bool]:
    """`load_classifier` of a checkpoint already read (`asit.checkpoint.load`)."""
    if not is_classifier(ckpt):
        kind = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(f"{source}: not an asit classifier checkpoint "
                         f"(format {kind!r}, expected {CLASSIFIER_FORMAT!r})")
    model = ast_with_weights(ASTConfig(**ckpt["ast"]), ckpt["model"], source)
    return model.eval(), frontend_config(ckpt["frontend"]), list(ckpt["labels"]), bool(ckpt["multilabel"])


def ast_with_weights(cfg: ASTConfig, state: dict[str, torch.Tensor], source: str) -> ASTModel:
    """An ASTModel holding exactly `state`. Built on the meta device: a random init that would be thrown
    away costs seconds for ViT-B on a CPU."""
    with torch.device("meta"):
        model = ASTModel(cfg)
    load_exact(model, state, source, assign=True)
    return model


def load_exact(module: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """`load_state_dict` that names the first tensor that is missing, unexpected or of the wrong shape."""
    target = module.state_dict()
    for key in sorted(set(target) | set(state)):
        if key not in state:
            raise WeightShapeError(f"{source}: tensor {key} is missing")
        if key not in target:
            raise WeightShapeError(f"{source}: tensor {key} does not exist in this model")
        if state[key].shape != target[key].shape:
            raise WeightShapeError(f"{source}: tensor {key} has shape {tuple(state[key].shape)}, the model "
                                   f"expects {tuple(target[key].shape)}")
    module.load_state_dict(state, assign=assign)
