"""Statistics against the standard library, and the interleaved stage timer on a step of known length."""

import statistics
import time

import pytest
import torch

from bench.result import STAGES, StageStats, stage_flags
from bench.timers import TimingSettings, summarize, time_stable, time_stages


def test_summarize_matches_statistics_module():
    samples = [0.031, 0.010, 0.052, 0.020, 0.011, 0.090, 0.013, 0.040, 0.012]
    q = statistics.quantiles(samples, n=20, method="inclusive")  # 5 % steps: q[1]=p10, q[4]=p25, ...
    stats = summarize(samples)
    assert stats.median == pytest.approx(statistics.median(samples))
    assert stats.p10 == pytest.approx(q[1]) and stats.p90 == pytest.approx(q[17])
    assert stats.iqr == pytest.approx(q[14] - q[4])
    assert stats.n == len(samples) and stats.samples == samples


class SleepStep:
    """A fake train step whose five stages sleep known amounts."""

    durations = (0.004, 0.006, 0.001, 0.008, 0.003)

    def __init__(self):
        self.zeroed = 0

    def __call__(self, mark=lambda: None):
        mark()
        for d in self.durations:
            time.sleep(d)
            mark()

    def zero_grad(self):
        self.zeroed += 1


def test_stage_timer_measures_known_sleeps():
    step = SleepStep()
    timer, stats = time_stages(step, TimingSettings(warmup=1, repeats=8), torch.device("cpu"))
    assert timer == "perf_counter"
    assert set(stats) == set(STAGES) | {"step"}
    for name, d in zip(STAGES, SleepStep.durations):
        assert d <= stats[name].median < d + 0.004, name
        assert stats[name].n == 8
    assert sum(SleepStep.durations) <= stats["step"].median < sum(SleepStep.durations) + 0.01
    assert step.zeroed == 16  # grads cleared after every staged and every whole step


def test_flags_for_mismatch_and_noise():
    def s(m, iqr=0.0):
        return StageStats(median=m, iqr=iqr, p10=m, p90=m, n=3)

    good = {name: s(0.01) for name in STAGES} | {"step": s(0.05)}
    assert stage_flags(good) == []
    bad = dict(good, step=s(0.07))
    assert "stage_sum_mismatch" in stage_flags(bad)
    assert stage_flags(dict(good, backward=s(0.01, iqr=0.002))) == ["noisy:backward"]


def test_time_stable_keeps_first_clean_window_and_reports_all():
    step = SleepStep()
    timer, stats, windows = time_stable(step, TimingSettings(warmup=1, repeats=5, attempts=3), torch.device("cpu"))
    assert windows and sum(w["kept"] for w in windows) == 1
    kept = next(w for w in windows if w["kept"])
    assert kept["step_median"] == stats["step"].median
