"""Frozen evaluations of a backbone (finetune.mode=linear or knn): embed every clip once, then fit.

The linear probe is a logistic regression whose L2 strength is chosen by cross-validation on the
training set, the folds kept apart by speaker / source where the data says (`asit.frozen`). It reads
the layer-normed embedding, so with one embedding of the last block (cls or mean) it is exactly the
AST head (LayerNorm + Linear) and linear mode leaves a classifier checkpoint (best.pt) that predicts
like any fine-tuned one. Other features (both, other blocks) have no AST head: no checkpoint then.
k-NN has no weights to save.

Every frozen run also scores two references with the same probe on the same split: the same
architecture randomly initialised, and fbank statistics (per-bin mean and std over time). With
finetune.embedding_cache the embeddings outlive the run, for the next frozen evaluation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from asit.ast_model import NORM_EPS, ASTModel, classifier_checkpoint
from asit.checkpoint import atomic_save, load
from asit.config import to_dict
from asit.distributed import Dist
from asit.frozen import combine_blocks, fit_linear_probe, fold_into_head, knn_scores, layer_normed, select_features
from asit.runlog import RunLog
from asit.sources import AudioItem
from asit.runtime import autocast, resolve_precision

from .config import FinetuneConfig
from .data import ClipDataset, FbankStatistics, Labels, Split, collect, datasets
from .evaluate import report, scores_from_logits
from .model import build_model

log = logging.getLogger("asit")
REFERENCES = ("random_init", "fbank_stats")


def block_indices(layers: list[int], depth: int) -> list[int]:
    """finetune.layers (from 1, negative from the end) -> sorted 0-based block indices."""
    out = set()
    for layer in layers:
        index = layer - 1 if layer > 0 else depth + layer
        if not 0 <= index < depth:
            raise ValueError(f"finetune.layers: block {layer} does not exist in a {depth}-block backbone")
        out.add(index)
    return sorted(out)


def run_frozen(cfg: FinetuneConfig, split: Split, labels: Labels, out: Path, env: Dist,
               memo: dict[str, dict]) -> dict:
    """Embed the split's clips (those not in `memo` yet: cross-validation folds, or val and test sets
    that share files, embed each clip once), then fit and score the probe or k-NN, on the backbone
    and on the references."""
    f = cfg.finetune
    torch.manual_seed(cfg.seed)
    # The pool decides which embedding the saved classifier reads: the one the probe was trained on.
    model, frontend = build_model(cfg, len(labels), pool="mean" if f.features == "mean" else "token",
                                   dist_token=False)
    model.to(env.device).eval()
    depth = len(model.backbone.blocks)
    blocks = block_indices(f.layers, depth)
    read = list(range(depth)) if f.layer_sweep else blocks  # the blocks to embed: [N, len(read), D]
    sets = datasets(split, labels, frontend, cfg.model.num_frames)  # read once each: no feature cache
    amp = resolve_precision(cfg.train.precision, env.device)

    def embedded(name: str, net: ASTModel) -> dict[str, torch.Tensor]:
        key = embedding_key(cfg, frontend, amp, read, random=name == "random_init")
        store = memo.setdefault(name, {})
        if f.embedding_cache and not store:  # the first fold: later ones share the memo
            store.update(load_embeddings(f.embedding_cache, key))
        known = len(store)
        feats = {part: embed(net, dataset, read, cfg, env, store) for part, dataset in sets.items()}
        if f.embedding_cache and env.is_main and len(store) > known:
            save_embeddings(f.embedding_cache, key, store)
        return feats

    backbone = embedded("backbone", model)
    at = [read.index(b) for b in blocks]
    candidates = {"backbone": {p: combine_blocks(x, at, f.layer_combine) for p, x in backbone.items()}}
    if f.layer_sweep:
        candidates |= {f"block_{b + 1}": {p: x[:, i] for p, x in backbone.items()} for i, b in enumerate(read)}
    if f.baselines:
        torch.manual_seed(cfg.seed)
        random = ASTModel(model.cfg).to(env.device).eval()  # the same architecture and input, untrained
        feats = embedded("random_init", random)
        candidates["random_init"] = {p: combine_blocks(x, at, f.layer_combine) for p, x in feats.items()}
        candidates["fbank_stats"] = {
            p: collect(lambda x: {"x": x}, FbankStatistics(d.items, d.targets, frontend, d.num_frames), env,
                       cfg.train.eval_batch_size, cfg.data.num_workers)["x"] for p, d in sets.items()}
    if not env.is_main:  # every process helped embed; fitting is one process's work
        return {}

    groups = [item.group for item in split.train]
    scored = {name: evaluate(feats, sets, labels, groups, cfg, layer_norm=name != "fbank_stats")
              for name, feats in candidates.items()}
    results, probe = scored.pop("backbone")
    runlog = RunLog(out)
    if probe is not None:
        results["probe"] = probe.summary()
        if f.features in ("cls", "mean") and blocks == [depth - 1]:
            fold_into_head(model.head, probe)
            atomic_save(classifier_checkpoint(model.cpu(), model.cfg, frontend, list(labels.names), labels.multilabel,
                                              {"config": to_dict(cfg)}), out / "best.pt")
        else:
            log.info("no best.pt: an AST head reads one embedding of the last block (finetune.features=%s, "
                     "finetune.layers=%s)", f.features, f.layers)
    for name, (res, fitted) in scored.items():
        entry = {k: res[k] for k in ("val", "test")} | ({"probe": fitted.summary()} if fitted else {})
        results.setdefault("baselines" if name in REFERENCES else "layers", {})[name] = entry
    runlog.scalars(0, {f"{name}/{k}": v for name in ("val", "test") if results[name]
                       for k, v in results[name].items()})
    runlog.close()
    log_comparison(results, f.mode, labels.multilabel)
    return results


def evaluate(feats: dict[str, torch.Tensor], sets: dict[str, ClipDataset], labels: Labels, groups: list,
             cfg: FinetuneConfig, layer_norm: bool):
    """(metrics on val and test, the fitted probe or None for k-NN) of one set of features."""
    f = cfg.finetune
    names = [name for name in ("val", "test") if name in feats]
    targets = sets["train"].targets
    if f.mode == "knn":
        scores = {name: knn_scores(feats["train"], targets, feats[name], f.knn_k, f.knn_temperature)
                  for name in names}
        probe = None
    else:
        if layer_norm:  # the AST head's LayerNorm, so that the probe folds into it
            feats = {name: layer_normed(x, NORM_EPS) for name, x in feats.items()}
        probe = fit_linear_probe(feats["train"], targets, labels.multilabel, groups, tuple(f.probe_grid),
                                 f.probe_folds, cfg.seed)
        scores = {name: scores_from_logits(probe.logits(feats[name]), labels.multilabel) for name in names}
    return report(scores, {name: sets[name].targets for name in names}, labels), probe


def log_comparison(results: dict, mode: str, multilabel: bool) -> None:
    """One line per set: the backbone against the references (and each block of a sweep)."""
    metric = "mAP" if multilabel else "accuracy"
    rows = {"backbone": results} | results.get("baselines", {}) | results.get("layers", {})
    for part in ("val", "test"):
        if results.get(part):
            log.info("%s %s %s: %s", "linear probe" if mode == "linear" else "k-NN", part, metric,
                     ", ".join(f"{name} {row[part][metric]:.4f}" for name, row in rows.items()))
    if "probe" in results:
        p = results["probe"]
        log.info("linear probe: C = %g chosen by %d-fold cross-validation%s", p["C"], p["folds"],
                 " grouped by the data's group column" if p["grouped"] else "")


def embed(model: ASTModel, dataset: ClipDataset, blocks: list[int], cfg: FinetuneConfig, env: Dist,
          memo: dict[str, torch.Tensor]) -> torch.Tensor:
    """[N, len(blocks), D] (D doubled for both) frozen embeddings of every clip of `dataset`, by way of
    `memo`."""
    amp = resolve_precision(cfg.train.precision, env.device)

    def fn(x):
        with autocast(env.device, amp):
            return model.embed(x, blocks)

    todo = list(dict.fromkeys(item.path for item in dataset.items if item.path not in memo))
    if todo:
        log.info("embedding %d clips", len(todo))
        new = ClipDataset([AudioItem(p) for p in todo], torch.zeros(len(todo), 0), dataset.frontend, dataset.num_frames)
        rows = select_features(collect(fn, new, env, cfg.train.eval_batch_size, cfg.data.num_workers),
                               cfg.finetune.features)
        memo.update(zip(todo, rows))
    return torch.stack([memo[item.path] for item in dataset.items])


def embedding_key(cfg: FinetuneConfig, frontend, amp: torch.dtype | None, blocks: list[int],
                  random: bool = False) -> dict:
    """What a frozen embedding depends on besides its audio file: cached ones are used only if all match."""
    init = None if random else cfg.model.init
    # The seed draws the backbone when there is no init (a random-backbone baseline).
    return {"init": [str(Path(init).resolve()), *file_stamp(init)] if init else None, "seed": cfg.seed,
            "model": to_dict(cfg.model) | {"init": None}, "frontend": to_dict(frontend),
            "features": cfg.finetune.features, "blocks": blocks, "precision": str(amp)}


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
    saved = [e for e in load(path).get("entries", []) if e["key"] == key]
    if not saved:
        log.info("%s holds no embeddings of this backbone and setting: embedding", path)
        return {}
    kept = {p: e for p, stamp, e in zip(saved[0]["paths"], saved[0]["stamps"], saved[0]["embeddings"])
            if file_stamp(p) == stamp}
    log.info("%s: %d cached embeddings", path, len(kept))
    return kept


def save_embeddings(path: str, key: dict, memo: dict[str, torch.Tensor]) -> None:
    """Keep `memo` in `path` under `key`, beside the entries of other keys (a backbone and its random
    baseline share one file)."""
    others = [e for e in (load(path).get("entries", []) if Path(path).is_file() else []) if e["key"] != key]
    paths = list(memo)
    entry = {"key": key, "paths": paths, "stamps": [file_stamp(p) for p in paths],
             "embeddings": torch.stack([memo[p] for p in paths])}
    atomic_save({"entries": others + [entry]}, path)
