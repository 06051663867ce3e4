"""`python -m reports.compare BEFORE AFTER`: what a change did to each cell measured in both.

BEFORE and AFTER are result files (or folders of them) from `bench.run` on the same machine, e.g. before
and after a commit. Cells are matched by cell key and device; cells measured on different devices are
listed as not comparable, never compared. Per cell: the step time after / before with its bootstrap
interval (reports/stats.py; over rounds when the runs had several, which is what makes a cross-run
comparison meaningful, since run-to-run drift is exactly what differs between two runs), a verdict
(faster or slower when the interval excludes 1, else unresolved), and the memory ratio (GPU allocator
peak, or on a CPU the accounted bytes, which are deterministic). With `--fail-slower-than R` or
`--fail-memory-above R` the exit code is 1 when a cell's resolved slowdown (the interval's lower end) or
its memory ratio exceeds R: a regression gate for the full matrix, as tests/perf is for its subset.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reports.efficiency import memory_figures
from reports.load import EffRow, ResultFileError, load
from reports.rounds import merge_rounds, n_rounds, round_samples
from reports.stats import Interval, resolved, rounds_median_ratio_ci


@dataclass
class CellChange:
    cell_key: str
    device: str
    verdict: str  # faster | slower | unresolved | no interval | not run | only before | only after | ...
    before_ms: float | None = None
    after_ms: float | None = None
    rounds: str = ""  # "3/3": rounds before / after
    time_ratio: float | None = None  # after / before
    time_ci: Interval | None = None
    memory_ratio: float | None = None


def _measured(paths: list[str]) -> list[EffRow]:
    return merge_rounds(r for r in load(paths).efficiency if r.kind == "measured")


def _step_ms(row: EffRow) -> float | None:
    return row.stages["step"].median * 1e3 if row.status == "ok" and "step" in row.stages else None


def _change(before: EffRow, after: EffRow) -> CellChange:
    change = CellChange(after.cell_key, after.device.label, "", _step_ms(before), _step_ms(after),
                        f"{n_rounds(before)}/{n_rounds(after)}")
    if change.before_ms is None or change.after_ms is None:
        change.verdict = f"not run: {before.status} before, {after.status} after"
        return change
    change.time_ratio = change.after_ms / change.before_ms
    change.time_ci = rounds_median_ratio_ci(round_samples(after, "step"), round_samples(before, "step"))
    memory = memory_figures(after.device.type)[0].get
    memory_before, memory_after = memory(before), memory(after)
    if memory_before and memory_after is not None:
        change.memory_ratio = memory_after / memory_before
    if change.time_ci is None:
        change.verdict = "no interval (too few timed steps)"
    elif resolved(change.time_ci):
        change.verdict = "faster" if change.time_ci[1] < 1.0 else "slower"
    else:
        change.verdict = "unresolved"
    return change


def compare(before: list[EffRow], after: list[EffRow]) -> list[CellChange]:
    """One entry per cell of either run, in AFTER's order, then cells only BEFORE had."""
    old = {(r.cell_key, r.device.label): r for r in before}
    old_devices: dict[str, set[str]] = {}
    for r in before:
        old_devices.setdefault(r.cell_key, set()).add(r.device.label)
    out, matched = [], set()
    for r in after:
        key = (r.cell_key, r.device.label)
        if key in old:
            matched.add(key)
            out.append(_change(old[key], r))
        elif r.cell_key in old_devices:
            others = ", ".join(sorted(old_devices[r.cell_key]))
            out.append(CellChange(r.cell_key, r.device.label, f"not comparable: measured on {others} before"))
        else:
            out.append(CellChange(r.cell_key, r.device.label, "only after"))
    after_keys = {r.cell_key for r in after}
    out += [CellChange(r.cell_key, r.device.label, "only before") for r in before
            if (r.cell_key, r.device.label) not in matched and r.cell_key not in after_keys]
    return out


def frame(changes: list[CellChange]) -> pd.DataFrame:
    def ci(c: CellChange, i: int) -> float | None:
        return c.time_ci[i] if c.time_ci else None

    return pd.DataFrame({
        "cell": [c.cell_key for c in changes], "device": [c.device for c in changes],
        "verdict": [c.verdict for c in changes], "rounds before/after": [c.rounds for c in changes],
        "step before (ms)": [c.before_ms for c in changes], "step after (ms)": [c.after_ms for c in changes],
        "step after / before": [c.time_ratio for c in changes],
        "CI low": [ci(c, 0) for c in changes], "CI high": [ci(c, 1) for c in changes],
        "memory after / before": [c.memory_ratio for c in changes],
    })


def markdown(changes: list[CellChange]) -> str:
    def ratio(c: CellChange) -> str:
        if c.time_ratio is None:
            return ""
        return f"{c.time_ratio:.3f}×" + (f" [{c.time_ci[0]:.3f}, {c.time_ci[1]:.3f}]" if c.time_ci else "")

    # A cell key is "variant|size|batch|device|kind": its bars would split a Markdown table's columns.
    rows = [{"cell": c.cell_key.replace("|", r"\|"), "device": c.device, "verdict": c.verdict, "rounds": c.rounds,
             "step ms, before → after": (f"{c.before_ms:.2f} → {c.after_ms:.2f}"
                                        if c.before_ms is not None and c.after_ms is not None else ""),
             "step after / before [95 % CI]": ratio(c),
             "memory after / before": f"{c.memory_ratio:.3f}×" if c.memory_ratio is not None else ""}
            for c in changes]
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True, stralign="left")


def failures(changes: list[CellChange], slower_than: float | None, memory_above: float | None) -> list[str]:
    out = []
    for c in changes:
        if slower_than is not None and c.time_ci is not None and c.time_ci[0] > slower_than:
            out.append(f"{c.cell_key} on {c.device}: step {c.time_ratio:.3f}× [{c.time_ci[0]:.3f}, "
                       f"{c.time_ci[1]:.3f}], resolved above {slower_than}")
        if memory_above is not None and c.memory_ratio is not None and c.memory_ratio > memory_above:
            out.append(f"{c.cell_key} on {c.device}: memory {c.memory_ratio:.3f}×, above {memory_above}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reports.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="result file or folder: the reference run")
    p.add_argument("after", help="result file or folder: the run to judge")
    p.add_argument("--csv", type=Path, help="also write the comparison as CSV (raw ratios and intervals)")
    p.add_argument("--fail-slower-than", type=float, metavar="R",
                   help="exit 1 when a cell's step ratio interval lies wholly above R (e.g. 1.05)")
    p.add_argument("--fail-memory-above", type=float, metavar="R",
                   help="exit 1 when a cell's memory ratio exceeds R (e.g. 1.05)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        changes = compare(_measured([args.before]), _measured([args.after]))
    except ResultFileError as exc:
        print(f"reports.compare: error: {exc}", file=sys.stderr)
        return 2
    print(markdown(changes))
    if args.csv:
        frame(changes).to_csv(args.csv, index=False)
        print(f"csv: {args.csv}", file=sys.stderr)
    failed = failures(changes, args.fail_slower_than, args.fail_memory_above)
    for line in failed:
        print(f"reports.compare: regression: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
