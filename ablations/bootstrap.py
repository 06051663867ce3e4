"""Bootstrap confidence intervals that really resample (CT-CLIP's own script never applied its indices).

A resample draws units with replacement: patients when patient ids are known (so the reconstructions
and scans of one patient stay together, as CT-RATE's splits require), else volumes. It is represented
as integer weights per volume (how often its unit was drawn), which the functions in
`ablations.weighted` consume, so no data are copied. Intervals are percentile intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BootstrapSpec:
    n: int = 1000
    seed: int = 0
    confidence: float = 0.95

    def as_dict(self, by: str) -> dict:
        return {"n": self.n, "by": by, "seed": self.seed, "confidence": self.confidence}


def resample_weights(n_items: int, n_boot: int, seed: int, groups: "np.ndarray | list | None" = None) -> np.ndarray:
    """(n_boot, n_items) weights: draw len(units) units with replacement, each volume weighs its unit's count."""
    rng = np.random.default_rng(seed)
    if groups is None:
        unit_of = np.arange(n_items)
    else:
        _, unit_of = np.unique(np.asarray(groups), return_inverse=True)
    n_units = int(unit_of.max()) + 1 if n_items else 0
    # Multinomial counts are exactly "draw n_units indices with replacement and count them".
    counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot)
    return counts[:, unit_of].astype(np.float64)


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple["float | None", "float | None"]:
    """Percentile interval of the finite values; (None, None) when none are finite."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None, None
    alpha = (1 - confidence) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    return float(low), float(high)


def class_averages(per_class: np.ndarray, supports: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(macro, weighted) per resample from (R, C) metric values (NaN = undefined) and (R, C) supports."""
    defined = np.isfinite(per_class)
    values = np.where(defined, per_class, 0.0)
    n_defined = defined.sum(axis=1)
    weights = np.where(defined, supports, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        macro = np.where(n_defined > 0, values.sum(axis=1) / np.maximum(n_defined, 1), np.nan)
        total = weights.sum(axis=1)
        weighted = np.where(total > 0, (values * weights).sum(axis=1) / np.where(total > 0, total, 1), np.nan)
    return macro, weighted
