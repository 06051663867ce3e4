"""`python -m bench.perf_gate`: the memory half of the regression gate (docs/perf-gate.md).

Compares the newest pytest-benchmark JSON with the previous saved run *of the same GPU model* (the
`gpu_name` that tests/perf/conftest.py puts into `machine_info`; runs without a GPU match by CPU model),
test by test, on the peak-memory figures the perf tests record in `extra_info`. Any figure that grew
by more than the threshold (5 % by default) fails the gate with exit code 1 and one line per test.
The time half is pytest-benchmark's own `--benchmark-compare --benchmark-compare-fail=median:10%`.

    python -m bench.perf_gate                                    # newest vs previous in .benchmarks/
    python -m bench.perf_gate --current pr.json                  # a PR's run vs the newest saved one
    python -m bench.perf_gate --current new.json --baseline old.json --threshold 5

Exit codes: 0 pass (or nothing to compare against, said so), 1 a memory regression, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import parse_with_config

# extra_info keys the perf suites record (tests/perf/helpers.py) and this gate compares by default: the
# CUDA allocator peak (GPU tests) and the bytes saved for backward (CPU tests; deterministic, so a rise
# is a real change in what the model keeps).
PEAK_KEY = "max_memory_allocated_bytes"
SAVED_KEY = "saved_for_backward_bytes"
DEFAULT_FIELDS = (PEAK_KEY, SAVED_KEY)
DEFAULT_THRESHOLD_PCT = 5.0
GIB = 2**30


class GateInputError(ValueError):
    """A file that is missing or is not a pytest-benchmark JSON; message names it."""


@dataclass(frozen=True)
class Run:
    path: Path
    datetime: str
    model: str  # GPU name, or "cpu:<brand>" for runs without a GPU
    benchmarks: dict[str, dict[str, Any]]  # fullname -> extra_info


@dataclass(frozen=True)
class Finding:
    test: str
    field: str
    before: int
    after: int

    @property
    def change_pct(self) -> float:
        return (self.after - self.before) / self.before * 100.0

    def describe(self) -> str:
        return (f"{self.test}: {self.field} {_fmt(self.before)} -> {_fmt(self.after)} "
                f"({self.change_pct:+.1f} %)")


def _fmt(n: int) -> str:
    return f"{n / GIB:.3f} GiB" if n >= GIB // 10 else f"{n / 2**20:.2f} MiB"


def machine_model(info: dict[str, Any]) -> str:
    if info.get("gpu_name"):
        return str(info["gpu_name"])
    cpu = info.get("cpu") or {}
    return "cpu:" + str(cpu.get("brand_raw") or info.get("processor") or info.get("machine") or "unknown")


def load_run(path: Path) -> Run:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise GateInputError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise GateInputError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise GateInputError(f"{path}: not a pytest-benchmark file (no 'benchmarks' list); "
                             f"write one with --benchmark-json or --benchmark-autosave")
    benches = {b["fullname"]: dict(b.get("extra_info") or {}) for b in data["benchmarks"] if "fullname" in b}
    return Run(Path(path), str(data.get("datetime", "")), machine_model(data.get("machine_info") or {}), benches)


def saved_runs(storage: Path) -> list[Run]:
    """Every readable pytest-benchmark JSON under `storage` (any machine-id folder), oldest first."""
    runs = []
    for path in sorted(Path(storage).rglob("*.json")):
        try:
            runs.append(load_run(path))
        except GateInputError as exc:
            print(f"perf_gate: skipping {exc}", file=sys.stderr)
    return sorted(runs, key=lambda r: (r.datetime, r.path.name))


def previous_of_same_model(current: Run, runs: list[Run]) -> Run | None:
    older = [r for r in runs if r.model == current.model and r.path.resolve() != current.path.resolve()
             and r.datetime <= current.datetime]
    return older[-1] if older else None


def compare(current: Run, baseline: Run, fields: tuple[str, ...], threshold_pct: float
            ) -> tuple[list[Finding], list[Finding], list[str]]:
    """(regressions, checked, notes): a regression grew by more than `threshold_pct` percent."""
    regressions, checked, notes = [], [], []
    for test, extra in sorted(current.benchmarks.items()):
        old = baseline.benchmarks.get(test)
        if old is None:
            notes.append(f"{test}: new test, no previous figure")
            continue
        for field in fields:
            after, before = extra.get(field), old.get(field)
            if not isinstance(after, (int, float)) or not isinstance(before, (int, float)) or before <= 0:
                continue
            finding = Finding(test, field, int(before), int(after))
            checked.append(finding)
            if finding.change_pct > threshold_pct:
                regressions.append(finding)
    for test in sorted(set(baseline.benchmarks) - set(current.benchmarks)):
        notes.append(f"{test}: in the previous run only")
    return regressions, checked, notes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.perf_gate", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--storage", type=Path, default=Path(".benchmarks"),
                   help="pytest-benchmark storage folder (--benchmark-storage), searched recursively")
    p.add_argument("--current", type=Path, help="the run to check (default: the newest JSON in --storage)")
    p.add_argument("--baseline", type=Path,
                   help="the run to compare with (default: the previous run of the same GPU model in --storage)")
    p.add_argument("--field", action="append", dest="fields", metavar="KEY",
                   help=f"extra_info key to gate; repeatable (default: {', '.join(DEFAULT_FIELDS)})")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD_PCT,
                   help="largest allowed increase, percent")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_with_config(build_parser(), argv)
    fields = tuple(args.fields or DEFAULT_FIELDS)
    try:
        runs = saved_runs(args.storage) if args.storage.exists() else []
        current = load_run(args.current) if args.current else (runs[-1] if runs else None)
        if current is None:
            raise GateInputError(f"no pytest-benchmark JSON in {args.storage} and no --current given")
        baseline = load_run(args.baseline) if args.baseline else previous_of_same_model(current, runs)
    except GateInputError as exc:
        print(f"perf_gate: {exc}", file=sys.stderr)
        return 2
    if baseline is None:
        print(f"perf_gate: no previous run of {current.model} in {args.storage}; nothing to compare "
              f"{current.path} with, so the memory gate passes (the next saved run will be compared with it)")
        return 0
    if baseline.model != current.model:
        print(f"perf_gate: warning: comparing {current.model} ({current.path}) with {baseline.model} "
              f"({baseline.path})", file=sys.stderr)
    regressions, checked, notes = compare(current, baseline, fields, args.threshold)
    print(f"perf_gate: {current.path} against {baseline.path} ({current.model}); "
          f"{len(checked)} figures in {', '.join(fields)}; limit +{args.threshold:g} %")
    for note in notes:
        print(f"  note: {note}")
    for finding in checked:
        if finding not in regressions and finding.change_pct != 0:
            print(f"  ok:   {finding.describe()}")
    for finding in regressions:
        print(f"  FAIL: {finding.describe()} exceeds +{args.threshold:g} %")
    if regressions:
        print(f"perf_gate: {len(regressions)} memory regression(s)")
        return 1
    print("perf_gate: no memory regression")
    return 0


if __name__ == "__main__":
    sys.exit(main())
