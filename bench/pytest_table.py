"""A pytest-benchmark JSON file as a Markdown table: each case's median beside its reference's.

scripts/gpu_check.sh runs the GPU perf suite (`pytest -m gpu tests/perf`) after bench.gpu_check has
written summary.md, so the suite's comparisons (each Triton kernel against the PyTorch path it replaces,
at the model's shapes, and the paper rows at `small` size) reach the report through this:

    python -m bench.pytest_table pytest-gpu-benchmark.json >> gpu_check/summary.md

A case's reference is the run of the same test, with the same other parameters, whose `provider` is the
PyTorch path (`REFERENCE_PROVIDERS`); for a test without providers (the paper rows) it is the case that
recorded itself as the baseline (`extra_info["baseline"]`). Times are pytest-benchmark's per-round
statistics (tests/perf/helpers.py's synchronising timer on a GPU), peaks the allocator's.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.perf_gate import PEAK_KEY

# The PyTorch paths the Triton providers are compared with, in the perf suites' spelling.
REFERENCE_PROVIDERS = ("eager", "unfused", "conv3d", "torch_fp32")


@dataclass(frozen=True)
class Case:
    test: str  # the test function
    case: str  # its parameter id, e.g. "triton-rmsnorm"
    group: tuple  # the parameters other than the provider: cases compared with each other
    provider: str | None
    median_s: float
    iqr_s: float
    rounds: int
    peak_bytes: int | None
    baseline: bool


def read_cases(data: dict[str, Any]) -> list[Case]:
    cases = []
    for bench in data.get("benchmarks", []):
        params = bench.get("params") or {}
        extra = bench.get("extra_info") or {}
        stats = bench["stats"]
        test = bench["fullname"].split("::")[-1].split("[")[0]
        others = tuple(sorted((k, str(v)) for k, v in params.items() if k != "provider"))
        cases.append(Case(test, str(bench.get("param") or ""), (test, others), params.get("provider"),
                          stats["median"], stats["iqr"], stats["rounds"], extra.get(PEAK_KEY),
                          bool(extra.get("baseline"))))
    return cases


def reference_of(case: Case, cases: list[Case]) -> Case | None:
    """The case `case` is compared with: see the module docstring. None where the file has none."""
    group = [c for c in cases if c.group == case.group]
    for provider in REFERENCE_PROVIDERS:
        for candidate in group:
            if candidate.provider == provider:
                return candidate
    return next((c for c in cases if c.test == case.test and c.baseline), None)


def markdown(data: dict[str, Any]) -> str:
    cases = read_cases(data)
    gpu = (data.get("machine_info") or {}).get("gpu_name") or "no GPU"
    lines = [f"## GPU perf suite (pytest-benchmark, {gpu})", "",
             "Median of each case's rounds; × reference is the median over the reference case's (the PyTorch "
             "path the kernel replaces, or the baseline row).", "",
             "| test | case | median ms | IQR ms | rounds | × reference | peak allocated |",
             "|---|---|---|---|---|---|---|"]
    if not cases:
        return "\n".join(lines[:2] + ["No benchmark finished."]) + "\n"
    for case in cases:
        reference = reference_of(case, cases)
        if reference is None:
            ratio = ""
        elif reference is case:
            ratio = "reference"
        else:
            ratio = f"{case.median_s / reference.median_s:.2f}×"
        peak = "" if case.peak_bytes is None else f"{case.peak_bytes / 2**30:.2f} GiB"
        lines.append(f"| {case.test} | {case.case} | {case.median_s * 1e3:.3f} | {case.iqr_s * 1e3:.3f} | "
                     f"{case.rounds} | {ratio} | {peak} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pytest_table", description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="a file written by pytest --benchmark-json")
    args = parser.parse_args(argv)
    if not args.json.is_file():
        print(f"bench.pytest_table: {args.json} does not exist (the suite wrote no benchmarks)",
              file=sys.stderr)
        return 1
    sys.stdout.write(markdown(json.loads(args.json.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
