import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from asit.metrics import (
    accuracy,
    average_precision,
    d_prime,
    macro_f1,
    multilabel_metrics,
    per_class_report,
    rank_correlation,
    roc_auc,
    singlelabel_metrics,
)

# A 3-class single-label problem used by several tests.
#   targets     = [0, 0, 0, 1, 1, 2, 2, 2, 2]
#   predictions = [0, 0, 1, 1, 1, 2, 2, 0, 0]
# Confusion (rows true, columns predicted):
#   [[2, 1, 0],
#    [0, 2, 0],
#    [2, 0, 2]]
# class 0: TP=2 FP=2 FN=1 -> P=1/2 R=2/3 F1=2*2/(4+2+1)=4/7
# class 1: TP=2 FP=1 FN=0 -> P=2/3 R=1   F1=4/5
# class 2: TP=2 FP=0 FN=2 -> P=1   R=1/2 F1=2/3
# macro F1 = (4/7 + 4/5 + 2/3) / 3 = 214/315; accuracy = 6/9
TARGETS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
PREDICTIONS = np.array([0, 0, 1, 1, 1, 2, 2, 0, 0])


def one_hot_scores(predictions, num_columns=3):
    scores = np.full((len(predictions), num_columns), 0.1)
    scores[np.arange(len(predictions)), predictions] = 0.8
    return scores


def test_accuracy_counts_argmax_hits():
    assert accuracy(one_hot_scores(PREDICTIONS), TARGETS) == pytest.approx(6 / 9)


def test_accuracy_accepts_torch_tensors():
    scores = torch.tensor(one_hot_scores(PREDICTIONS), requires_grad=True)
    assert accuracy(scores, torch.from_numpy(TARGETS)) == pytest.approx(6 / 9)


def test_macro_f1_hand_computed_three_class_confusion():
    assert macro_f1(one_hot_scores(PREDICTIONS), TARGETS) == pytest.approx(214 / 315)


def test_macro_f1_excludes_classes_never_seen_nor_predicted():
    # Column 3 is never predicted and never a target -> same 214/315; likewise for
    # classes 3 and 4 when num_classes=5 is forced.
    scores = one_hot_scores(PREDICTIONS, num_columns=4)
    assert macro_f1(scores, TARGETS) == pytest.approx(214 / 315)
    assert macro_f1(scores, TARGETS, num_classes=5) == pytest.approx(214 / 315)


def test_macro_f1_keeps_target_class_that_is_never_predicted():
    # targets [0, 1], both predicted 0:
    # class 0: TP=1 FP=1 FN=0 -> F1=2/3; class 1: TP=0 FN=1 -> F1=0; macro = 1/3
    scores = np.array([[0.9, 0.1], [0.6, 0.4]])
    assert macro_f1(scores, np.array([0, 1])) == pytest.approx(1 / 3)


def test_average_precision_mean_precision_at_positive_ranks():
    # Positives at ranks 1 and 3: (1/1 + 2/3) / 2 = 0.8333
    ap = average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert ap == pytest.approx(5 / 6)


def test_average_precision_ties_share_one_threshold():
    # scores [0.9, 0.5, 0.5, 0.1], targets [0, 1, 0, 1]; thresholds at distinct scores:
    #   >=0.9: P=0/1, R=0    >=0.5: P=1/3, R=1/2    >=0.1: P=2/4, R=1
    # AP = sum dR * P = 0*0 + 1/2*1/3 + 1/2*1/2 = 5/12 (not 1/2 as with the
    # positive sorted first inside the tie)
    ap = average_precision(np.array([0.9, 0.5, 0.5, 0.1]), np.array([0, 1, 0, 1]))
    assert ap == pytest.approx(5 / 12)


def test_perfect_and_inverted_rankings():
    scores = np.array([0.4, 0.3, 0.2, 0.1])
    assert average_precision(scores, np.array([1, 1, 0, 0])) == pytest.approx(1.0)
    assert roc_auc(scores, np.array([1, 1, 0, 0])) == pytest.approx(1.0)
    # Inverted: positives at ranks 3 and 4 -> AP = (1/3 + 2/4) / 2 = 5/12
    assert average_precision(scores, np.array([0, 0, 1, 1])) == pytest.approx(5 / 12)
    assert roc_auc(scores, np.array([0, 0, 1, 1])) == pytest.approx(0.0)


def test_roc_auc_counts_ties_as_half():
    # positives {0.8, 0.5}, negatives {0.5, 0.2}; pairs:
    #   0.8>0.5: 1, 0.8>0.2: 1, 0.5=0.5: 1/2, 0.5>0.2: 1  -> 3.5/4 = 0.875
    auc = roc_auc(np.array([0.8, 0.5, 0.5, 0.2]), np.array([1, 1, 0, 0]))
    assert auc == pytest.approx(0.875)
    # All scores tied: every pair counts 1/2.
    assert roc_auc(np.ones(5), np.array([1, 0, 1, 0, 0])) == pytest.approx(0.5)


def test_undefined_binary_metrics_are_nan():
    assert math.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))
    assert math.isnan(roc_auc(np.array([0.3, 0.2]), np.array([1, 1])))


def test_d_prime_definition():
    assert d_prime(0.5) == pytest.approx(0.0, abs=1e-12)
    # Phi(1) maps back to z=1, so d' = sqrt(2) * 1
    assert d_prime(NormalDist().cdf(1.0)) == pytest.approx(math.sqrt(2))


def test_d_prime_is_finite_and_antisymmetric_at_the_extremes():
    # Clipping to (eps, 1-eps) with eps=1e-12: Phi^-1(1e-12) is about -7.03.
    assert d_prime(1.0) == pytest.approx(math.sqrt(2) * 7.034, abs=1e-2)
    assert d_prime(0.0) == pytest.approx(-d_prime(1.0))


def test_rank_correlation_is_spearmans():
    # Ranks of b are 1 2 4 3: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60.
    assert rank_correlation([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties share their mean rank: ranks 1 2.5 2.5 4 against 1 2 3 4.
    assert rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert math.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="one length"):
        rank_correlation([1, 2], [1, 2, 3])


def test_multilabel_metrics_skip_undefined_classes():
    # class 0: AP 5/6 (example above), AUC: pos {.9,.7} vs neg {.8,.6} -> 3/4
    # class 1: perfect ranking -> AP 1, AUC 1
    # class 2: no positives -> excluded from mAP and mAUC
    # class 3: all positive -> AP 1 counts, AUC undefined and excluded
    scores = np.array([
        [0.9, 0.9, 0.1, 0.5],
        [0.8, 0.2, 0.2, 0.4],
        [0.7, 0.1, 0.3, 0.3],
        [0.6, 0.8, 0.4, 0.2],
    ])
    targets = np.array([
        [1, 1, 0, 1],
        [0, 0, 0, 1],
        [1, 0, 0, 1],
        [0, 1, 0, 1],
    ])
    result = multilabel_metrics(scores, targets)
    # mAP = (5/6 + 1 + 1) / 3 = 17/18; mAUC = (3/4 + 1) / 2 = 7/8
    assert result["mAP"] == pytest.approx(17 / 18)
    assert result["mAUC"] == pytest.approx(7 / 8)
    # Phi^-1(0.875) = 1.150349 -> d' = 1.626840
    assert result["d_prime"] == pytest.approx(1.626840, abs=1e-6)
    assert result["num_classes_evaluated"] == 3


def test_singlelabel_metrics():
    result = singlelabel_metrics(one_hot_scores(PREDICTIONS), TARGETS)
    assert result == pytest.approx({"accuracy": 6 / 9, "macro_f1": 214 / 315})


def test_per_class_report_single_label():
    report = per_class_report(one_hot_scores(PREDICTIONS), TARGETS, ["a", "b", "c"],
                              multilabel=False)
    assert report == [
        {"name": "a", "support": 3, "precision": pytest.approx(1 / 2),
         "recall": pytest.approx(2 / 3), "f1": pytest.approx(4 / 7)},
        {"name": "b", "support": 2, "precision": pytest.approx(2 / 3),
         "recall": pytest.approx(1.0), "f1": pytest.approx(4 / 5)},
        {"name": "c", "support": 4, "precision": pytest.approx(1.0),
         "recall": pytest.approx(1 / 2), "f1": pytest.approx(2 / 3)},
    ]


def test_per_class_report_single_label_undefined_values_are_nan():
    # Class "z" never occurs and is never predicted: all ratios are 0/0.
    scores = np.array([[0.9, 0.1], [0.8, 0.2]])
    z = per_class_report(scores, np.array([0, 0]), ["y", "z"], multilabel=False)[1]
    assert z["support"] == 0
    assert all(math.isnan(z[key]) for key in ("precision", "recall", "f1"))


def test_per_class_report_multilabel():
    scores = np.array([[0.9, 0.4], [0.8, 0.3], [0.7, 0.2], [0.6, 0.1]])
    targets = np.array([[1, 0], [0, 0], [1, 1], [0, 1]])
    report = per_class_report(scores, targets, ["dog", "cat"], multilabel=True)
    # dog: AP 5/6, AUC 3/4 (as above); cat: inverted ranking -> AP 5/12, AUC 0
    assert report == [
        {"name": "dog", "support": 2, "ap": pytest.approx(5 / 6), "auc": pytest.approx(0.75)},
        {"name": "cat", "support": 2, "ap": pytest.approx(5 / 12), "auc": pytest.approx(0.0)},
    ]


@pytest.mark.parametrize(
    "call",
    [
        lambda: accuracy(np.zeros((4, 3)), np.zeros(5, dtype=int)),
        lambda: macro_f1(np.zeros(4), np.zeros(4, dtype=int)),
        lambda: average_precision(np.zeros(4), np.zeros(5)),
        lambda: roc_auc(np.zeros((4, 1)), np.zeros(4)),
        lambda: multilabel_metrics(np.zeros((4, 3)), np.zeros((4, 2))),
        lambda: per_class_report(np.zeros((4, 3)), np.zeros((4, 2)), "abc", multilabel=True),
    ],
)
def test_shape_mismatch_raises_with_shapes_in_message(call):
    with pytest.raises(ValueError, match=r"scores \(4,.*targets \("):
        call()


def test_shape_error_message_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5,\)"):
        accuracy(np.zeros((4, 3)), np.zeros(5, dtype=int))


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="0 and 1"):
        average_precision(np.zeros(3), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="class names"):
        per_class_report(np.zeros((2, 3)), np.array([0, 1]), ["a", "b"], multilabel=False)
    with pytest.raises(ValueError, match="targets must lie"):
        macro_f1(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="empty"):
        accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int))


def test_randomized_against_brute_force_definitions():
    rng = np.random.default_rng(0)
    for _ in range(20):
        targets = rng.random(30) < 0.4
        targets[:2] = [True, False]  # both classes present
        # AUC: explicit count over all (positive, negative) pairs, ties as 1/2,
        # on rounded scores so ties occur.
        scores = np.round(rng.random(30), 1)
        pos, neg = scores[targets][:, None], scores[~targets][None, :]
        pairwise = np.mean((pos > neg) + 0.5 * (pos == neg))
        assert roc_auc(scores, targets.astype(int)) == pytest.approx(pairwise)
        # AP without ties: mean over positives of precision at the positive's rank.
        scores = rng.random(30)
        ranked_targets = targets[np.argsort(-scores)]
        ranks = np.flatnonzero(ranked_targets) + 1
        precision_at_positives = np.cumsum(ranked_targets)[ranks - 1] / ranks
        assert average_precision(scores, targets.astype(int)) == pytest.approx(
            precision_at_positives.mean())


def test_randomized_cross_check_against_sklearn():
    from sklearn import metrics as sk_metrics  # a dependency of asit: never skipped
    rng = np.random.default_rng(0)
    for _ in range(20):
        # Rounded scores so ties occur.
        scores = np.round(rng.random((50, 6)), 1)
        targets = (rng.random((50, 6)) < 0.3).astype(int)
        for c in range(6):
            if 0 < targets[:, c].sum() < 50:
                assert average_precision(scores[:, c], targets[:, c]) == pytest.approx(
                    sk_metrics.average_precision_score(targets[:, c], scores[:, c]))
                assert roc_auc(scores[:, c], targets[:, c]) == pytest.approx(
                    sk_metrics.roc_auc_score(targets[:, c], scores[:, c]))
        labels = rng.integers(0, 6, size=50)
        assert macro_f1(scores, labels) == pytest.approx(
            sk_metrics.f1_score(labels, scores.argmax(axis=1), average="macro"))
