"""Per-class zero-shot metrics computed with scikit-learn, and their macro / support-weighted averages.

Every metric is a fraction in [0, 1]. A class whose labels on the evaluated set are all one value gets
null for every metric and is left out of the averages (CTCLIP_MODERN does the same with NaN); its
support is still reported. `support` is the number of positive volumes, and the weighted average
weighs each class by it, as CTCLIP_MODERN's "weighted" figures do.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score, average_precision_score, balanced_accuracy_score, f1_score, precision_score, recall_score,
    roc_auc_score,
)

METRICS: tuple[str, ...] = (
    "auroc", "auprc", "f1", "precision", "recall", "specificity", "accuracy", "balanced_accuracy",
)
THRESHOLD_METRICS: tuple[str, ...] = METRICS[2:]


def is_defined(y_true: np.ndarray) -> bool:
    return 0 < int(np.sum(y_true)) < len(y_true)


def class_metrics(y_true: np.ndarray, scores: np.ndarray, predictions: np.ndarray,
                  f1_average: str = "binary") -> dict[str, "float | None"]:
    """scikit-learn's metrics for one class; predictions are the thresholded 0/1 calls.

    `f1_average="weighted"` is CT-CLIP's published F1 (`f1_score(average="weighted")`, dominated by the
    negatives); "binary" is the positive-class F1. Precision and recall are always the positive class's.
    """
    if not is_defined(y_true):
        return {m: None for m in METRICS}
    y, p = np.asarray(y_true).astype(int), np.asarray(predictions).astype(int)
    with warnings.catch_warnings():
        # No predicted positives gives precision 0 by zero_division; that is the intended value.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return {
            "auroc": float(roc_auc_score(y, scores)),
            "auprc": float(average_precision_score(y, scores)),
            "f1": float(f1_score(y, p, average=f1_average, zero_division=0)),
            "precision": float(precision_score(y, p, zero_division=0)),
            "recall": float(recall_score(y, p, zero_division=0)),
            "specificity": float(recall_score(y, p, pos_label=0, zero_division=0)),
            "accuracy": float(accuracy_score(y, p)),
            "balanced_accuracy": float(balanced_accuracy_score(y, p)),
        }


def average(per_class: dict[str, dict[str, "float | None"]], supports: dict[str, int],
            how: str = "macro") -> dict[str, "float | None"]:
    """Mean over classes where the metric is defined: plain (`macro`) or weighted by support (`weighted`)."""
    if how not in ("macro", "weighted"):
        raise ValueError(f"average must be 'macro' or 'weighted', not {how!r}")
    out: dict[str, "float | None"] = {}
    for metric in METRICS:
        pairs = [(v[metric], supports[c]) for c, v in per_class.items() if v.get(metric) is not None]
        if not pairs:
            out[metric] = None
            continue
        values = np.array([p[0] for p in pairs], dtype=np.float64)
        weights = np.ones(len(pairs)) if how == "macro" else np.array([p[1] for p in pairs], dtype=np.float64)
        out[metric] = float(np.sum(values * weights) / np.sum(weights)) if weights.sum() > 0 else None
    return out


def finite_or_none(x: float) -> "float | None":
    return None if x is None or not math.isfinite(x) else float(x)
