"""bench.gpu_summary on GPU-shaped rows: what a reader of summary.md must not miss. Flags (a biased or
MFU-less row), an MFU nobody counted, a ratio too few steps gave no interval, and why a cell timed out
are each checked against text or figures worked out here from the rows themselves."""

from __future__ import annotations

import dataclasses

from bench.gpu_plan import make_plan
from bench.gpu_summary import TARGET_FAST_MFU, TARGET_FAST_TIME, paper_section, profile_section, targets_section
from bench.result import Result
from reports.stats import MIN_SAMPLES, median_ratio_ci
from tests.bench.gpu_rows import FAITHFUL, FAST, MODERN, gpu_row

OVERFLOW = "fp16_overflow: GradScaler skipped optimizer steps while timing"


def test_a_flagged_row_shows_its_flag_and_the_headline_warns():
    rows = [gpu_row(FAITHFUL, [1.0] * 4, baseline=True), gpu_row(MODERN, [0.9] * 4, flags=(OVERFLOW,))]
    text = "\n".join(paper_section(rows, "bf16", "paper")[0])
    modern_line = next(line for line in text.splitlines() if line.startswith(f"| {MODERN.key} |"))
    assert modern_line.endswith(f"| {OVERFLOW} |")
    warning, headline = text.split("**Modern (FA", 1)
    assert "Warning" in warning and f"modern row: {OVERFLOW}" in warning
    # Unflagged rows: no warning before the headline.
    # Unflagged rows, or the spread of a stage other than the step (shown in notes): no warning.
    clean = "\n".join(paper_section([rows[0], gpu_row(MODERN, [0.9] * 4, flags=("noisy:loss",))], "bf16",
                                     "paper")[0])
    assert "Warning" not in clean and "**Modern (FA" in clean and "| noisy: loss |" in clean
    # A flagged candidate's target verdict carries the flag too.
    base = gpu_row(FAITHFUL, [1.0] * 6, baseline=True)
    lines, _ = targets_section([gpu_row(FAST, [0.4] * 6, mfu=0.45, flags=(OVERFLOW,))], [base])
    assert next(line for line in lines if line.startswith("- Fastest:")).endswith(f"reached. Flagged: {OVERFLOW}.")


def test_a_failed_profile_is_said_in_the_profile_section():
    failed = gpu_row(MODERN, [0.9] * 4, flags=("profile_failed: RuntimeError: CUPTI busy",))
    lines, data = profile_section([failed])
    text = "\n".join(lines)
    assert f"**{MODERN.key}**" in text and "profile_failed: RuntimeError: CUPTI busy" in text
    assert "(no profiled cell)" not in text and MODERN.key in data


def _fastest_verdict(step_s: float, mfu: float | None) -> tuple[str, object]:
    base = gpu_row(FAITHFUL, [1.0] * 6, baseline=True)
    lines, data = targets_section([gpu_row(FAST, [step_s] * 6, mfu=mfu)], [base])
    (line,) = [line for line in lines if line.startswith("- Fastest:")]
    return line, data["fastest"]["reached"]


def test_an_unknown_mfu_leaves_the_fast_target_undetermined():
    quick = TARGET_FAST_TIME * 0.8  # within the step-time target
    line, reached = _fastest_verdict(quick, None)
    assert reached is None and "undetermined (no FLOP count, so no MFU)" in line and "not reached" not in line
    # Known answers stay as they were: a slow step fails whatever the MFU, and a counted MFU decides.
    assert _fastest_verdict(TARGET_FAST_TIME * 1.2, None)[1] is False
    assert _fastest_verdict(quick, TARGET_FAST_MFU + 0.01)[1] is True
    assert _fastest_verdict(quick, TARGET_FAST_MFU - 0.01)[1] is False


def test_an_unknown_mfu_carried_over_to_the_target_gpu_is_undetermined():
    """Measured on an H200 without a FLOP count: the H100 verdict cannot be 'not reached' either."""
    def on_h200(r: Result) -> Result:
        r.peak = {"entry": "H200 SXM", "precision": "bf16", "tflops": 989.4}
        return r

    base = on_h200(gpu_row(FAITHFUL, [0.080] * 6, baseline=True, gpu="NVIDIA H200"))
    quick = on_h200(gpu_row(FAST, [0.030] * 6, mfu=None, gpu="NVIDIA H200"))
    estimates = {("paper", 4, r.variant_key): dataclasses.replace(
        r, kind="estimate", roofline={"step_s": bound, "step_s_on": {"H100 SXM": bound}})
        for r, bound in ((base, 0.070), (quick, 0.020))}
    lines, data = targets_section([quick], [base], estimates)
    carried = data["fastest_on_target_gpu"]
    assert carried["time_ratio"] < TARGET_FAST_TIME and carried["reached"] is None
    assert "undetermined (no FLOP count, so no MFU) there" in "\n".join(lines)


def test_a_ratio_without_an_interval_says_how_many_samples_it_had():
    few = [gpu_row(FAITHFUL, [1.0, 1.01, 0.99, 1.02], baseline=True), gpu_row(MODERN, [0.9, 0.91, 0.89, 0.92])]
    assert median_ratio_ci([0.9, 0.91, 0.89, 0.92], [1.0, 1.01, 0.99, 1.02]) is None  # 4 < MIN_SAMPLES
    text = "\n".join(paper_section(few, "bf16", "paper")[0])
    assert "step time 0.900x (4 samples, no interval)." in text
    assert "4 samples per cell, no interval" in text
    # Enough samples: the interval, and no sample-count remark.
    n = MIN_SAMPLES
    enough = [gpu_row(FAITHFUL, [1.0 + 0.01 * i for i in range(n)], baseline=True),
              gpu_row(MODERN, [0.9 + 0.01 * i for i in range(n)])]
    lo, hi = median_ratio_ci([0.9 + 0.01 * i for i in range(n)], [1.0 + 0.01 * i for i in range(n)])
    text = "\n".join(paper_section(enough, "bf16", "paper")[0])
    assert f"[{lo:.2f}, {hi:.2f}]" in text and "no interval" not in text
    # The targets' verdict line too.
    base = gpu_row(FAITHFUL, [1.0] * 6, baseline=True)
    lines, _ = targets_section([gpu_row(FAST, [0.4] * 4, mfu=0.45)], [base])
    assert "Step ratio: 4 samples, no interval." in next(line for line in lines if line.startswith("- Fastest:"))


def test_the_gpu_plan_times_the_targets_for_an_interval():
    parts = {p.name: p for p in make_plan(dry_run=False).cell_parts}
    for name in ("targets", "targets-compiled"):
        assert parts[name].timing["repeats"] >= MIN_SAMPLES, name
    # The baseline they are compared with (paper-bf16) has at least as many.
    assert parts["paper-bf16"].timing["repeats"] >= MIN_SAMPLES


def test_a_timeout_keeps_the_end_of_its_log_tail():
    """bench.runner's timeout message, whose first line says only that the cell stopped."""
    message = ("no result after 90 s; process group killed. Log tail:\nbuilding model\n"
               "compiling vision tower | graph 3 of 7\n\n")
    rows = [gpu_row(FAITHFUL, [1.0] * 4, baseline=True),
            gpu_row(MODERN, [], status="timeout", message=message)]
    text = "\n".join(paper_section(rows, "bf16", "paper")[0])
    line = next(line for line in text.splitlines() if line.startswith(f"| {MODERN.key} |"))
    assert "no result after 90 s" in line and "compiling vision tower / graph 3 of 7" in line
    assert line.count("|") == 11  # ten columns: the log's "|" did not add one
