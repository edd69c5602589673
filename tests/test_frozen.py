import numpy as np
import pytest
import torch
from torch import nn

from asit.frozen import classification_loss, fit_layernorm_probe, knn_scores, select_features, train_probe


def clusters(num_classes: int, per_class: int, dim: int, seed: int, spread: float = 0.3):
    """Points around random centres, far apart compared with their spread: a separable set."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((num_classes, dim)) * 3
    labels = np.repeat(np.arange(num_classes), per_class)
    feats = centres[labels] + rng.standard_normal((len(labels), dim)) * spread
    return torch.from_numpy(feats).float(), torch.from_numpy(labels)


def test_knn_on_separable_embeddings_is_perfect():
    train, train_y = clusters(5, 40, 16, seed=0)
    query, query_y = clusters(5, 20, 16, seed=1)
    scores = knn_scores(train, torch.eye(5)[train_y], query, k=20, temperature=0.07)
    assert (scores.argmax(1) == query_y).all()
    assert torch.allclose(scores.sum(1), torch.ones(len(query)))  # a distribution over classes


def test_knn_votes_are_weighted_by_similarity():
    # One neighbour pointing the query's way (class 0) against two at 60 degrees (class 1): a plain
    # majority says 1; DINO's exp(cos / 0.07) weights say 0, and a high temperature is a majority again.
    train = torch.tensor([[1.0, 0.0], [0.5, 0.866], [0.5, -0.866]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_scores(train, targets, query, k=3, temperature=0.07).argmax().item() == 0
    assert knn_scores(train, targets, query, k=3, temperature=100.0).argmax().item() == 1


def test_knn_multilabel_votes_for_every_tag_of_a_neighbour():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    scores = knn_scores(train, targets, torch.tensor([[1.0, 0.01]]), k=1)
    assert scores.tolist() == [[1.0, 1.0, 0.0]]


def test_linear_probe_learns_a_separable_set():
    train, train_y = clusters(4, 50, 12, seed=0)
    test, test_y = clusters(4, 25, 12, seed=1)
    torch.manual_seed(0)
    probe = nn.Sequential(nn.LayerNorm(12), nn.Linear(12, 4))
    history = train_probe(probe, train, torch.eye(4)[train_y], multilabel=False, epochs=40, lr=3e-2,
                          batch_size=100)
    assert history[-1] < 0.1 * history[0]
    with torch.no_grad():
        assert (probe(test).argmax(1) == test_y).all()


def test_layernorm_probe_reads_small_differences_and_folds_into_the_head():
    # Embeddings as a barely trained backbone gives them: one large shared vector, the classes in small
    # offsets on a few dimensions. Standardising per dimension makes them easy; the fitted head is
    # then the plain LayerNorm + Linear that predicts the same.
    train, train_y = clusters(4, 50, 12, seed=0)
    test, test_y = clusters(4, 25, 12, seed=1)
    shared = 100 * torch.randn(64, generator=torch.Generator().manual_seed(2))
    lift = torch.randn(12, 64, generator=torch.Generator().manual_seed(3)) * 0.02
    train, test = shared + train @ lift, shared + test @ lift
    torch.manual_seed(0)
    head = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 4))
    with torch.no_grad():
        head[0].weight.fill_(3.0)  # whatever the head held before is replaced
    history = fit_layernorm_probe(head, train, torch.eye(4)[train_y], multilabel=False, epochs=40, lr=3e-2,
                                  batch_size=100)
    assert history[-1] < 0.1 * history[0]
    assert torch.equal(head[0].weight, torch.ones(64))
    with torch.no_grad():
        assert (head(test).argmax(1) == test_y).all()
    plain = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 4))
    plain_history = train_probe(plain, train, torch.eye(4)[train_y], multilabel=False, epochs=40, lr=3e-2,
                                batch_size=100)
    assert plain_history[-1] > 5 * history[-1]


def test_linear_probe_multilabel_learns_independent_tags():
    feats = torch.randn(400, 6, generator=torch.Generator().manual_seed(0))
    tags = torch.stack([feats[:, 0] > 0, feats[:, 1] > 0], dim=1).float()  # two linearly separable tags
    torch.manual_seed(0)
    probe = nn.Linear(6, 2)
    train_probe(probe, feats, tags, multilabel=True, epochs=100, lr=5e-2, batch_size=200)
    with torch.no_grad():
        assert ((probe(feats) > 0).float() == tags).float().mean() > 0.97


def test_select_features():
    emb = {"cls": torch.ones(3, 4), "mean": torch.zeros(3, 4)}
    assert torch.equal(select_features(emb, "cls"), emb["cls"])
    assert torch.equal(select_features(emb, "both"), torch.cat([emb["cls"], emb["mean"]], 1))
    with pytest.raises(ValueError, match="features"):
        select_features(emb, "patches")


def test_classification_loss_soft_targets():
    logits = torch.tensor([[2.0, 0.0]])
    soft = torch.tensor([[0.5, 0.5]])
    expected = -(soft * logits.log_softmax(1)).sum()
    assert classification_loss(logits, soft, bce=False).item() == pytest.approx(expected.item())
    assert classification_loss(logits, soft, bce=True).item() == pytest.approx(
        nn.functional.binary_cross_entropy_with_logits(logits, soft).item())
