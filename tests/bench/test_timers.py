"""Statistics against the standard library, and the interleaved stage timer on a step of known length."""

import statistics
import time

import pytest
import torch

from bench.result import STAGES, StageStats, stage_flags
from bench.step import TrainStep
from bench.timers import FP16_SETTLE_STEPS, TimingSettings, summarize, time_stable, time_stages, warm_up
from models import SIZES, Variant, build, example_batch


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


class ScaledStep(SleepStep):
    """A fake fp16 step whose loss scaler overflows (halves, skips the optimizer) on its first
    `overflows` steps; AdamW-like state appears on the first step that is not skipped."""

    durations = (0.0,) * len(STAGES)

    def __init__(self, overflows):
        super().__init__()
        self.overflows, self.calls = overflows, 0
        self.optimizer = type("Optimizer", (), {"state": {}})()
        self.scaler = type("Scaler", (), {"scale": 2.0 ** 16, "get_scale": lambda s: s.scale})()

    def __call__(self, mark=lambda: None):
        super().__call__(mark)
        self.calls += 1
        if self.calls <= self.overflows:
            self.scaler.scale /= 2
        else:
            self.optimizer.state["param"] = "moments"


@pytest.mark.parametrize("overflows, expected", [(0, 2), (1, 2), (5, 6), (10 ** 6, 2 + FP16_SETTLE_STEPS)])
def test_warm_up_runs_until_loss_scaling_stops_skipping(overflows, expected):
    settings = TimingSettings(warmup=2, warmup_time_s=0.0)
    assert warm_up(ScaledStep(overflows), settings, torch.device("cpu")) == expected
    assert warm_up(SleepStep(), settings, torch.device("cpu")) == 2  # no scaler: the count alone


def test_fp16_train_step_is_past_its_skipped_steps_after_warm_up():
    torch.manual_seed(0)
    size = SIZES["tiny"]
    step = TrainStep(build(Variant.modern().replace(precision="fp16"), size), example_batch(size, batch=2))
    n = warm_up(step, TimingSettings(warmup=1, warmup_time_s=0.0), torch.device("cpu"))
    assert n > 1 and step.optimizer.state  # the initial 2**16 scale overflows on this model
    scale = step.scaler.get_scale()
    for _ in range(3):  # what timing would see: every step updates the weights
        step()
        step.zero_grad()
    assert step.scaler.get_scale() == scale
