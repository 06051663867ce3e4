"""One cell's figures as the GPU check's summary reads them (memory, step, ratios) and prints them.

Every function takes what a results file holds (bench.result.Result) or a plain number, and returns a
number or its text; "n/a" stands for a figure the run did not produce.
"""

from __future__ import annotations

from bench.result import Result
from reports import labels
from reports.stats import MIN_SAMPLES

GIB = 2**30
NOTE_LIMIT = 160  # characters of a note or flag kept in a table cell


def memory_of(r: Result) -> tuple[int | None, str]:
    """The cell's peak and what it is: the CUDA allocator's, or on a CPU the bytes its accounting adds up."""
    m = r.memory
    if m.gpu_allocated_peak_bytes is not None:
        return m.gpu_allocated_peak_bytes, "allocator peak"
    parts = (m.param_bytes, m.grad_bytes, m.optimizer_state_bytes, m.saved_activations_bytes)
    if all(p is not None for p in parts):
        return sum(parts), "accounted (no GPU)"
    return None, ""


def step_of(r: Result) -> float | None:
    return r.stages["step"].median if r.status == "ok" and "step" in r.stages else None


def step_samples(r: Result | None) -> list[float] | None:
    return r.stages["step"].samples if r is not None and step_of(r) is not None else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def error(predicted: float | None, measured: float | None) -> float | None:
    """predicted / measured - 1."""
    r = ratio(predicted, measured)
    return None if r is None else r - 1


def table_note(status: str, reason: str | None, message: str | None, flags: list[str]) -> str:
    """The reports' notes column wording, with no '|' to break a Markdown table."""
    return labels.note(status, reason, message, flags, limit=NOTE_LIMIT).replace("|", "/")


def notes_of(r: Result) -> str:
    """Why the cell did not run, or its flags."""
    return table_note(r.status, r.reason, r.message, list(r.flags))


def verdict_flags(flags: list[str]) -> str:
    """The flags that bear on a verdict: all but the spread of a stage other than the whole step."""
    return table_note("ok", None, None, [f for f in flags if not f.startswith("noisy:") or f == "noisy:step"])


def x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}x"


def x_ci(value: float | None, interval: list[float] | tuple[float, float] | None, samples: int | None = None
         ) -> str:
    """0.940x [0.93, 0.95]: the ratio and its 95 % bootstrap interval (reports/stats.py); without one,
    given `samples`, 0.940x (4 samples, no interval): a bare ratio must not pass for a resolved one."""
    if value is not None and interval:
        return f"{x(value)} [{interval[0]:.2f}, {interval[1]:.2f}]"
    return x(value) + (f" ({samples} samples, no interval)" if value is not None and samples is not None else "")


def bare_ratio_line(counts: list[int]) -> list[str]:
    """The line under a table whose time ratios had too few samples for an interval."""
    if not counts:
        return []
    return ["", f"Time ratios without brackets: {' or '.join(str(n) for n in sorted(set(counts)))} samples per "
                f"cell, no interval (reports/stats.py draws one from {MIN_SAMPLES} or more)."]


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f} %"


def gib(v: int | None) -> str:
    return "n/a" if v is None else f"{v / GIB:.3f}"


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f}"
