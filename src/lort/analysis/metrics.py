"""Accuracy metrics from logits and labels: overall, per class, Many/Medium/Few."""

from __future__ import annotations

import numpy as np

from ..data.longtail import GROUP_NAMES, class_groups


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class; NaN for a class with no samples in this split."""
    pred = np.asarray(pred)
    labels = np.asarray(labels)
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    correct = np.bincount(labels[pred == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def _nanmean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def accuracy_report(logits, labels, train_counts) -> dict:
    """Top-1 accuracy (sample mean), balanced accuracy (mean over classes present) and
    the mean per-class accuracy of the Many / Medium / Few groups (``None`` for a group
    with no class present in this split). Values are fractions in [0, 1]."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    k = logits.shape[1]
    pred = logits.argmax(axis=1)
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
