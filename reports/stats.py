"""Confidence intervals for timing medians and for ratios of two medians (scipy's bootstrap).

A cell's timed steps are resampled with replacement (percentile intervals, a fixed seed so a report
is reproducible). A ratio's interval resamples the two cells independently, which is how they were
measured: in separate processes. What the interval covers is the noise among one process's timed
steps; it assumes those steps are exchangeable, so slow drift within a run (clocks, thermals) and
differences between runs of the same cell are not in it. A ratio whose interval excludes 1.0 is a
difference this run resolved, not a proof that another run would reproduce it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0
# Fewer samples than this give an interval made of a handful of order statistics: none is reported.
MIN_SAMPLES = 5

Interval = tuple[float, float]


def _median(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(samples[0], axis=axis)


def _median_ratio(samples: np.ndarray, base_samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(samples, axis=axis) / np.median(base_samples, axis=axis)


def _bootstrap(data: tuple[np.ndarray, ...], statistic, confidence: float, n_resamples: int,
               seed: int) -> Interval | None:
    # scipy 1.15 renamed random_state to rng; the GPU image's scipy may be older or newer than ours.
    seed_arg = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    result = stats.bootstrap(data, statistic, n_resamples=n_resamples, confidence_level=confidence,
                             method="percentile", vectorized=True, axis=-1,
                             **{seed_arg: np.random.default_rng(seed)})
    lo, hi = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else None


def _clean(samples: Sequence[float] | None) -> np.ndarray | None:
    if samples is None:
        return None
    arr = np.asarray(samples, dtype=float)
    arr = arr[np.isfinite(arr)]
    return arr if arr.size >= MIN_SAMPLES else None


def median_ci(samples: Sequence[float] | None, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
              seed: int = SEED) -> Interval | None:
    """Percentile bootstrap interval of the median; None with fewer than MIN_SAMPLES finite samples."""
    arr = _clean(samples)
    if arr is None:
        return None
    if np.all(arr == arr[0]):
        return float(arr[0]), float(arr[0])
    return _bootstrap((arr,), _median, confidence, n_resamples, seed)


def median_ratio_ci(samples: Sequence[float] | None, base_samples: Sequence[float] | None,
                    confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                    seed: int = SEED) -> Interval | None:
    """Interval of median(samples) / median(base_samples), each resampled on its own; None when either
    has fewer than MIN_SAMPLES finite samples or a resampled baseline median is not positive."""
    arr, base = _clean(samples), _clean(base_samples)
    if arr is None or base is None or np.min(base) <= 0:
        return None
    return _bootstrap((arr, base), _median_ratio, confidence, n_resamples, seed)


def resolved(interval: Interval | None) -> bool | None:
    """Whether a ratio's interval excludes 1.0 (None when there is no interval)."""
    if interval is None:
        return None
    return not (interval[0] <= 1.0 <= interval[1])
