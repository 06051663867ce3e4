"""Vectorised, sample-weighted binary metrics: many resamples of one class in a few matrix products.

A bootstrap resample is a vector of non-negative integer weights (how often each volume was drawn), so
a (R, n) weight matrix evaluates R resamples at once without copying data. With all-ones weights every
function here equals scikit-learn's on the plain data, and with integer weights it equals scikit-learn
with `sample_weight` (tests check both). Point estimates in `ablations.metrics` use scikit-learn
itself; this module exists because 1000 resamples x 18 classes x 3 protocols of scikit-learn calls
would take minutes.

Conventions: y (n,) in {0, 1}; s (n,) scores; W (R, n) weights. Undefined values are NaN.
"""

from __future__ import annotations

import numpy as np

CORNER_GRID = np.linspace(0.0, 1.0, 100)  # CT-CLIP's bootstrap_values.py threshold grid


def _as_weights(W: "np.ndarray | None", n: int) -> np.ndarray:
    return np.ones((1, n)) if W is None else np.atleast_2d(np.asarray(W, dtype=np.float64))


def _descending_counts(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted (tp, fp) when predicting s >= each distinct score, scores descending: (R, K), (R, K), (K,)."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order].astype(np.float64)
    Wo = W[:, order]
    tp = np.cumsum(Wo * y_sorted, axis=1)
    fp = np.cumsum(Wo * (1.0 - y_sorted), axis=1)
    # Only the last index of each run of tied scores is a reachable operating point.
    ends = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    return tp[:, ends], fp[:, ends], s_sorted[ends]


def _divide(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), empty)


def auroc(y: np.ndarray, s: np.ndarray, W: "np.ndarray | None" = None) -> np.ndarray:
    """Area under the ROC curve (trapezoids over distinct thresholds, as roc_auc_score); (R,)."""
    W = _as_weights(W, len(y))
    tp, fp, _ = _descending_counts(y, s, W)
    P, N = tp[:, -1:], fp[:, -1:]
    tpr = np.hstack([np.zeros((len(W), 1)), _divide(tp, P, np.nan)])
    fpr = np.hstack([np.zeros((len(W), 1)), _divide(fp, N, np.nan)])
    area = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2, axis=1)
    return np.where((P[:, 0] > 0) & (N[:, 0] > 0), area, np.nan)


def average_precision(y: np.ndarray, s: np.ndarray, W: "np.ndarray | None" = None) -> np.ndarray:
    """sum_k (R_k - R_{k-1}) P_k over distinct thresholds, as average_precision_score; (R,)."""
    W = _as_weights(W, len(y))
    tp, fp, _ = _descending_counts(y, s, W)
    P = tp[:, -1:]
    precision = _divide(tp, tp + fp, 0.0)
    recall = np.hstack([np.zeros((len(W), 1)), _divide(tp, P, np.nan)])
    ap = np.sum(np.diff(recall, axis=1) * precision, axis=1)
    return np.where(P[:, 0] > 0, ap, np.nan)


def counts_at(y: np.ndarray, s: np.ndarray, thresholds: np.ndarray, W: "np.ndarray | None" = None,
              strict: bool = True) -> dict[str, np.ndarray]:
    """Weighted tp, fp, fn, tn predicting s > t (strict) or s >= t, for t = thresholds[r] per resample; (R,)."""
    W = _as_weights(W, len(y))
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(W),))
    pred = (s[None, :] > t[:, None]) if strict else (s[None, :] >= t[:, None])
    yf = y.astype(np.float64)
    tp = np.sum(W * pred * yf, axis=1)
    fp = np.sum(W * pred * (1 - yf), axis=1)
    P, N = W @ yf, W @ (1 - yf)
    return {"tp": tp, "fp": fp, "fn": P - tp, "tn": N - fp}


def threshold_metrics(c: dict[str, np.ndarray], f1_average: str = "binary") -> dict[str, np.ndarray]:
    """Metrics from confusion counts; `f1_average` is "binary" (positive class) or "weighted" (sklearn's)."""
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    P, N = tp + fn, tn + fp
    recall = _divide(tp, P, 0.0)
    specificity = _divide(tn, N, 0.0)
    f1_pos = _divide(2 * tp, 2 * tp + fp + fn, 0.0)
    if f1_average == "weighted":
        f1_neg = _divide(2 * tn, 2 * tn + fn + fp, 0.0)
        f1 = _divide(P * f1_pos + N * f1_neg, P + N, 0.0)
    elif f1_average == "binary":
        f1 = f1_pos
    else:
        raise ValueError(f"f1_average must be 'binary' or 'weighted', not {f1_average!r}")
    return {
        "f1": f1, "precision": _divide(tp, tp + fp, 0.0), "recall": recall, "specificity": specificity,
        "accuracy": _divide(tp + tn, P + N, 0.0), "balanced_accuracy": (recall + specificity) / 2,
    }


def corner_threshold(y: np.ndarray, s: np.ndarray, W: "np.ndarray | None" = None,
                     grid: np.ndarray = CORNER_GRID) -> np.ndarray:
    """CT-CLIP's rule: the grid threshold whose ROC point (predicting s > t) is nearest (0, 1); ties go to
    the later (higher) threshold, because upstream keeps a candidate when its distance is <= the best."""
    W = _as_weights(W, len(y))
    pred = s[:, None] > grid[None, :]  # (n, G)
    yf = y.astype(np.float64)
    tp, fp = W @ (pred * yf[:, None]), W @ (pred * (1 - yf)[:, None])  # (R, G)
    P, N = (W @ yf)[:, None], (W @ (1 - yf))[:, None]
    dist = np.sqrt((1 - _divide(tp, P, np.nan)) ** 2 + _divide(fp, N, np.nan) ** 2)
    dist = np.where(np.isnan(dist), np.inf, dist)
    last_best = dist.shape[1] - 1 - np.argmin(dist[:, ::-1], axis=1)
    return grid[last_best]


def max_f1_threshold(y: np.ndarray, s: np.ndarray, W: "np.ndarray | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """(best positive-class F1 over every distinct score used as threshold s >= t, that threshold); (R,), (R,)."""
    W = _as_weights(W, len(y))
    tp, fp, scores = _descending_counts(y, s, W)
    P = tp[:, -1:]
    f1 = _divide(2 * tp, tp + fp + P, 0.0)
    best = np.argmax(f1, axis=1)
    return f1[np.arange(len(W)), best], scores[best]
