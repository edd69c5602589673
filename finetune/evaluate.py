"""Scoring a model's outputs on a labelled set with AST's metrics."""

from __future__ import annotations

import torch

from asit.metrics import multilabel_metrics, per_class_report, singlelabel_metrics

from .data import Labels


def scores_from_logits(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return logits.sigmoid() if multilabel else logits.softmax(dim=1)


def truth(targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """What asit.metrics reads: [N, C] 0/1 tags, or [N] class indices."""
    return targets.int() if multilabel else targets.argmax(dim=1)


def score(scores: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> dict:
    """AST's metrics: mAP, mean AUC and d-prime for tags; accuracy and macro F1 for one class per clip."""
    metrics = multilabel_metrics if multilabel else singlelabel_metrics
    return metrics(scores, truth(targets, multilabel))


def selection_metric(multilabel: bool) -> str:
    """What `best.pt` maximises on the validation set."""
    return "mAP" if multilabel else "accuracy"


def report(scores: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], labels: Labels,
           per_class: bool = True) -> dict:
    """{"val": metrics, "test": metrics} (None for a set that is absent) of [N, C] scores per set; with
    `per_class`, also the per-class report on test, or on val without a test set."""
    out = {name: score(scores[name], targets[name], labels.multilabel) if name in scores else None
           for name in ("val", "test")}
    if per_class and scores:
        name = "test" if "test" in scores else "val"
        out["per_class"] = {"set": name, "classes": per_class_report(
            scores[name], truth(targets[name], labels.multilabel), labels.names, labels.multilabel)}
    return out
