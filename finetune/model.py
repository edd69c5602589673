"""The model a fine-tuning run starts from: AST on the configured input, its backbone from model.init."""

from __future__ import annotations

import dataclasses
import logging
import math

from asit.ast_model import ASTConfig, ASTModel, load_backbone_weights
from asit.checkpoint import load_backbone
from asit.features import AUDIOSET_MEAN, AUDIOSET_STD, FrontEndConfig

from .config import FinetuneConfig

log = logging.getLogger("asit")


def adopt_stats(frontend: FrontEndConfig, saved: dict | None, source: str) -> FrontEndConfig:
    """The front end to use with a backbone whose own front end (`saved`) may be recorded.

    A config that leaves the normalisation stats at AudioSet's defaults takes the checkpoint's: a
    backbone pretrained on a data set's own statistics should see inputs scaled as it learnt them. Any
    other difference (rate, bins, windows, or stats set explicitly) is left to the front-end check, which
    refuses it and says what differs.
    """
    if not saved or not (math.isclose(frontend.mean, AUDIOSET_MEAN) and math.isclose(frontend.std, AUDIOSET_STD)):
        return frontend
    if math.isclose(saved["mean"], frontend.mean) and math.isclose(saved["std"], frontend.std):
        return frontend
    log.info("adopting the normalisation stats of %s: mean %.4f, std %.4f", source, saved["mean"], saved["std"])
    return dataclasses.replace(frontend, mean=float(saved["mean"]), std=float(saved["std"]))


def build_model(cfg: FinetuneConfig, num_classes: int, pool: str | None = None,
                dist_token: bool = True) -> tuple[ASTModel, FrontEndConfig]:
    """AST with `num_classes` outputs (and `pool`, default model.pool), and the front end to feed it.

    `dist_token=False` keeps the backbone exactly as pretrained (no copied distillation token, which
    shifts every token's attention a little): what frozen evaluations must judge.
    """
    m = cfg.model
    state, meta = load_backbone(m.init, m.init_network) if m.init else (None, {})
    patch = m.patch_size or meta.get("patch_size") or 16
    ast = ASTConfig(arch=m.arch, num_classes=num_classes, num_mel_bins=cfg.frontend.num_mel_bins,
                    num_frames=m.num_frames, patch_size=patch, patch_stride=m.patch_stride or patch,
                    pool=pool or m.pool, drop_path=m.drop_path, dist_token=dist_token)
    model = ASTModel(ast)
    frontend = cfg.frontend
    if m.init:
        frontend = adopt_stats(frontend, meta.get("frontend"), m.init)
        load_backbone_weights(model, state, meta, m.init, frontend)
        log.info("initialised the backbone from %s", m.init)
    return model, frontend
