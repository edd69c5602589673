"""Frozen evaluations of a backbone: weighted k-NN and a linear probe on cached clip embeddings.

Both read embeddings computed once per clip (the backbone never runs inside the loops here), so they
take minutes on a CPU for thousands of clips and measure the representation alone, not a fine-tune.
Targets are [N, C] one-hot (single-label) or multi-hot rows; both evaluations return [N, C] scores that
`asit.metrics` reads either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = ("cls", "mean", "both")


def select_features(embeddings: dict[str, torch.Tensor], which: str) -> torch.Tensor:
    """The class-token embedding, the mean of patch tokens, or both concatenated: [N, D] or [N, 2D]."""
    if which == "both":
        return torch.cat([embeddings["cls"], embeddings["mean"]], dim=1)
    if which not in embeddings:
        raise ValueError(f"features: expected one of {FEATURES}, got {which!r}")
    return embeddings[which]


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


def train_probe(probe: nn.Module, feats: torch.Tensor, targets: torch.Tensor, multilabel: bool,
                epochs: int = 100, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 256,
                seed: int = 0) -> list[float]:
    """Train `probe` (a linear layer, optionally after a LayerNorm) on cached features; returns the
    mean loss of each epoch.

    AdamW with a cosine learning rate over `epochs` passes of shuffled mini-batches: with a few thousand
    cached rows each pass is milliseconds, so a hundred of them cost nothing next to the embedding.
    """
    gen = torch.Generator().manual_seed(seed)
    feats, targets = feats.float(), targets.float()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-feats.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    probe.train()
    history = []
    for _ in range(epochs):
        order = torch.randperm(feats.shape[0], generator=gen)
        total = 0.0
        for start in range(0, feats.shape[0], batch_size):
            idx = order[start:start + batch_size]
            loss = classification_loss(probe(feats[idx]), targets[idx], bce=multilabel)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / feats.shape[0])
    probe.eval()
    return history


def fit_layernorm_probe(head: nn.Sequential, feats: torch.Tensor, targets: torch.Tensor, multilabel: bool,
                        epochs: int = 100, lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int = 256,
                        seed: int = 0) -> list[float]:
    """Fit `head` = (LayerNorm, Linear), AST's classifier, as a linear probe on frozen embeddings.

    The linear layer is trained on layer-normed embeddings standardised per dimension with the training
    set's statistics (a batch norm without affine before the classifier, as MoCo v3 and MAE probe): a
    barely trained backbone's embeddings share one large component, and without standardisation the
    probe would measure how well AdamW copes with that, not what the embeddings separate. The
    standardisation is then folded into the linear layer (W / sigma, b - W mu / sigma) and the norm's
    affine reset to identity, so `head` computes exactly the trained probe and drops into the model.
    """
    norm, linear = head
    with torch.no_grad():
        z = F.layer_norm(feats.float(), norm.normalized_shape, eps=norm.eps)
        mu, sigma = z.mean(dim=0), z.std(dim=0).clamp_min(1e-6)
    probe = nn.Linear(linear.in_features, linear.out_features)
    history = train_probe(probe, (z - mu) / sigma, targets, multilabel, epochs, lr, weight_decay, batch_size, seed)
    with torch.no_grad():
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        linear.weight.copy_(probe.weight / sigma)
        linear.bias.copy_(probe.bias - linear.weight @ mu)
    head.eval()
    return history
