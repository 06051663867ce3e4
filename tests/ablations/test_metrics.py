"""Metrics against scikit-learn and against answers worked out by hand."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score, average_precision_score, balanced_accuracy_score, f1_score, precision_score, recall_score,
    roc_auc_score,
)

from ablations import weighted
from ablations.metrics import average, class_metrics

# 4 volumes: the textbook ROC example (AUROC 0.75), thresholded at 0.5.
Y = np.array([0, 0, 1, 1])
S = np.array([0.1, 0.4, 0.35, 0.8])


def test_class_metrics_known_answers():
    m = class_metrics(Y, S, S > 0.5)
    # pred = [0, 0, 0, 1]: TP 1, FP 0, FN 1, TN 2.
    assert m["auroc"] == pytest.approx(0.75)
    assert m["auprc"] == pytest.approx((1 / 2) * 1 + (1 / 2) * (2 / 3))  # ranks: +, -, +, -
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(1.0)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(2 / 3)
    # Weighted F1: positive F1 2/3, negative F1 2*2/(4+1) = 0.8, equal supports.
    assert class_metrics(Y, S, S > 0.5, "weighted")["f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_class_metrics_equal_sklearn_on_random_data():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60) * 0.6 + 0.3 * y, 2)  # rounding makes ties
    pred = s > 0.45
    m = class_metrics(y, s, pred, "weighted")
    assert m["auroc"] == roc_auc_score(y, s)
    assert m["auprc"] == average_precision_score(y, s)
    assert m["f1"] == f1_score(y, pred, average="weighted")
    assert m["precision"] == precision_score(y, pred)
    assert m["recall"] == recall_score(y, pred)
    assert m["specificity"] == recall_score(y, pred, pos_label=0)
    assert m["accuracy"] == accuracy_score(y, pred)
    assert m["balanced_accuracy"] == balanced_accuracy_score(y, pred)


def test_undefined_class_is_null_and_left_out_of_averages():
    per_class = {"a": class_metrics(Y, S, S > 0.5), "b": class_metrics(np.zeros(4), S, S > 0.5)}
    assert all(v is None for v in per_class["b"].values())
    macro = average(per_class, {"a": 2, "b": 0}, "macro")
    assert macro["auroc"] == pytest.approx(0.75)


def test_weighted_average_uses_support():
    per_class = {"a": {"auroc": 0.9}, "b": {"auroc": 0.6}}
    per_class = {k: {m: v.get("auroc") for m in ("auroc", "auprc", "f1", "precision", "recall", "specificity",
                                                  "accuracy", "balanced_accuracy")} for k, v in per_class.items()}
    assert average(per_class, {"a": 3, "b": 1}, "weighted")["auroc"] == pytest.approx((3 * 0.9 + 0.6) / 4)
    assert average(per_class, {"a": 3, "b": 1}, "macro")["auroc"] == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_weighted_metrics_equal_sklearn_with_sample_weight(seed):
    rng = np.random.default_rng(seed)
    n = 50
    y = rng.integers(0, 2, n)
    s = np.round(rng.random(n) * 0.7 + 0.2 * y, 1)  # heavy ties
    W = rng.integers(0, 4, (5, n)).astype(float)
    W[0] = 1.0
    auc, ap = weighted.auroc(y, s, W), weighted.average_precision(y, s, W)
    t = np.full(len(W), 0.45)
    c = weighted.threshold_metrics(weighted.counts_at(y, s, t, W), "weighted")
    cb = weighted.threshold_metrics(weighted.counts_at(y, s, t, W), "binary")
    pred = (s > 0.45).astype(int)
    for r, w in enumerate(W):
        assert auc[r] == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
        assert ap[r] == pytest.approx(average_precision_score(y, s, sample_weight=w), abs=1e-12)
        assert c["f1"][r] == pytest.approx(f1_score(y, pred, average="weighted", sample_weight=w), abs=1e-12)
        assert cb["f1"][r] == pytest.approx(f1_score(y, pred, sample_weight=w), abs=1e-12)
        assert cb["precision"][r] == pytest.approx(precision_score(y, pred, sample_weight=w, zero_division=0))
        assert cb["specificity"][r] == pytest.approx(recall_score(y, pred, pos_label=0, sample_weight=w))
        assert cb["balanced_accuracy"][r] == pytest.approx(balanced_accuracy_score(y, pred, sample_weight=w))
        assert cb["accuracy"][r] == pytest.approx(accuracy_score(y, pred, sample_weight=w))


def test_max_f1_equals_best_point_of_precision_recall_curve():
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.random(80) + 0.3 * y, 2)
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)
    best, t = weighted.max_f1_threshold(y, s)
    assert best[0] == pytest.approx(f1.max())
    assert f1_score(y, s >= t[0]) == pytest.approx(f1.max())
