import numpy as np
import pytest
import torch
from torch import nn

from asit.frozen import (classification_loss, combine_blocks, fit_linear_probe, fold_into_head, knn_scores, layer_normed,
                         select_features, validation_folds)


def clusters(num_classes: int, per_class: int, dim: int, seed: int, spread: float = 0.3):
    """Points around random centres, far apart compared with their spread: a separable set."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((num_classes, dim)) * 3
    labels = np.repeat(np.arange(num_classes), per_class)
    feats = centres[labels] + rng.standard_normal((len(labels), dim)) * spread
    return torch.from_numpy(feats).float(), torch.from_numpy(labels)


def test_blocks_are_averaged_or_concatenated_in_the_order_asked():
    x = torch.arange(24.0).view(2, 3, 4)  # 2 clips, 3 blocks, width 4
    assert torch.equal(combine_blocks(x, [0, 2], "mean"), (x[:, 0] + x[:, 2]) / 2)
    assert torch.equal(combine_blocks(x, [0, 2], "concat"), torch.cat([x[:, 0], x[:, 2]], dim=1))


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


def test_linear_probe_learns_a_separable_set_and_reports_its_choice():
    train, train_y = clusters(4, 50, 12, seed=0)
    test, test_y = clusters(4, 25, 12, seed=1)
    probe = fit_linear_probe(train, torch.eye(4)[train_y], multilabel=False, grid=(1e-3, 1e-1, 10.0))
    assert (probe.logits(test).argmax(1) == test_y).all()
    assert set(probe.cv_scores) == {1e-3, 1e-1, 10.0} and probe.C in probe.cv_scores
    assert probe.cv_scores[probe.C] == max(probe.cv_scores.values())
    assert probe.folds == 5 and not probe.grouped  # no groups given: stratified folds
    assert probe.summary()["C"] == probe.C


def test_linear_probe_reads_small_differences_and_folds_into_the_head():
    # Embeddings as a barely trained backbone gives them: one large shared vector, the classes in small
    # offsets on a few dimensions. Standardising per dimension makes them easy; the fitted probe is
    # then the plain LayerNorm + Linear that predicts the same.
    train, train_y = clusters(4, 50, 12, seed=0)
    test, test_y = clusters(4, 25, 12, seed=1)
    shared = 100 * torch.randn(64, generator=torch.Generator().manual_seed(2))
    lift = torch.randn(12, 64, generator=torch.Generator().manual_seed(3)) * 0.02
    train, test = shared + train @ lift, shared + test @ lift
    probe = fit_linear_probe(layer_normed(train, 1e-6), torch.eye(4)[train_y], multilabel=False)
    head = nn.Sequential(nn.LayerNorm(64, eps=1e-6), nn.Linear(64, 4))
    with torch.no_grad():
        head[0].weight.fill_(3.0)  # whatever the head held before is replaced
    fold_into_head(head, probe)
    assert torch.equal(head[0].weight, torch.ones(64))
    with torch.no_grad():
        assert torch.allclose(head(test), probe.logits(layer_normed(test, 1e-6)), atol=1e-4)
        assert (head(test).argmax(1) == test_y).all()


def test_two_classes_give_two_logits():
    train, train_y = clusters(2, 40, 5, seed=0)
    probe = fit_linear_probe(train, torch.eye(2)[train_y], multilabel=False)
    logits = probe.logits(train)
    assert logits.shape == (80, 2) and (logits.argmax(1) == train_y).all()


def test_validation_folds_keep_groups_apart_and_fall_back_without_them():
    labels = np.tile(np.arange(3), 20)  # 60 clips
    groups = [f"speaker{i % 10}" for i in range(60)]
    splits, grouped = validation_folds(labels, groups, multilabel=False, folds=5, seed=0)
    assert grouped and len(splits) == 5
    for train, val in splits:
        assert not {groups[i] for i in train} & {groups[i] for i in val}
    held = sorted(i for _, val in splits for i in val)
    assert held == list(range(60))  # every clip is validated once
    # Three groups for five folds: one group out at a time.
    few = [f"g{i % 3}" for i in range(60)]
    splits, grouped = validation_folds(labels, few, multilabel=False, folds=5, seed=0)
    assert grouped and sorted({few[i] for i in val}.pop() for _, val in splits) == ["g0", "g1", "g2"]
    # A clip without a group: stratified folds that mix groups.
    splits, grouped = validation_folds(labels, groups[:-1] + [None], multilabel=False, folds=5, seed=0)
    assert not grouped and all(len(set(labels[val])) == 3 for _, val in splits)


def test_grouped_validation_chooses_what_carries_over_to_unseen_groups():
    # Each speaker has a voice vector that, in the training set, happens to go with one class more
    # often; the class itself shows weakly on one dimension. Folds that mix speakers reward memorising
    # voices (weak regularisation); folds by speaker see through it and pick a stronger one.
    rng = np.random.default_rng(0)
    speakers, per = 12, 40
    voice = rng.standard_normal((speakers, 30)) * 2
    y = np.concatenate([rng.choice(2, per, p=[0.9, 0.1] if s % 2 else [0.1, 0.9]) for s in range(speakers)])
    groups = np.repeat(np.arange(speakers), per)
    x = voice[groups] + rng.standard_normal((len(y), 30)) * 0.5
    x[:, 0] += (2 * y - 1) * 0.7
    feats, targets = torch.from_numpy(x).float(), torch.eye(2)[torch.from_numpy(y)]
    mixed = fit_linear_probe(feats, targets, multilabel=False)
    by_speaker = fit_linear_probe(feats, targets, multilabel=False, groups=list(groups))
    assert by_speaker.grouped and not mixed.grouped
    assert by_speaker.C < mixed.C
    assert by_speaker.cv_scores[by_speaker.C] < mixed.cv_scores[mixed.C]  # an honest, lower estimate


def test_linear_probe_multilabel_learns_independent_tags():
    feats = torch.randn(400, 6, generator=torch.Generator().manual_seed(0))
    tags = torch.stack([feats[:, 0] > 0, feats[:, 1] > 0], dim=1).float()  # two linearly separable tags
    probe = fit_linear_probe(feats, tags, multilabel=True)
    assert ((probe.logits(feats) > 0).float() == tags).float().mean() > 0.97


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
