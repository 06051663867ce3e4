"""Bootstrap intervals of timing medians and their ratios (reports/stats.py), and how tables show them.

References independent of scipy: for an odd sample size the bootstrap distribution of the median is
known exactly (the resampled median is at most the k-th order statistic iff at least (n+1)/2 of the n
draws are, a binomial count), and a ratio interval must cover the true ratio of two known distributions'
medians about as often as its confidence says.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from reports.build import build_reports
from reports.stats import MIN_SAMPLES, median_ci, median_ratio_ci, resolved
from tests.reports import factory as f
from tests.reports.mdparse import sections


def _exact_bootstrap_median_quantile(sorted_x: np.ndarray, q: float) -> int:
    """Index of the order statistic where the exact bootstrap CDF of the median first reaches q."""
    n = len(sorted_x)
    need = (n + 1) // 2
    for k in range(n):
        # P(resampled median <= x_(k)) = P(at least `need` of n draws land on x_(0..k)).
        if binom.sf(need - 1, n, (k + 1) / n) >= q:
            return k
    return n - 1


@pytest.mark.parametrize("n, seed", [(31, 0), (45, 1), (101, 2)])
def test_median_interval_matches_the_exact_bootstrap_distribution(n: int, seed: int) -> None:
    x = np.sort(np.random.default_rng(seed).lognormal(0.0, 0.1, n))
    lo, hi = median_ci(np.random.default_rng(seed + 10).permutation(x))
    k_lo, k_hi = _exact_bootstrap_median_quantile(x, 0.025), _exact_bootstrap_median_quantile(x, 0.975)
    # 2,000 resamples put the percentile within one order statistic of the exact one.
    assert x[max(k_lo - 1, 0)] <= lo <= x[k_lo + 1]
    assert x[k_hi - 1] <= hi <= x[min(k_hi + 1, n - 1)]
    assert lo <= np.median(x) <= hi


def test_ratio_interval_covers_the_true_ratio_at_its_confidence() -> None:
    rng = np.random.default_rng(3)
    true_ratio = np.exp(-0.1)  # lognormal medians exp(-0.1) and exp(0): a 0.905x step time
    covered = 0
    trials = 200
    for _ in range(trials):
        faster, base = rng.lognormal(-0.1, 0.05, 30), rng.lognormal(0.0, 0.05, 30)
        lo, hi = median_ratio_ci(faster, base)
        covered += lo <= true_ratio <= hi
    # Binomial(200, 0.95) lies in [182, 197] with probability > 0.99; a swapped ratio covers 0 times.
    assert 0.88 <= covered / trials <= 0.99


def test_ratio_interval_is_of_value_over_baseline() -> None:
    rng = np.random.default_rng(4)
    slow, base = rng.normal(2.0, 0.01, 30), rng.normal(1.0, 0.01, 30)
    lo, hi = median_ratio_ci(slow, base)
    assert 1.95 < lo < np.median(slow) / np.median(base) < hi < 2.05
    assert resolved((lo, hi)) is True
    same = median_ratio_ci(rng.normal(1.0, 0.05, 30), rng.normal(1.0, 0.05, 30))
    assert same[0] < 1.0 < same[1] and resolved(same) is False
    assert resolved(None) is None


def test_degenerate_inputs() -> None:
    assert median_ci([0.1] * (MIN_SAMPLES - 1)) is None  # too few to say anything
    assert median_ci(None) is None and median_ratio_ci([1.0] * 30, None) is None
    assert median_ci([0.25] * 10) == (0.25, 0.25)  # no spread, no uncertainty
    assert median_ratio_ci([1.0] * 10, [0.0] * 10) is None  # a zero baseline has no ratio
    # Non-finite samples are dropped, not propagated.
    lo, hi = median_ci([1.0, 2.0, 3.0, 4.0, 5.0, float("nan"), float("inf")])
    assert 1.0 <= lo <= 3.0 <= hi <= 5.0
    # The same call gives the same interval: a report rebuilt from the same file does not change.
    x = np.random.default_rng(5).normal(1.0, 0.1, 30)
    assert median_ci(x) == median_ci(x)


def _with_samples(row: dict, rng: np.random.Generator, spread: float = 0.02) -> dict:
    for stats in row["stages"].values():
        stats["samples"] = list(rng.normal(stats["median"], spread * stats["median"], stats["n"]))
        stats["median"] = float(np.median(stats["samples"]))
    return row


def test_tables_show_the_step_ratio_interval(tmp_path) -> None:
    rng = np.random.default_rng(6)
    base = _with_samples(f.eff_row(baseline=True, step=0.100), rng)
    faster = _with_samples(f.eff_row(f.MODERN, step=0.090), rng)
    few = f.eff_row(dict(f.FAITHFUL, loss="siglip"), step=0.095)  # the factory keeps 3 samples
    f.write(tmp_path / "r.jsonl", [base, faster, few])
    build_reports([tmp_path], tmp_path / "out", ["md", "csv", "tex"])
    table = sections(tmp_path / "out" / "efficiency.md")[0]
    expected = median_ratio_ci(faster["stages"]["step"]["samples"], base["stages"]["step"]["samples"])
    ratio = faster["stages"]["step"]["median"] / base["stages"]["step"]["median"]
    shown = table.row("architecture", "FA (SDPA) + SwiGLU + RMSNorm")["total step (ms)"]
    assert shown.endswith(f"({ratio:.2f}× [{expected[0]:.2f}, {expected[1]:.2f}])")
    assert expected[1] < 1.0  # a 10 % faster step with 2 % noise is resolved
    assert "[" not in table.rows[0]["total step (ms)"]  # the baseline has no ratio
    assert table.rows[2]["total step (ms)"].endswith("×)")  # three samples: no interval
    assert "bootstrap interval" in table.caption
    # Only the step's ratio is shown; the CSV has every stage's intervals.
    assert "[" not in table.rows[1]["backward (ms)"]
    frame = pd.read_csv(tmp_path / "out" / "efficiency.csv")
    assert frame["total step (ms) / baseline CI low"].iloc[1] == pytest.approx(expected[0])
    backward = median_ratio_ci(faster["stages"]["backward"]["samples"], base["stages"]["backward"]["samples"])
    assert frame["backward median (ms) / baseline CI high"].iloc[1] == pytest.approx(backward[1])
    median_interval = median_ci(base["stages"]["step"]["samples"])
    assert frame["step median (ms) CI low"].iloc[0] == pytest.approx(median_interval[0] * 1e3)
    assert frame["step median (ms) CI low"].isna().iloc[2]
    tex = (tmp_path / "out" / "efficiency.tex").read_text()
    assert f"{ratio:.2f}" + r"$\times$" + f" [{expected[0]:.2f}, {expected[1]:.2f}]" in tex


def test_no_interval_note_without_samples(tmp_path) -> None:
    f.write(tmp_path / "r.jsonl", [f.eff_row(baseline=True), f.eff_row(f.MODERN, step=0.05)])
    build_reports([tmp_path], tmp_path / "out", ["md"])
    table = sections(tmp_path / "out" / "efficiency.md")[0]
    assert "bootstrap" not in table.caption and "[" not in table.rows[1]["total step (ms)"]
