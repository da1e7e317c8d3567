"""Accuracy metrics from logits and labels: overall, per class, Many/Medium/Few."""

from __future__ import annotations

import numpy as np
import torch

from ..data.longtail import GROUP_NAMES, class_groups


def grouped_per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy of each class for G prediction vectors ``(G, N)`` -> ``(G, K)`` float64 on the
    predictions' device; NaN for a class with no samples in this split. The one definition
    of per-class (and so balanced) accuracy: stage-2 selection and every report use it."""
    correct = (preds == labels).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.zeros(len(preds), num_classes, dtype=torch.float64, device=preds.device).index_add_(1, labels, correct)
    return torch.where(total > 0, hits / total.clamp_min(1), torch.full_like(hits, float("nan")))


def grouped_balanced_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean per-class accuracy over the classes present, for ``(G, N)`` predictions -> ``(G,)``."""
    return grouped_per_class_accuracy(preds, labels, num_classes).nanmean(1)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class; NaN for a class with no samples in this split."""
    # np.array copies: labels may be a read-only memory-mapped cache, which torch warns about
    pred = torch.from_numpy(np.array(pred)).reshape(1, -1)
    labels = torch.from_numpy(np.array(labels, dtype=np.int64))
    return grouped_per_class_accuracy(pred, labels, num_classes)[0].numpy()


def _nanmean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def accuracy_report(logits, labels, train_counts) -> dict:
    """Top-1 accuracy (sample mean), balanced accuracy (mean over classes present) and
    the mean per-class accuracy of the Many / Medium / Few groups (``None`` for a group
    with no class present in this split). Values are fractions in [0, 1]."""
    logits = np.asarray(logits)
    return prediction_report(logits.argmax(axis=1), labels, train_counts, logits.shape[1])


def prediction_report(pred, labels, train_counts, num_classes: int | None = None) -> dict:
    """:func:`accuracy_report` from the predicted classes ``pred`` alone."""
    pred = np.asarray(pred)
    labels = np.asarray(labels)
    k = num_classes or len(train_counts)
    per_class = per_class_accuracy(pred, labels, k)
    groups = class_groups(train_counts)
    report = {
        "acc": float((pred == labels).mean()) if len(labels) else None,
        "balanced_acc": _nanmean(per_class),
    }
    for gi, name in enumerate(GROUP_NAMES):
        report[name] = _nanmean(per_class[groups == gi])
    report["per_class"] = [None if np.isnan(a) else float(a) for a in per_class]
    return report


def _none_if_nan(values) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, dtype=np.float64)]


def logits_magnitude(logits, labels, num_classes: int | None = None) -> np.ndarray:
    """Logits Magnitude of each class ``k``: the mean of ``z_k`` over samples of class ``k``
    minus its mean over samples of all other classes. NaN where class ``k`` has no
    positive or no negative sample in this split."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    k = num_classes or z.shape[1]
    out = np.full(k, np.nan)
    for c in range(k):
        is_pos = y == c
        if is_pos.any() and (~is_pos).any():
            out[c] = z[is_pos, c].mean() - z[~is_pos, c].mean()
    return out


def normalized_magnitude(magnitude: np.ndarray) -> np.ndarray:
    """Logits Magnitude divided by its mean absolute value (1-norm normalisation), so that
    methods with different logit scales compare."""
    m = np.asarray(magnitude, dtype=np.float64)
    scale = np.nanmean(np.abs(m)) if np.isfinite(m).any() else np.nan
    return m / scale if scale and np.isfinite(scale) else np.full_like(m, np.nan)


def regularized_std(logits, labels, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Regularized Standard Deviation of each class ``k``: the standard deviation of ``z_k``
    over the positive samples (class ``k``) and over the negative samples, each divided
    by ``|Logits Magnitude_k|``. NaN where undefined (no positive or negative sample, a
    single sample, or zero magnitude)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    k = num_classes or z.shape[1]
    mag = np.abs(logits_magnitude(z, y, k))
    pos, neg = np.full(k, np.nan), np.full(k, np.nan)
    for c in range(k):
        if not np.isfinite(mag[c]) or mag[c] == 0:
            continue
        p, n = z[y == c, c], z[y != c, c]
        if len(p) > 1:
            pos[c] = p.std() / mag[c]
        if len(n) > 1:
            neg[c] = n.std() / mag[c]
    return pos, neg


def top_k_accuracy(logits, labels, k: int = 5) -> float | None:
    z = np.asarray(logits)
    y = np.asarray(labels)
    if not len(y):
        return None
    k = min(k, z.shape[1])
    top = np.argpartition(-z, k - 1, axis=1)[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def expected_calibration_error(logits, labels, bins: int = 15) -> float | None:
    """ECE with ``bins`` equal-width confidence bins of the softmax maximum."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if not len(y):
        return None
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def group_means(values, train_counts, bin_size: int = 10) -> dict:
    """Means of a per-class metric over Many / Medium / Few and, for sets of more than 20
    classes, over consecutive bins of ``bin_size`` classes (head first), ignoring NaN."""
    v = np.asarray(values, dtype=np.float64)
    groups = class_groups(train_counts)
    out = {name: _nanmean(v[groups == gi]) for gi, name in enumerate(GROUP_NAMES)}
    if len(v) > 20:
        order = np.argsort(-np.asarray(train_counts), kind="stable")
        out["bins"] = [_nanmean(v[order[i : i + bin_size]]) for i in range(0, len(v), bin_size)]
    return out


def analyze(logits, labels, train_counts, weight=None, bias=None) -> dict:
    """Every metric of a split's logits: accuracy (overall, balanced, per class, groups,
    top-5), ECE, Logits Magnitude (raw and normalised), Regularized Standard Deviation
    (positive and negative), and — given the classifier — weight norms and bias, each
    per class and as group means. Undefined values are ``None``, never NaN."""
    z = np.asarray(logits)
    y = np.asarray(labels)
    k = z.shape[1]
    report = accuracy_report(z, y, train_counts)
    report["top5_acc"] = top_k_accuracy(z, y, 5)
    report["ece"] = expected_calibration_error(z, y)
    mag = logits_magnitude(z, y, k)
    rsd_pos, rsd_neg = regularized_std(z, y, k)
    per_class = {
        "accuracy": np.asarray([np.nan if a is None else a for a in report["per_class"]]),
        "logits_magnitude": mag,
        "logits_magnitude_normalized": normalized_magnitude(mag),
        "rsd_positive": rsd_pos,
        "rsd_negative": rsd_neg,
    }
    if weight is not None:
        per_class["weight_norm"] = np.linalg.norm(np.asarray(weight, dtype=np.float64), axis=1)
    if bias is not None:
        per_class["bias"] = np.asarray(bias, dtype=np.float64)
    report["per_class_metrics"] = {name: _none_if_nan(v) for name, v in per_class.items()}
    report["group_means"] = {name: group_means(v, train_counts) for name, v in per_class.items()}
    report["train_counts"] = [int(c) for c in train_counts]
    return report
