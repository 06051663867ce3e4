"""The three evaluation protocols; every output names the one it used.

- `ctclip`: CT-CLIP's published definition (`scripts/bootstrap_values.py`). Per class, the threshold on
  a 100-point grid in [0, 1] whose ROC point is nearest the top-left corner, chosen on the evaluated
  set itself; a volume is called positive when p > threshold; F1 is scikit-learn's support-weighted F1
  over the two classes (dominated by negatives, CT-CLIP issue #38); precision is the positive class's.
  Reproduces how the paper's numbers were computed, optimistic thresholds included.
- `clean`: thresholds fit with the same corner rule on a held-out slice of the *training* data when
  one is given, else fixed at 0.5 (positive prompt beats negative prompt); positive-class F1.
- `maxf1`: per class the best positive-class F1 over every threshold (CTCLIP_MODERN's F1), with the
  other threshold metrics at that same operating point (p >= t). Chosen on the evaluated set: optimistic.

AUROC and AUPRC do not depend on the protocol. In the bootstrap, protocols that choose thresholds on
the evaluated set choose them again on every resample, since that choice is part of the procedure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ablations import weighted
from ablations.bootstrap import BootstrapSpec, class_averages, percentile_interval, resample_weights
from ablations.metrics import METRICS, average, class_metrics, is_defined


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    optimistic: bool
    f1_average: str  # "weighted" (CT-CLIP) or "binary" (positive class)
    strict: bool  # positive when p > t (True) or p >= t (False)


PROTOCOLS: dict[str, Protocol] = {
    "ctclip": Protocol(
        "ctclip",
        "threshold per class nearest the ROC corner on a 100-point grid, chosen on the evaluated set; "
        "p > t; sklearn weighted F1; positive-class precision (CT-CLIP's published definition)",
        optimistic=True, f1_average="weighted", strict=True),
    "clean": Protocol(
        "clean", "", optimistic=False, f1_average="binary", strict=True),  # description depends on calibration
    "maxf1": Protocol(
        "maxf1",
        "per class the best positive-class F1 over all thresholds, other metrics at that threshold (p >= t), "
        "chosen on the evaluated set (CTCLIP_MODERN's F1); optimistic",
        optimistic=True, f1_average="binary", strict=False),
}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; valid protocols: {', '.join(PROTOCOLS)}") from None


def clean_description(calibrated: bool) -> str:
    where = ("fit with the ROC-corner rule on a held-out slice of the training data" if calibrated
             else "fixed at 0.5 (positive prompt beats negative prompt)")
    return f"thresholds {where}; p > t; positive-class F1, precision and recall"


def calibrate(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per-class thresholds for `clean` from held-out training volumes: (n, C) labels and scores -> (C,)."""
    return np.array([weighted.corner_threshold(y[:, c], s[:, c])[0] if is_defined(y[:, c]) else 0.5
                     for c in range(y.shape[1])])


def choose_thresholds(protocol: Protocol, y: np.ndarray, s: np.ndarray, W: "np.ndarray | None",
                      fixed: "float | None") -> np.ndarray:
    """One class's threshold per resample (R,)."""
    if protocol.name == "ctclip":
        return weighted.corner_threshold(y, s, W)
    if protocol.name == "maxf1":
        return weighted.max_f1_threshold(y, s, W)[1]
    n_rows = 1 if W is None else len(W)
    return np.full(n_rows, 0.5 if fixed is None else fixed)


def resampled(protocol: Protocol, Y: np.ndarray, S: np.ndarray, W: np.ndarray,
              fixed: "np.ndarray | None") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every metric of every class on every resample: {metric: (R, C)} and supports (R, C)."""
    R, C = len(W), Y.shape[1]
    out = {m: np.full((R, C), np.nan) for m in METRICS}
    supports = W @ Y.astype(np.float64)
    for c in range(C):
        y, s = Y[:, c], S[:, c]
        t = choose_thresholds(protocol, y, s, W, None if fixed is None else float(fixed[c]))
        values = weighted.threshold_metrics(weighted.counts_at(y, s, t, W, strict=protocol.strict),
                                            protocol.f1_average)
        values["auroc"], values["auprc"] = weighted.auroc(y, s, W), weighted.average_precision(y, s, W)
        ok = (supports[:, c] > 0) & (supports[:, c] < W.sum(axis=1))  # both label values drawn
        for m in METRICS:
            out[m][:, c] = np.where(ok, values[m], np.nan)
    return out, supports


def evaluate_protocol(name: str, Y: np.ndarray, S: np.ndarray, classes: Sequence[str],
                      groups: "Sequence | None" = None, calibration: "np.ndarray | None" = None,
                      bootstrap: "BootstrapSpec | None" = BootstrapSpec()) -> dict[str, Any]:
    """The protocol block of the accuracy schema: point estimates (scikit-learn) with bootstrap CIs.

    Y, S: (n, C) labels and P(present); `calibration`: (C,) thresholds for `clean` (None = 0.5).
    """
    protocol = get_protocol(name)
    Y, S = np.asarray(Y).astype(int), np.asarray(S, dtype=np.float64)
    per_class: dict[str, dict[str, Any]] = {}
    supports = {c: int(Y[:, i].sum()) for i, c in enumerate(classes)}
    for i, c in enumerate(classes):
        fixed = None if calibration is None else float(calibration[i])
        t = float(choose_thresholds(protocol, Y[:, i], S[:, i], None, fixed)[0])
        pred = S[:, i] > t if protocol.strict else S[:, i] >= t
        per_class[c] = {**class_metrics(Y[:, i], S[:, i], pred, protocol.f1_average),
                        "threshold": t, "support": supports[c]}
    point = {"macro": average(per_class, supports, "macro"), "weighted": average(per_class, supports, "weighted")}

    ci: dict[str, dict[str, tuple]] = {"macro": {}, "weighted": {}}
    if bootstrap is not None and bootstrap.n > 0:
        W = resample_weights(len(Y), bootstrap.n, bootstrap.seed, groups)
        values, sup = resampled(protocol, Y, S, W, calibration)
        for m in METRICS:
            macro, wtd = class_averages(values[m], sup)
            ci["macro"][m] = percentile_interval(macro, bootstrap.confidence)
            ci["weighted"][m] = percentile_interval(wtd, bootstrap.confidence)

    def block(how: str) -> dict[str, dict]:
        return {m: {"value": point[how][m], "ci_low": ci[how].get(m, (None, None))[0],
                    "ci_high": ci[how].get(m, (None, None))[1]} for m in METRICS}

    description = clean_description(calibration is not None) if name == "clean" else protocol.description
    return {
        "description": description, "optimistic": protocol.optimistic,
        "macro": block("macro"), "weighted": block("weighted"), "per_class": per_class,
        "bootstrap": (bootstrap.as_dict("patient" if groups is not None else "volume")
                      if bootstrap is not None and bootstrap.n > 0 else None),
    }
