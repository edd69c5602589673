"""Frozen evaluations of a backbone: weighted k-NN and a linear probe on cached clip embeddings.

Both read embeddings computed once per clip (the backbone never runs inside the loops here), so they
take minutes on a CPU for thousands of clips and measure the representation alone, not a fine-tune.
Targets are [N, C] one-hot (single-label) or multi-hot rows; both evaluations return [N, C] scores that
`asit.metrics` reads either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metrics import multilabel_metrics

FEATURES = ("cls", "mean", "both", "freq", "freq_std")


def select_features(embeddings: dict[str, torch.Tensor], which: str) -> torch.Tensor:
    """The class-token embedding, the mean of patch tokens, both concatenated on the last axis, or the
    per-frequency-row readouts (`asit.vit.pool_tokens`): [..., D], [..., 2D], [..., rows * D] or
    [..., 2 * rows * D]."""
    if which == "both":
        return torch.cat([embeddings["cls"], embeddings["mean"]], dim=-1)
    if which not in embeddings:
        raise ValueError(f"features: expected one of {FEATURES}, got {which!r}")
    return embeddings[which]


def combine_blocks(x: torch.Tensor, at: list[int], how: str) -> torch.Tensor:
    """[N, blocks, D] embeddings -> [N, D] the mean of blocks `at`, or [N, len(at) * D] concatenated."""
    if how not in ("mean", "concat"):
        raise ValueError(f"layer_combine: expected mean or concat, got {how!r}")
    return x[:, at].mean(dim=1) if how == "mean" else x[:, at].flatten(1)


@torch.no_grad()
def knn_scores(train: torch.Tensor, train_targets: torch.Tensor, query: torch.Tensor, k: int = 20,
               temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """DINO's weighted k-NN: each query votes with its k most cosine-similar training clips.

    A neighbour's vote is exp(similarity / temperature) times its target row, so closer neighbours count
    more and a multi-hot neighbour votes for each of its classes. Returns [Nq, C] scores, each row
    normalised to sum to one over the votes (for single-label data, a distribution over classes).
    """
    train = F.normalize(train.float(), dim=1)
    targets = train_targets.float()
    k = min(k, train.shape[0])
    out = []
    for start in range(0, query.shape[0], chunk):  # bounded memory: Nq x Ntrain similarities at once
        q = F.normalize(query[start:start + chunk].float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)  # [n, k]
        weights = (sim / temperature).exp()
        votes = torch.einsum("nk,nkc->nc", weights, targets[idx])
        out.append(votes / weights.sum(dim=1, keepdim=True))
    return torch.cat(out)


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, bce: bool) -> torch.Tensor:
    """The loss of probes and of fine-tuning. targets: [B, C] rows, possibly soft (mixup).

    Cross-entropy for one class per clip, independent sigmoids (BCE) for tags; AST also trains
    Speech Commands with BCE, hence a flag rather than the task.
    """
    if bce:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


@dataclass
class LinearProbe:
    """A fitted multinomial (or one-vs-rest) logistic regression: scores = softmax / sigmoid of
    x @ weight.T + bias on the raw features (the standardisation is folded in)."""

    weight: torch.Tensor  # [C, D]
    bias: torch.Tensor  # [C]
    C: float  # the inverse regularisation strength the cross-validation chose
    cv_scores: dict[float, float]  # mean validation accuracy (mAP for tags) of every C of the grid
    folds: int
    grouped: bool  # whether the validation folds kept the clips' groups together

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.float() @ self.weight.T + self.bias

    def summary(self) -> dict:
        return {"C": self.C, "folds": self.folds, "grouped": self.grouped,
                "cv_scores": {f"{c:g}": s for c, s in self.cv_scores.items()}}


C_GRID = tuple(10.0 ** e for e in range(-4, 3))  # 1e-4 ... 1e2


def validation_folds(targets: np.ndarray, groups: list | None, multilabel: bool, folds: int, seed: int):
    """(splits, grouped): K folds that keep each group on one side when every clip has a group (as many
    folds as groups if there are fewer than K), else folds stratified by class (plain K-fold for tags)."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    x = np.zeros((len(targets), 1))
    if groups is not None and all(g is not None for g in groups) and len(set(groups)) >= 2:
        folds = min(folds, len(set(groups)))  # fewer groups than folds: leave one group out
        splitter = GroupKFold(folds) if multilabel else StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        return list(splitter.split(x, targets, groups)), True
    if multilabel:
        return list(KFold(folds, shuffle=True, random_state=seed).split(x)), False
    # A class with fewer clips than folds cannot appear in every fold: fewer folds then.
    folds = max(2, min(folds, int(np.unique(targets, return_counts=True)[1].min())))
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, targets)), False


def fit_logistic(z: torch.Tensor, y: torch.Tensor, C: float, classes: int, multilabel: bool,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None,
                 max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [K, D], bias [K]) of L2-regularised logistic regression, scikit-learn's objective:
    C * sum of the losses + |W|^2 / 2 (bias not penalised). Softmax cross-entropy, or independent
    sigmoids for tags (y [N, K] 0/1; else y [N] class indices). Full-batch L-BFGS, started from `init`
    (the fit of the previous C of a regularisation path).
    """
    n, d = z.shape
    w = (init[0].clone() if init else torch.zeros(classes, d, dtype=z.dtype)).requires_grad_(True)
    b = (init[1].clone() if init else torch.zeros(classes, dtype=z.dtype)).requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = z @ w.T + b
        fit = (F.binary_cross_entropy_with_logits(logits, y, reduction="sum") if multilabel
               else F.cross_entropy(logits, y, reduction="sum"))
        loss = (fit + 0.5 * (w * w).sum() / C) / n  # scaled by 1 / (C n): the same minimiser
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_linear_probe(feats: torch.Tensor, targets: torch.Tensor, multilabel: bool, groups: list | None = None,
                     grid: tuple[float, ...] = C_GRID, folds: int = 5, seed: int = 0) -> LinearProbe:
    """Logistic regression on frozen features, its L2 strength chosen by cross-validation.

    Features are standardised per dimension with the training set's statistics (a barely trained
    backbone's embeddings share one large component; MoCo v3 and MAE probe the same way). Every C of
    `grid` is scored on K validation folds that keep `groups` (speakers, source recordings) apart where
    given, so the choice rewards what carries over to unheard voices; the best C is refitted on every
    clip. Full-batch L-BFGS along the path of C (each fit starts from the last) replaces an epoch count
    to choose. targets: [N, C] rows.
    """
    x = feats.double()
    mu, sigma = x.mean(dim=0), x.std(dim=0, correction=0)
    sigma = torch.where(sigma < 1e-6, torch.ones_like(sigma), sigma)  # a constant dimension carries nothing
    z = (x - mu) / sigma
    y = targets.double() if multilabel else targets.argmax(dim=1)
    order = sorted(grid)

    def score(w, b, rows) -> float:
        logits = z[rows] @ w.T + b
        if multilabel:
            return multilabel_metrics(logits.sigmoid().numpy(), y[rows].int().numpy())["mAP"]
        return float((logits.argmax(dim=1) == y[rows]).double().mean())

    def path(rows, upto: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fits of the grid's C up to `upto`, from the strongest regularisation on, each started from
        the last: warm starts make the whole path cost little more than its last fit."""
        fits, init = [], None
        for c in order[:order.index(upto) + 1]:
            init = fit_logistic(z[rows], y[rows], c, targets.shape[1], multilabel, init)
            fits.append(init)
        return fits

    splits, grouped = validation_folds(y.numpy().astype(int), groups, multilabel, folds, seed)
    per_fold = [[score(w, b, va) for w, b in path(torch.as_tensor(tr), order[-1])] for tr, va in splits]
    cv_scores = {c: float(np.mean([fold[i] for fold in per_fold])) for i, c in enumerate(order)}
    best = max(order, key=lambda c: (cv_scores[c], -c))  # ties: the stronger regularisation
    w, b = path(torch.arange(len(z)), best)[-1]
    w = w / sigma  # the standardisation folded in: probe(x) = x @ w.T + b on raw features
    b = b - w @ mu
    return LinearProbe(w.float(), b.float(), best, cv_scores, len(splits), grouped)


def fold_into_head(head: nn.Sequential, probe: LinearProbe) -> None:
    """Make `head` = (LayerNorm, Linear), AST's classifier, compute layer_norm(x) -> probe.

    The probe must have been fitted on layer-normed features (`layer_normed`); the norm's affine is
    reset to identity, so the head predicts exactly as the probe and drops into the model.
    """
    norm, linear = head
    with torch.no_grad():
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        linear.weight.copy_(probe.weight)
        linear.bias.copy_(probe.bias)
    head.eval()


def layer_normed(feats: torch.Tensor, eps: float) -> torch.Tensor:
    """What an AST head's LayerNorm (without affine) gives: the features its linear layer reads."""
    return F.layer_norm(feats.float(), feats.shape[-1:], eps=eps)
