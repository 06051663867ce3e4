"""Confidence intervals for timing medians and for ratios of two medians (scipy's bootstrap).

A cell's timed steps are resampled with replacement (percentile intervals, a fixed seed so a report
is reproducible). A ratio's interval resamples the two cells independently, which is how they were
measured: in separate processes. What the interval covers is the noise among one process's timed
steps; it assumes those steps are exchangeable, so slow drift within a run (clocks, thermals) and
differences between runs of the same cell are not in it. A ratio whose interval excludes 1.0 is a
difference this run resolved, not a proof that another run would reproduce it.

With several rounds of the same cell (`bench.run --rounds N`, each a fresh process) the statistic is
the median over rounds of each round's median, and the interval is a two-level bootstrap: rounds are
resampled, then each drawn round's steps (Davison & Hinkley 1997, sec. 3.8). That puts run-to-run
variation into the interval. scipy's bootstrap has no nested resampling, so this part is numpy; with
one round it is the single-level interval above, exactly. Few rounds give a coarse, somewhat narrow
interval (three rounds can only say so much about between-run spread).
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
# At 5-6 samples (the GPU check's headline cells time 6) the 95 % interval still covered the true
# median in 92-94 % of 300 simulated lognormal cells, and a ratio of two such cells in 96-97 %.
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


def _rounds(rounds: Sequence[Sequence[float]] | None) -> list[np.ndarray] | None:
    kept = [arr for arr in (_clean(r) for r in rounds or []) if arr is not None]
    return kept or None


def _two_level_medians(rounds: list[np.ndarray], n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples,) draws of the median over rounds of each round's median, rounds and steps resampled."""
    n_rounds = len(rounds)
    picks = rng.integers(n_rounds, size=(n_resamples, n_rounds))
    per_round = np.empty((n_resamples, n_rounds))
    for slot in range(n_rounds):
        # Each slot draws its own step resample, so a round drawn twice is not counted twice identically.
        medians = np.stack([np.median(rng.choice(x, size=(n_resamples, x.size)), axis=1) for x in rounds])
        per_round[:, slot] = medians[picks[:, slot], np.arange(n_resamples)]
    return np.median(per_round, axis=1)


def _percentiles(draws: np.ndarray, confidence: float) -> Interval | None:
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return (float(lo), float(hi)) if np.isfinite(lo) and np.isfinite(hi) else None


def rounds_median(rounds: Sequence[Sequence[float]] | None) -> float | None:
    """The median over rounds of each round's median (None without a usable round)."""
    kept = _rounds(rounds)
    return None if kept is None else float(np.median([np.median(x) for x in kept]))


def rounds_median_ci(rounds: Sequence[Sequence[float]] | None, confidence: float = CONFIDENCE,
                     n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Interval | None:
    """Interval of `rounds_median`: median_ci for one round, the two-level bootstrap for several."""
    kept = _rounds(rounds)
    if kept is None:
        return None
    if len(kept) == 1:
        return median_ci(kept[0], confidence, n_resamples, seed)
    return _percentiles(_two_level_medians(kept, n_resamples, np.random.default_rng(seed)), confidence)


def rounds_median_ratio_ci(rounds: Sequence[Sequence[float]] | None,
                           base_rounds: Sequence[Sequence[float]] | None, confidence: float = CONFIDENCE,
                           n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Interval | None:
    """Interval of rounds_median(rounds) / rounds_median(base_rounds), the two cells resampled on their
    own; median_ratio_ci when each has one round."""
    kept, base = _rounds(rounds), _rounds(base_rounds)
    if kept is None or base is None or min(float(np.min(x)) for x in base) <= 0:
        return None
    if len(kept) == len(base) == 1:
        return median_ratio_ci(kept[0], base[0], confidence, n_resamples, seed)
    rng = np.random.default_rng(seed)
    ratios = _two_level_medians(kept, n_resamples, rng) / _two_level_medians(base, n_resamples, rng)
    return _percentiles(ratios, confidence)


def seeds_mean_ci(draws: Sequence[Sequence[float | None]], confidence: float = CONFIDENCE,
                  seed: int = SEED) -> Interval | None:
    """Interval of the mean over training seeds of a paired difference, from each seed's bootstrap draws.

    `draws[s][b]` is seed s's difference on resample b of the evaluated volumes; every seed must have
    drawn the same resamples (ablations.paired does: same volumes, groups and bootstrap seed), so the
    b-th draws of all seeds share one resample of the volumes. Each b then also resamples the seeds, so
    the interval covers both which volumes were evaluated and which training runs were made. With
    identical seeds it is the single seed's percentile interval exactly; few seeds give a coarse one.
    """
    if len(draws) < 2 or len({len(d) for d in draws}) != 1:
        return None
    table = np.array([[np.nan if v is None else v for v in d] for d in draws], dtype=float)  # (S, B)
    n_seeds, n_draws = table.shape
    picks = np.random.default_rng(seed).integers(n_seeds, size=(n_draws, n_seeds))
    combined = table[picks, np.arange(n_draws)[:, None]].mean(axis=1)
    combined = combined[np.isfinite(combined)]
    return _percentiles(combined, confidence) if combined.size else None
