from __future__ import annotations

import json

import numpy as np
import pytest

from lort.analysis.metrics import (
    accuracy_report,
    analyze,
    expected_calibration_error,
    group_means,
    logits_magnitude,
    normalized_magnitude,
    regularized_std,
    top_k_accuracy,
)

# 3 classes, 5 samples; hand-computed below
Z = np.array(
    [
        [4.0, 1.0, 0.0],  # y=0
        [2.0, 0.0, 1.0],  # y=0
        [0.0, 3.0, 1.0],  # y=1
        [1.0, 1.0, 2.0],  # y=2
        [3.0, 0.0, 1.0],  # y=2 (wrong)
    ]
)
Y = np.array([0, 0, 1, 2, 2])


def test_logits_magnitude_by_hand():
    # class 0: pos mean (4+2)/2=3, neg mean (0+1+3)/3=4/3 -> 5/3
    # class 1: pos 3, neg (1+0+1+0)/4=0.5 -> 2.5
    # class 2: pos (2+1)/2=1.5, neg (0+1+1)/3=2/3 -> 5/6
    assert np.allclose(logits_magnitude(Z, Y), [5 / 3, 2.5, 5 / 6])
    norm = normalized_magnitude(logits_magnitude(Z, Y))
    assert np.allclose(norm, np.array([5 / 3, 2.5, 5 / 6]) / ((5 / 3 + 2.5 + 5 / 6) / 3))
    assert np.nanmean(np.abs(norm)) == pytest.approx(1.0)


def test_regularized_std_by_hand():
    pos, neg = regularized_std(Z, Y)
    # class 0: std(4,2)=1 -> 1/(5/3)=0.6 ; neg std(0,1,3)=sqrt(14/9)/(5/3)
    assert pos[0] == pytest.approx(0.6)
    assert neg[0] == pytest.approx(np.std([0, 1, 3]) / (5 / 3))
    assert np.isnan(pos[1])  # a single positive sample: undefined
    assert neg[1] == pytest.approx(np.std([1, 0, 1, 0]) / 2.5)
    assert pos[2] == pytest.approx(0.5 / (5 / 6))


def test_class_without_positive_or_negative_samples_is_none_not_nan():
    z = np.array([[1.0, 0.0, 0.5], [2.0, 0.0, 0.1]])
    y = np.array([0, 0])  # classes 1, 2 have no positives; class 0 has no negatives
    assert np.isnan(logits_magnitude(z, y)).all()
    rep = analyze(z, y, train_counts=[200, 50, 5])
    text = json.dumps(rep)  # strict JSON: would fail on NaN with allow_nan=False
    json.dumps(rep, allow_nan=False)
    assert "NaN" not in text
    assert rep["per_class_metrics"]["logits_magnitude"] == [None, None, None]
    assert rep["group_means"]["logits_magnitude"] == {"many": None, "medium": None, "few": None}
    assert rep["per_class"] == [1.0, None, None]


def test_accuracy_groups_top5_and_ece():
    rep = accuracy_report(Z, Y, train_counts=[500, 50, 10])
    assert rep["acc"] == pytest.approx(0.8)
    assert rep["balanced_acc"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert (rep["many"], rep["medium"], rep["few"]) == (1.0, 1.0, 0.5)
    assert top_k_accuracy(Z, Y, 1) == pytest.approx(0.8)
    assert top_k_accuracy(Z, Y, 5) == 1.0
    # ECE: all-confident correct predictions in one bin
    z = np.array([[10.0, 0.0], [0.0, 10.0]])
    assert expected_calibration_error(z, np.array([0, 1])) == pytest.approx(1 - 1 / (1 + np.exp(-10)), abs=1e-6)
    assert expected_calibration_error(z, np.array([1, 0])) == pytest.approx(1 / (1 + np.exp(-10)), abs=1e-6)


def test_group_means_and_bins_of_ten():
    counts = np.array([500] * 10 + [50] * 10 + [5] * 10)
    values = np.arange(30, dtype=float)
    g = group_means(values, counts)
    assert g["many"] == pytest.approx(4.5) and g["medium"] == pytest.approx(14.5) and g["few"] == pytest.approx(24.5)
    assert g["bins"] == [4.5, 14.5, 24.5]


def test_analyze_with_classifier_weights():
    w = np.array([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])
    rep = analyze(Z, Y, [500, 50, 10], weight=w, bias=[0.1, 0.2, 0.3])
    assert rep["per_class_metrics"]["weight_norm"] == [5.0, 1.0, 1.0]
    assert rep["per_class_metrics"]["bias"] == pytest.approx([0.1, 0.2, 0.3])
    assert rep["group_means"]["weight_norm"]["many"] == 5.0


def test_per_class_accuracy_reads_read_only_arrays_without_a_warning():
    """Labels often come from the read-only memory-mapped image cache."""
    import warnings

    from lort.analysis.metrics import per_class_accuracy

    y, p = np.array([0, 1, 1, 2]), np.array([0, 1, 0, 2])
    y.setflags(write=False)
    p.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(per_class_accuracy(p, y, 4), [1.0, 0.5, 1.0, np.nan])
