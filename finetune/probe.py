"""Frozen evaluations of a backbone (finetune.mode=linear or knn): embed every clip once, then fit.

The linear probe is the AST head itself (LayerNorm + Linear) fitted to cached embeddings, with every
dimension standardised over the training set (`asit.frozen.fit_layernorm_probe`), so that one
learning rate suits any backbone; with one embedding (cls or mean) the probe drops into the model as
its head, so linear mode leaves a classifier checkpoint (best.pt) that predicts like any fine-tuned
one. Concatenated features (both) have no AST head of that width: no checkpoint then. k-NN has no
weights to save. With finetune.embedding_cache the embeddings outlive the run, for the next frozen
evaluation of the same backbone.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from torch import nn

from asit.ast_model import NORM_EPS, ASTModel, classifier_checkpoint
from asit.checkpoint import atomic_save, load
from asit.config import to_dict
from asit.distributed import Dist
from asit.frozen import fit_layernorm_probe, knn_scores, select_features
from asit.runlog import RunLog
from asit.sources import AudioItem
from asit.runtime import autocast, resolve_precision

from .config import FinetuneConfig
from .data import ClipDataset, Labels, Split, collect, datasets
from .evaluate import report, scores_from_logits
from .model import build_model

log = logging.getLogger("asit")


def run_frozen(cfg: FinetuneConfig, split: Split, labels: Labels, out: Path, env: Dist,
               memo: dict[str, torch.Tensor]) -> dict:
    """Embed the split's clips (those not in `memo` yet: cross-validation folds, or val and test sets
    that share files, embed each clip once), then fit and score the probe or k-NN."""
    f = cfg.finetune
    torch.manual_seed(cfg.seed)
    # The pool decides which embedding the saved classifier reads: the one the probe was trained on.
    model, frontend = build_model(cfg, len(labels), pool="mean" if f.features == "mean" else "token",
                                   dist_token=False)
    model.to(env.device).eval()
    sets = datasets(split, labels, frontend, cfg.model.num_frames)  # read once each: no feature cache
    cache = f.embedding_cache
    if cache:
        key = embedding_key(cfg, frontend, resolve_precision(cfg.train.precision, env.device))
        if not memo:  # the first fold: later ones share the memo
            memo.update(load_embeddings(cache, key))
    known = len(memo)
    feats = {name: embed(model, dataset, cfg, env, memo) for name, dataset in sets.items()}
    if cache and env.is_main and len(memo) > known:
        save_embeddings(cache, key, memo)
    if not env.is_main:  # every process helped embed; fitting the cache is one process's minutes
        return {}

    runlog = RunLog(out)
    names = [name for name in ("val", "test") if name in feats]
    extra, history = {}, []
    if f.mode == "knn":
        scores = {name: knn_scores(feats["train"], sets["train"].targets, feats[name], f.knn_k, f.knn_temperature)
                  for name in names}
    else:
        probe, history = fit_probe(model, feats["train"], sets["train"].targets, labels, cfg)
        for epoch, loss in enumerate(history, start=1):
            runlog.scalars(epoch, {"probe/train_loss": loss})
        with torch.no_grad():
            scores = {name: scores_from_logits(probe(feats[name]), labels.multilabel) for name in names}
        extra = {"probe_train_loss": history[-1]}
        if f.features != "both":
            model.head.load_state_dict(probe.state_dict())
            atomic_save(classifier_checkpoint(model.cpu(), model.cfg, frontend, list(labels.names), labels.multilabel,
                                              {"config": to_dict(cfg)}), out / "best.pt")
    results = report(scores, {name: sets[name].targets for name in names}, labels)
    runlog.scalars(len(history), {f"{name}/{k}": v for name in names for k, v in results[name].items()})
    runlog.close()
    return {**extra, **results}


def embed(model: ASTModel, dataset: ClipDataset, cfg: FinetuneConfig, env: Dist,
          memo: dict[str, torch.Tensor]) -> torch.Tensor:
    """[N, D] (or [N, 2D] for both) frozen embeddings of every clip of `dataset`, by way of `memo`."""
    amp = resolve_precision(cfg.train.precision, env.device)

    def fn(x):
        with autocast(env.device, amp):
            return model.embed(x)

    todo = list(dict.fromkeys(item.path for item in dataset.items if item.path not in memo))
    if todo:
        log.info("embedding %d clips", len(todo))
        new = ClipDataset([AudioItem(p) for p in todo], torch.zeros(len(todo), 0), dataset.frontend, dataset.num_frames)
        rows = select_features(collect(fn, new, env, cfg.train.eval_batch_size, cfg.data.num_workers),
                               cfg.finetune.features)
        memo.update(zip(todo, rows))
    return torch.stack([memo[item.path] for item in dataset.items])


def embedding_key(cfg: FinetuneConfig, frontend, amp: torch.dtype | None) -> dict:
    """What a frozen embedding depends on besides its audio file: cached ones are used only if all match."""
    init = cfg.model.init
    # The seed draws the backbone when there is no init (a random-backbone baseline).
    return {"init": [str(Path(init).resolve()), *file_stamp(init)] if init else None, "seed": cfg.seed,
            "model": to_dict(cfg.model), "frontend": to_dict(frontend), "features": cfg.finetune.features,
            "precision": str(amp)}


def file_stamp(path: str) -> list[int]:
    try:
        st = os.stat(path)
    except OSError:
        return []
    return [st.st_size, st.st_mtime_ns]


def load_embeddings(path: str, key: dict) -> dict[str, torch.Tensor]:
    """The embeddings an earlier run kept in `path` for the same key, of clips whose file is unchanged."""
    if not Path(path).is_file():
        return {}
    saved = load(path)
    if saved.get("key") != key:
        log.info("%s holds embeddings of another backbone or setting: embedding again", path)
        return {}
    kept = {p: e for p, stamp, e in zip(saved["paths"], saved["stamps"], saved["embeddings"])
            if file_stamp(p) == stamp}
    log.info("%s: %d cached embeddings", path, len(kept))
    return kept


def save_embeddings(path: str, key: dict, memo: dict[str, torch.Tensor]) -> None:
    paths = list(memo)
    atomic_save({"key": key, "paths": paths, "stamps": [file_stamp(p) for p in paths],
                 "embeddings": torch.stack([memo[p] for p in paths])}, path)


def fit_probe(model: ASTModel, feats: torch.Tensor, targets: torch.Tensor, labels: Labels,
              cfg: FinetuneConfig) -> tuple[nn.Module, list[float]]:
    """A fresh head of the model's kind (LayerNorm + Linear), fitted to the cached embeddings."""
    f = cfg.finetune
    width = feats.shape[1]
    probe = (copy.deepcopy(model.head).cpu() if f.features != "both" else
             nn.Sequential(nn.LayerNorm(width, eps=NORM_EPS), nn.Linear(width, len(labels))))
    history = fit_layernorm_probe(probe, feats, targets, labels.multilabel, f.probe_epochs, f.probe_lr,
                                  f.probe_weight_decay, f.probe_batch_size, cfg.seed)
    log.info("linear probe: training loss %.4f -> %.4f over %d epochs", history[0], history[-1], f.probe_epochs)
    return probe, history
