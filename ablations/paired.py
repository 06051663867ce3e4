"""Is one model's zero-shot AUROC really higher than another's? A paired bootstrap on the same volumes.

Two models evaluated on the same volumes make correlated errors (the same hard cases are hard for both),
so the interval of the *difference* is far narrower than the two separate intervals suggest, and the
right test resamples once and scores both models on each resample (the paired bootstrap; Efron &
Tibshirani 1993, ch. 16). Resampling is by patient when CT-RATE volume names carry one, as for the
single-model intervals (ablations.bootstrap). The seed reported 0.604 -> 0.620 macro AUROC on 498
validation volumes from one run each; this is the comparison that says whether such a gap is resolved.

The per-volume scores a comparison needs are saved beside each accuracy row (`save_scores`), so a
variant can be compared with a baseline that ran in another process or an earlier, resumed run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from ablations import weighted
from ablations.bootstrap import BootstrapSpec, class_averages, percentile_interval, resample_weights
from ablations.metrics import finite_or_none, is_defined
from ablations.zeroshot import ZeroShotScores


def save_scores(path: Path, scores: ZeroShotScores) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, probabilities=scores.probabilities.astype(np.float32),
                        labels=scores.labels.astype(np.int8), names=np.array(scores.names),
                        classes=np.array(scores.classes))
    return path


def load_scores(path: Path) -> ZeroShotScores:
    with np.load(path, allow_pickle=False) as data:
        return ZeroShotScores(probabilities=data["probabilities"].astype(np.float64),
                              labels=data["labels"].astype(int), names=[str(n) for n in data["names"]],
                              classes=[str(c) for c in data["classes"]])


def _aligned(candidate: ZeroShotScores, baseline: ZeroShotScores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, candidate scores, baseline scores) in the candidate's volume order; both must have scored
    the same volumes and classes with the same labels, or there is nothing paired to compare."""
    if list(candidate.classes) != list(baseline.classes):
        raise ValueError("the two score sets name different classes")
    if sorted(candidate.names) != sorted(baseline.names) or len(set(candidate.names)) != len(candidate.names):
        raise ValueError("the two score sets cover different volumes; a paired comparison needs the same ones")
    order = {name: i for i, name in enumerate(baseline.names)}
    index = np.array([order[name] for name in candidate.names])
    if not np.array_equal(candidate.labels, baseline.labels[index]):
        raise ValueError("the two score sets disagree on the labels of the same volumes")
    return candidate.labels, candidate.probabilities, baseline.probabilities[index]


def _macro_auroc(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, dict[int, float]]:
    per_class = {i: float(roc_auc_score(labels[:, i], scores[:, i]))
                 for i in range(labels.shape[1]) if is_defined(labels[:, i])}
    return (float(np.mean(list(per_class.values()))) if per_class else None), per_class


def paired_auroc(candidate: ZeroShotScores, baseline: ZeroShotScores, groups: "Sequence | None" = None,
                 spec: BootstrapSpec = BootstrapSpec()) -> dict[str, Any]:
    """Macro and per-class AUROC of candidate minus baseline on the same volumes, each with a paired
    percentile interval and a two-sided bootstrap p-value (twice the smaller share of resampled
    differences on either side of zero; its resolution is 1 / spec.n)."""
    labels, s_cand, s_base = _aligned(candidate, baseline)
    macro_cand, per_cand = _macro_auroc(labels, s_cand)
    macro_base, per_base = _macro_auroc(labels, s_base)
    out: dict[str, Any] = {
        "n_eval": int(len(labels)), "bootstrap": spec.as_dict("patient" if groups is not None else "volume"),
        "macro_auroc": {"candidate": macro_cand, "baseline": macro_base,
                        "delta": None if macro_cand is None else macro_cand - macro_base},
        "per_class": {},
    }
    if macro_cand is None:
        return out
    W = resample_weights(len(labels), spec.n, spec.seed, groups)
    n_classes = labels.shape[1]
    deltas = np.full((spec.n, n_classes), np.nan)
    cand_boot, base_boot = np.full_like(deltas, np.nan), np.full_like(deltas, np.nan)
    supports = W @ labels  # (R, C) positives drawn; class_averages only uses them for "weighted"
    for i in per_cand:
        cand_boot[:, i] = weighted.auroc(labels[:, i], s_cand[:, i], W)
        base_boot[:, i] = weighted.auroc(labels[:, i], s_base[:, i], W)
        deltas[:, i] = cand_boot[:, i] - base_boot[:, i]
    macro_delta = class_averages(cand_boot, supports)[0] - class_averages(base_boot, supports)[0]
    out["macro_auroc"].update(_interval(macro_delta, spec.confidence))
    # Every seed's comparison draws the same resamples (same volumes, groups and bootstrap seed), so
    # keeping the draws lets a report combine seeds draw by draw (reports.stats.seeds_mean_ci).
    out["macro_auroc_draws"] = [None if not np.isfinite(d) else round(float(d), 6) for d in macro_delta]
    out["per_class"] = {candidate.classes[i]: {"candidate": per_cand[i], "baseline": per_base[i],
                                               "delta": per_cand[i] - per_base[i],
                                               **_interval(deltas[:, i], spec.confidence)}
                        for i in per_cand}
    return out


def _interval(draws: np.ndarray, confidence: float) -> dict[str, float | None]:
    low, high = percentile_interval(draws, confidence)
    finite = draws[np.isfinite(draws)]
    p = None
    if finite.size:
        p = min(1.0, 2 * min(float(np.mean(finite <= 0)), float(np.mean(finite >= 0))))
    return {"ci_low": low, "ci_high": high, "p_value": finite_or_none(p) if p is not None else None}
