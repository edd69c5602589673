"""Classification metrics as used in AST's evaluation.

Multi-label datasets (AudioSet) are reported as mAP / mAUC / d-prime, single-label
datasets (ESC-50, Speech Commands) as accuracy / macro F1.  Everything is plain
numpy so results do not depend on sklearn or scipy being installed.

Undefined quantities (e.g. the AP of a class with no positives) are returned as
NaN rather than raising, so a per-class report can still be printed; the
aggregate metrics skip such classes explicitly.
"""

from statistics import NormalDist

import numpy as np

# Keeps d_prime finite for a perfect (or perfectly inverted) AUC.
_AUC_EPS = 1e-12


def _to_numpy(x):
    """Convert numpy arrays, lists or torch tensors (even on GPU / requiring grad)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def _check_nonempty(arr, name):
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; metrics need at least one sample")


def _check_class_scores(scores, targets):
    """Validate [N, C] scores against [N] integer class targets."""
    scores, targets = _to_numpy(scores), _to_numpy(targets)
    if scores.ndim != 2 or targets.ndim != 1 or scores.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected scores [N, C] and targets [N], got scores {scores.shape} "
            f"and targets {targets.shape}"
        )
    _check_nonempty(scores, "scores")
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    return scores, targets


def _check_binary(scores, targets, ndim):
    """Validate score/target arrays of equal shape with targets in {0, 1}."""
    scores, targets = _to_numpy(scores), _to_numpy(targets)
    if scores.ndim != ndim or scores.shape != targets.shape:
        raise ValueError(
            f"expected scores and targets of the same {ndim}-d shape, got scores "
            f"{scores.shape} and targets {targets.shape}"
        )
    _check_nonempty(scores, "scores")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("binary targets must contain only 0 and 1")
    return scores.astype(np.float64), targets.astype(bool)


def _safe_div(num, den):
    """num / den, NaN when den is 0 (the ratio is undefined, not zero)."""
    return float(num) / den if den else float("nan")


def _confusion_matrix(scores, targets, num_classes):
    """Rows are true classes, columns argmax predictions."""
    if num_classes is None:
        num_classes = scores.shape[1]
    if num_classes < scores.shape[1]:
        raise ValueError(
            f"num_classes={num_classes} is smaller than the {scores.shape[1]} score columns"
        )
    if targets.min() < 0 or targets.max() >= num_classes:
        raise ValueError(f"targets must lie in [0, {num_classes}), got range "
                         f"[{targets.min()}, {targets.max()}]")
    predictions = scores.argmax(axis=1)
    flat = np.bincount(targets * num_classes + predictions, minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes)


def _per_class_counts(confusion):
    """True positives, false positives and false negatives for every class."""
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    return tp, fp, fn


def accuracy(scores, targets) -> float:
    """Fraction of samples whose argmax score is the target class."""
    scores, targets = _check_class_scores(scores, targets)
    return float(np.mean(scores.argmax(axis=1) == targets))


def macro_f1(scores, targets, num_classes=None) -> float:
    """Unweighted mean over classes of the F1 of the argmax predictions.

    A class that neither occurs in ``targets`` nor is ever predicted has an
    undefined F1 (0/0) and is excluded from the mean, which matches sklearn's
    ``f1_score(average="macro")`` when labels are inferred from the data.  A
    class that occurs in only one of the two scores F1 = 0 and is kept.
    ``num_classes`` defaults to the number of score columns.
    """
    scores, targets = _check_class_scores(scores, targets)
    tp, fp, fn = _per_class_counts(_confusion_matrix(scores, targets, num_classes))
    # F1 = 2PR/(P+R) = 2TP / (2TP + FP + FN); the count form avoids 0/0 in P or R.
    denominator = 2 * tp + fp + fn
    present = denominator > 0
    return float(np.mean(2 * tp[present] / denominator[present]))


def _average_precision(scores, targets):
    """AP on validated 1-d float scores and boolean targets."""
    num_positives = targets.sum()
    if num_positives == 0:
        return float("nan")
    # Stable sort so the result does not depend on the sort algorithm.
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_targets = scores[order], targets[order]
    true_positives = np.cumsum(sorted_targets)
    # Evaluate only at the last sample of each run of equal scores: a threshold
    # admits all tied samples at once, so ties cannot be ordered favourably.
    last_of_tie = np.r_[np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]),
                        len(sorted_scores) - 1]
    precision = true_positives[last_of_tie] / (last_of_tie + 1)
    recall = true_positives[last_of_tie] / num_positives
    recall_gain = np.diff(recall, prepend=0.0)
    return float(np.sum(recall_gain * precision))


def average_precision(scores, targets) -> float:
    """Non-interpolated average precision (area under the precision-recall curve).

    Without ties this is the mean, over positives, of the precision at the
    positive's rank.  With ties, thresholds are placed at distinct score values
    (as sklearn's ``average_precision_score``).  NaN if there are no positives.
    """
    return _average_precision(*_check_binary(scores, targets, ndim=1))


def _average_ranks(values):
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    mean_rank = last_rank - (counts - 1) / 2.0
    return mean_rank[inverse]


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation: the Pearson correlation of the average ranks (ties share one).

    NaN if either side is constant.
    """
    a, b = _to_numpy(a).astype(np.float64), _to_numpy(b).astype(np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"rank_correlation needs two 1-d arrays of one length, got shapes {a.shape} and {b.shape}")
    _check_nonempty(a, "a")
    ra, rb = _average_ranks(a) - (a.size + 1) / 2, _average_ranks(b) - (b.size + 1) / 2
    return float(_safe_div((ra * rb).sum(), np.sqrt((ra**2).sum() * (rb**2).sum())))


def _roc_auc(scores, targets):
    """ROC AUC on validated 1-d float scores and boolean targets."""
    num_positives = int(targets.sum())
    num_negatives = targets.size - num_positives
    if num_positives == 0 or num_negatives == 0:
        return float("nan")
    # Mann-Whitney U: the rank sum of the positives, minus its minimum possible
    # value, counts the (positive, negative) pairs ordered correctly, ties as 1/2.
    positive_rank_sum = _average_ranks(scores)[targets].sum()
    u_statistic = positive_rank_sum - num_positives * (num_positives + 1) / 2.0
    return float(u_statistic / (num_positives * num_negatives))


def roc_auc(scores, targets) -> float:
    """Probability that a random positive outscores a random negative (ties count 1/2).

    NaN if the targets contain only one class.
    """
    return _roc_auc(*_check_binary(scores, targets, ndim=1))


def d_prime(auc) -> float:
    """AST's sensitivity index: sqrt(2) * Phi^-1(AUC).

    AUC is clipped into the open interval (0, 1) so a perfect ranking gives a
    large finite value instead of infinity.  NaN propagates.
    """
    auc = float(np.clip(float(auc), _AUC_EPS, 1.0 - _AUC_EPS))
    return float(np.sqrt(2.0) * NormalDist().inv_cdf(auc))


def _per_class_binary(scores, targets, metric):
    """Apply a binary metric to every column of validated [N, C] arrays."""
    return np.array([metric(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])


def multilabel_metrics(scores, targets) -> dict:
    """mAP, mAUC and d-prime for [N, C] scores against [N, C] multi-hot targets.

    mAP averages over classes with at least one positive (AP is undefined
    otherwise); mAUC additionally needs at least one negative, so it skips
    classes that are all-positive too.  ``num_classes_evaluated`` counts the
    classes entering mAP.
    """
    scores, targets = _check_binary(scores, targets, ndim=2)
    ap = _per_class_binary(scores, targets, _average_precision)
    auc = _per_class_binary(scores, targets, _roc_auc)
    ap_defined, auc_defined = ~np.isnan(ap), ~np.isnan(auc)
    mean_ap = float(ap[ap_defined].mean()) if ap_defined.any() else float("nan")
    mean_auc = float(auc[auc_defined].mean()) if auc_defined.any() else float("nan")
    return {
        "mAP": mean_ap,
        "mAUC": mean_auc,
        "d_prime": d_prime(mean_auc),
        "num_classes_evaluated": int(ap_defined.sum()),
    }


def singlelabel_metrics(scores, targets) -> dict:
    """Accuracy and macro F1 for [N, C] scores against [N] class indices."""
    return {"accuracy": accuracy(scores, targets), "macro_f1": macro_f1(scores, targets)}


def _check_names(class_names, scores):
    if len(class_names) != scores.shape[1]:
        raise ValueError(f"got {len(class_names)} class names for scores of shape {scores.shape}")


def _multilabel_report(scores, targets, class_names):
    scores, targets = _check_binary(scores, targets, ndim=2)
    _check_names(class_names, scores)
    return [
        {
            "name": name,
            "support": int(targets[:, c].sum()),
            "ap": _average_precision(scores[:, c], targets[:, c]),
            "auc": _roc_auc(scores[:, c], targets[:, c]),
        }
        for c, name in enumerate(class_names)
    ]


def _singlelabel_report(scores, targets, class_names):
    scores, targets = _check_class_scores(scores, targets)
    _check_names(class_names, scores)
    tp, fp, fn = _per_class_counts(_confusion_matrix(scores, targets, len(class_names)))
    return [
        {
            "name": name,
            "support": int(tp[c] + fn[c]),
            "precision": _safe_div(tp[c], tp[c] + fp[c]),
            "recall": _safe_div(tp[c], tp[c] + fn[c]),
            "f1": _safe_div(2 * tp[c], 2 * tp[c] + fp[c] + fn[c]),
        }
        for c, name in enumerate(class_names)
    ]


def per_class_report(scores, targets, class_names, multilabel: bool) -> list:
    """One dict per class for a human-readable report.

    Every entry has ``name`` and ``support`` (number of positives / true
    samples); multi-label entries add ``ap`` and ``auc``, single-label entries
    ``precision``, ``recall`` and ``f1``.  Undefined values (0/0) are NaN.
    """
    class_names = list(class_names)
    if multilabel:
        return _multilabel_report(scores, targets, class_names)
    return _singlelabel_report(scores, targets, class_names)
