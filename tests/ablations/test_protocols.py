"""The `ctclip` protocol against a worked example, and the protocols against an upstream-style loop."""

import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from ablations import weighted
from ablations.protocols import calibrate, evaluate_protocol

# 5 negatives and 3 positives. Worked by hand (threshold t predicts p > t):
#   t in [0.30, 0.55): TPR 1, FPR 1/5 -> distance 0.2, the smallest of every interval
#   ([0.55, 0.62): sqrt(1/9 + 1/25) = 0.389; [0.62, 0.80): 1/3; [0.20, 0.30): 0.4; ...).
#   Grid points k/99 in that interval: k = 30..54; ties go to the later one, k = 54.
#   At t = 54/99 the calls are TP 3, FP 1 (the 0.62 negative), FN 0, TN 4.
Y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
P = np.array([0.10, 0.30, 0.62, 0.20, 0.05, 0.55, 0.80, 0.95])


def test_ctclip_protocol_reproduces_worked_example():
    block = evaluate_protocol("ctclip", Y[:, None], P[:, None], ["Effusion"], bootstrap=None)
    c = block["per_class"]["Effusion"]
    assert c["threshold"] == pytest.approx(54 / 99)
    assert c["precision"] == pytest.approx(3 / 4)
    assert c["recall"] == pytest.approx(1.0)
    assert c["specificity"] == pytest.approx(4 / 5)
    assert c["accuracy"] == pytest.approx(7 / 8)
    assert c["balanced_accuracy"] == pytest.approx(0.9)
    # sklearn weighted F1: positive F1 6/7 (support 3), negative F1 2*4/(8+1) = 8/9 (support 5).
    assert c["f1"] == pytest.approx((3 * 6 / 7 + 5 * 8 / 9) / 8)
    assert c["auroc"] == pytest.approx(14 / 15)  # the 0.55 positive loses only to the 0.62 negative
    assert c["auprc"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert c["support"] == 3
    assert block["macro"]["f1"]["value"] == pytest.approx(c["f1"])
    assert block["optimistic"] is True


def test_clean_protocol_uses_positive_f1_and_half_threshold():
    block = evaluate_protocol("clean", Y[:, None], P[:, None], ["Effusion"], bootstrap=None)
    c = block["per_class"]["Effusion"]
    assert c["threshold"] == 0.5 and c["f1"] == pytest.approx(6 / 7)
    assert "0.5" in block["description"]
    cal = evaluate_protocol("clean", Y[:, None], P[:, None], ["Effusion"], calibration=np.array([0.9]),
                            bootstrap=None)["per_class"]["Effusion"]
    assert cal["threshold"] == 0.9 and cal["recall"] == pytest.approx(1 / 3)


def test_maxf1_protocol_is_best_f1():
    c = evaluate_protocol("maxf1", Y[:, None], P[:, None], ["Effusion"], bootstrap=None)["per_class"]["Effusion"]
    # p >= 0.55 gives TP 3, FP 1 -> F1 6/7, the best operating point.
    assert c["f1"] == pytest.approx(6 / 7) and c["threshold"] == pytest.approx(0.55)


def _upstream_find_threshold(probabilities, labels):
    """CT-CLIP's bootstrap_values.py rule, rewritten as its loop: independent of the vectorised code."""
    best_threshold, best = 0.0, 10000.0
    for threshold in np.linspace(0, 1, 100):
        predictions = (probabilities > threshold).astype(int)
        tn, fp, fn, tp = confusion_matrix(labels, predictions, labels=[0, 1]).ravel()
        distance = math.sqrt((1 - tp / (tp + fn)) ** 2 + (fp / (fp + tn)) ** 2)
        if distance <= best:
            best, best_threshold = distance, threshold
    return best_threshold


@pytest.mark.parametrize("seed", range(4))
def test_corner_threshold_equals_upstream_loop(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    assert weighted.corner_threshold(y, p)[0] == pytest.approx(_upstream_find_threshold(p, y))
    assert calibrate(np.c_[y, y], np.c_[p, p])[1] == pytest.approx(_upstream_find_threshold(p, y))


def test_every_protocol_block_has_the_schema_fields():
    rng = np.random.default_rng(0)
    Yc = rng.integers(0, 2, (30, 3))
    Sc = rng.random((30, 3))
    for name in ("ctclip", "clean", "maxf1"):
        b = evaluate_protocol(name, Yc, Sc, ["a", "b", "c"], bootstrap=None)
        assert set(b) == {"description", "optimistic", "macro", "weighted", "per_class", "bootstrap"}
        assert b["macro"]["auroc"]["ci_low"] is None and b["bootstrap"] is None
        assert set(b["per_class"]["a"]) >= {"auroc", "auprc", "f1", "threshold", "support"}
