"""One table row per cell, however many rounds measured it (`bench.run --rounds N`).

A cell measured in several rounds (each a fresh process, the design's order reversed every other round)
becomes the row of its median round by step time: every figure of the row (step, stages, memory, MFU)
is that one process's own, so they stay consistent with each other, and with an odd number of rounds
its step median is the median over rounds. The row keeps every round in `rounds`, from which the
intervals (reports.stats, two-level bootstrap) and the run-to-run range are computed. Rounds that did
not end `ok` are named in a flag; a cell with no `ok` round shows its last row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from reports.load import EffRow, Stage, latest
from reports.stats import Interval, rounds_median_ci, rounds_median_ratio_ci


def merge_rounds(rows: Iterable[EffRow]) -> list[EffRow]:
    """One row per (cell, device), in first-seen order; a rerun of the same round supersedes."""
    per_round = latest(rows, key=lambda r: (r.cell_key, r.device.label, r.round))
    cells: dict[tuple, list[EffRow]] = {}
    for row in per_round:
        cells.setdefault((row.cell_key, row.device.label), []).append(row)
    return [_merge(sorted(rounds, key=lambda r: r.round)) for rounds in cells.values()]


def n_rounds(row: EffRow) -> int:
    return len(row.rounds) or 1


def _step(row: EffRow) -> float:
    return row.stages["step"].median


def _merge(rounds: list[EffRow]) -> EffRow:
    if len(rounds) == 1:
        return rounds[0]
    ok = [r for r in rounds if r.status == "ok" and "step" in r.stages]
    if not ok:
        return dataclasses.replace(rounds[-1], rounds=list(rounds))
    # The lower of the two middle rounds when their number is even: still one process's own figures.
    chosen = sorted(ok, key=_step)[(len(ok) - 1) // 2]
    flags = list(chosen.flags)
    if len(ok) < len(rounds):
        failed = sorted({r.status for r in rounds if r not in ok})
        flags.append(f"{len(ok)} of {len(rounds)} rounds ok ({', '.join(failed)} in the others)")
    return dataclasses.replace(chosen, flags=flags, rounds=list(rounds))


def _ok_stages(row: EffRow, stage: str) -> list[Stage]:
    """`stage` of every `ok` round of the cell (the row itself for a single round)."""
    return [r.stages[stage] for r in (row.rounds or [row]) if r.status == "ok" and stage in r.stages]


def round_samples(row: EffRow | None, stage: str) -> list[tuple[float, ...]]:
    """The timed samples of `stage`, one tuple per `ok` round of the cell (one for a single round)."""
    return [] if row is None else [s.samples for s in _ok_stages(row, stage)]


def round_medians(row: EffRow, stage: str) -> list[float]:
    """Each `ok` round's median of `stage`, in seconds."""
    return [s.median for s in _ok_stages(row, stage)]


def ratio_intervals(rows: list[EffRow], stage: str, base: EffRow | None) -> list[Interval | None]:
    """Per row, the bootstrap interval of its median time over the baseline's (over every round of
    both cells); None for the baseline itself and wherever either row kept too few samples."""
    base_samples = round_samples(base, stage)
    return [None if r is base else rounds_median_ratio_ci(round_samples(r, stage), base_samples) for r in rows]


def ms_intervals(rows: list[EffRow], stage: str) -> list[tuple[float, float] | None]:
    """Per row, the interval of its median time in ms (over every round)."""
    out = []
    for r in rows:
        ci = rounds_median_ci(round_samples(r, stage))
        out.append((ci[0] * 1e3, ci[1] * 1e3) if ci else None)
    return out
