"""`python -m bench.gpu_check [--dry-run] [--out DIR]`: the one-shot validation of a fresh GPU.

Within a time budget (8 minutes on one H100 by default) it records the environment, measures the
device's copy bandwidth and bf16 matmul rate, runs the Triton kernel benchmarks at the model's shapes,
runs the `paper` design at `paper` size (batch 4, bf16 then fp16), paper-size candidates for the
issue's targets and the `ofat` design at `small` size (one subprocess per cell, as bench.run), estimates
the same cells with bench.estimate, and writes everything, the generated report and a summary into one
folder (default reports/gpu/<gpu-name>/). Parts, budgets and order: bench/gpu_plan.py. A part whose
budget runs out is cut short with a recorded note instead of overrunning.

With --dry-run it goes through every step on the CPU at `tiny` size in about a minute (small tensors,
the kernels in the Triton interpreter, a few cells, two timed steps each): what CI runs.

The summary is rewritten after every part, so it always holds what has finished; SIGTERM (the outer
`timeout` of scripts/gpu_check.sh) ends the run cleanly: the running cell is killed, the part marked
stopped and the summary written once more (exit status 143).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import store
from bench.cell import write_atomic
from bench.config import parse_with_config
from bench.environment import (REPO_ROOT, UNKNOWN_GPU_NAME, environment, fingerprint, git_info,
                               host_device_info)
from bench.gpu_estimates import EstimateWorkers
from bench.gpu_figures import notes_of
from bench.gpu_summary import summarize
from bench.gpu_plan import CellPart, Plan, make_plan
from bench.result import Result

GRACE_S = 20.0  # how long past its deadline a child may run before it is killed


@dataclass
class PartLog:
    name: str
    budget_s: float
    status: str = "pending"  # done | partial | skipped | failed | stopped (SIGTERM or Ctrl-C during it)
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)


class Budget:
    """Deadlines with rollover: part i ends by start + scale x (sum of budgets up to i)."""

    def __init__(self, budgets: dict[str, float], scale: float) -> None:
        self.start = time.monotonic()
        self.ends: dict[str, float] = {}
        total = 0.0
        for name, seconds in budgets.items():
            total += seconds * scale
            self.ends[name] = self.start + total

    def remaining(self, name: str) -> float:
        return self.ends[name] - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def log(message: str) -> None:
    print(f"gpu_check [{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _child_env(dry_run: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if dry_run:  # the Triton kernels must be defined interpreted on a CPU
        env["TRITON_INTERPRET"] = "1"
    return env


def run_probe(plan: Plan, out: Path, budget: Budget, parts: dict[str, PartLog]) -> dict[str, str | None]:
    """The probe child (env, micro, supports, kernels); returns supports() reasons by variant key."""
    cells = {c.key: c.variant.as_dict() for p in plan.cell_parts for c in p.cells}
    (out / "cells.json").write_text(json.dumps(cells, indent=1))
    # The child checks the deadline before each kernel case; leave room for the last one to finish.
    margin = 2.0 if plan.dry_run else 12.0
    kernels_deadline = time.time() + budget.remaining("kernels") - margin
    cmd = [sys.executable, "-m", "bench.gpu_probe", str(out / "probe"), "--device", plan.device,
           "--cells", str(out / "cells.json"), "--kernels-deadline", f"{kernels_deadline:.1f}"]
    if plan.dry_run:
        cmd.append("--dry-run")
    started = time.monotonic()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    with open(out / "logs" / "probe.log", "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_child_env(plan.dry_run), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=max(1.0, budget.remaining("kernels") + GRACE_S))
        except subprocess.TimeoutExpired:
            code = None
        finally:  # past its deadline, or gpu_check itself stopping (SIGTERM): never leave it running
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    elapsed = time.monotonic() - started
    probe_dir = out / "probe"
    for name, files in (("probe", ("env.json", "micro.json", "supports.json")), ("kernels", ("kernels.json",))):
        part = parts[name]
        part.elapsed_s = elapsed  # one process for both: each shows the whole of it
        present = [f for f in files if (probe_dir / f).exists()]
        part.status = "done" if len(present) == len(files) else "partial" if present else "failed"
        if part.status != "done":
            how = "killed at its deadline" if code is None else f"exit code {code}"
            part.notes.append(f"probe process {how}; missing {', '.join(sorted(set(files) - set(present)))}; "
                              f"see logs/probe.log")
    kernels = _read_json(probe_dir / "kernels.json") or {}
    if kernels.get("note"):
        parts["kernels"].notes.append(kernels["note"])
        parts["kernels"].status = "partial"
    if kernels.get("status") == "unsupported":
        parts["kernels"].notes.append(f"Triton kernels cannot run here: {kernels.get('reason')}")
    return _read_json(probe_dir / "supports.json") or {}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_cell_part(part: CellPart, plan: Plan, out: Path, budget: Budget, log_part: PartLog,
                  reasons: dict[str, str | None], common: dict) -> list[Result]:
    """The part's cells, one subprocess each (bench.runner), until its deadline."""
    from bench.cell import base_result
    from bench.runner import SweepSettings, precheck, run_in_subprocess, spec_for

    settings = SweepSettings(size=part.size, batch=part.batch, device=plan.device, timing=dict(part.timing),
                             timeout_s=part.cell_timeout_s, threads=plan.threads, seed=0,
                             profile_top=part.profile_top, **common)
    path = out / "results" / f"{part.name}.jsonl"
    results: list[Result] = []
    skipped: list[str] = []
    started = time.monotonic()
    for index, cell in enumerate(part.cells):
        remaining = budget.remaining(part.name)
        if remaining < part.min_start_s:
            skipped.append(cell.key)
            continue
        spec = spec_for(cell, settings)
        if reasons.get(cell.key):
            result = base_result(spec, "unsupported", reason=reasons[cell.key], wall_s=0.0,
                                 message="models.supports() answered in the gpu_check probe process")
        else:
            result = precheck(cell, settings)
            if result is None:
                spec = dataclasses.replace(spec, timeout_s=max(1.0, min(spec.timeout_s, remaining)))
                safe = re.sub(r"[^A-Za-z0-9_-]", "_", cell.key)
                result = run_in_subprocess(spec, out / "logs" / part.name / f"{index:03d}-{safe}.log")
                if result.status == "timeout" and spec.timeout_s < part.cell_timeout_s:
                    # Cut short by the part's deadline, not the cell's own timeout: not a hang.
                    result.message = (f"budget: {remaining:.0f} s left of the part, under the cell timeout "
                                      f"of {part.cell_timeout_s:g} s; {result.message}")
        store.append(path, result)
        results.append(result)
        step = result.stages.get("step")
        log(f"{part.name}: {cell.key}: {result.status}"
            + (f", step {step.median * 1e3:.1f} ms" if step else "")
            + (f" ({notes_of(result)})" if result.status != "ok" else "")
            + f" [{result.wall_s or 0:.0f} s]")
    if results:
        store.write_csv(path.with_suffix(".csv"), results)
    log_part.elapsed_s = time.monotonic() - started
    log_part.status = "partial" if skipped and results else "skipped" if skipped else "done"
    if skipped:
        log_part.notes.append(f"budget ran out: {len(skipped)} of {len(part.cells)} cells not run: "
                              + ", ".join(skipped))
    return results


def collect_estimates(estimates: EstimateWorkers, budget: Budget, log_part: PartLog) -> None:
    """The background estimates (bench.gpu_estimates), waited for until this part's deadline."""
    started = time.monotonic()
    done, complete, notes = estimates.collect(deadline=budget.ends["estimate"])
    log_part.elapsed_s, log_part.notes = time.monotonic() - started, notes
    log_part.status = "done" if complete else "partial"
    log(f"estimate: {done} cells estimated; " + "; ".join(notes))


def write_reports(plan: Plan, out: Path, budget: Budget, log_part: PartLog) -> None:
    """reports.build for each cell part that wrote results, while the report part's time lasts (a report
    can be built later from results/; the summary is written before this part)."""
    from reports.build import build_reports

    started = time.monotonic()
    for part in plan.cell_parts:
        measured = out / "results" / f"{part.name}.jsonl"
        if not measured.exists():
            continue
        if budget.remaining("report") <= 0:
            log_part.notes.append(f"budget ran out: no report for {part.name} (python -m reports.build "
                                  f"results/{part.name}.jsonl ... builds it)")
            continue
        # The candidates hold no baseline row: their ratios are against the run's bf16 faithful one.
        baseline = [out / "results" / "paper-bf16.jsonl"] if part.name.startswith("targets") else []
        paths = [measured] + [p for p in [*baseline, out / "results" / f"estimate-{part.size}.jsonl"] if p.exists()]
        try:
            written = build_reports(paths, out / "report" / part.name)
            log(f"report: {part.name}: {len(written)} files")
        except Exception as exc:  # a report that cannot be drawn must not lose the measurements
            log_part.notes.append(f"report for {part.name} failed: {type(exc).__name__}: {exc}")
    log_part.elapsed_s = time.monotonic() - started
    log_part.status = "partial" if log_part.notes else "done"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny size (CI)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: reports/gpu/<gpu-name>; with --dry-run results/gpu_check-dry-run)")
    p.add_argument("--budget", type=float, default=None,
                   help="total seconds; every part's budget is scaled to fit (default: 480 on a GPU, 130 dry)")
    p.add_argument("--skip", action="append", default=[], metavar="PART",
                   help="skip a part (recorded in the summary); repeatable")
    return p


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (the outer `timeout`) as a clean exit: main()'s finally still kills the children and writes
    the summary of what finished. Further ones are ignored so they cannot cut that short; the outer
    timeout's SIGKILL (-k) stays the backstop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def kill_children() -> None:
    """SIGKILL this process's children with their process groups (the probe and each cell lead their own):
    the cell a SIGTERM interrupted would otherwise run on while the summary is written, and its own
    children after it (bench.runner's death signal reaches the cell alone). Reads /proc (Linux)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # "pid (comm) state ppid pgrp ...": comm may hold spaces and ')', so split after the last one
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        pid = int(stat.parent.name)
        if int(ppid) == os.getpid() and state != "Z":
            try:
                os.killpg(pid, signal.SIGKILL) if int(pgrp) == pid else os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def write_summary(out: Path, plan: Plan, parts: dict[str, PartLog], budget: Budget, scale: float,
                  unfinished: str | None) -> str:
    """parts.json, summary.md and summary.json from whatever has finished; returns summary.md's text. Each
    is written beside and renamed, so a run killed mid-write keeps the previous one, never half of one."""
    total = budget.elapsed()
    write_atomic(out / "parts.json", json.dumps(
        {"dry_run": plan.dry_run, "budget_s": plan.total_s * scale, "elapsed_s": total, "unfinished": unfinished,
         "parts": [dataclasses.asdict(p) for p in parts.values()]}, indent=1) + "\n")
    text, data = summarize(out, plan, list(parts.values()), total, unfinished)
    write_atomic(out / "summary.md", text)
    write_atomic(out / "summary.json", json.dumps(data, indent=1, default=str) + "\n")
    return text


def named_by_probe(host: dict, out: Path) -> dict:
    """`host` with the GPU name the probe child read from torch, where the parent could not read one
    (host_device_info's UNKNOWN_GPU_NAME), so the rows written here group with the cells' own."""
    probed = (_read_json(out / "probe" / "env.json") or {}).get("device", {})
    if host.get("name") != UNKNOWN_GPU_NAME or probed.get("type") != "cuda" or not probed.get("name"):
        return host
    return dict(host, name=probed["name"], uuid=host.get("uuid") or probed.get("uuid"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; run with --dry-run to go through every step on the CPU")
    plan = make_plan(args.dry_run)
    budgets = plan.budgets()
    unknown = set(args.skip) - set(budgets)
    if unknown:
        parser.error(f"--skip {sorted(unknown)[0]!r}: parts are {', '.join(budgets)}")
    if args.budget is not None and args.budget <= 0:
        parser.error("--budget must be positive")
    scale = (args.budget or plan.total_s) / plan.total_s
    device = torch.device(plan.device)
    host = host_device_info(device)  # NVML on a GPU: this process creates no CUDA context
    out = args.out or (REPO_ROOT / "results" / "gpu_check-dry-run" if args.dry_run
                       else REPO_ROOT / "reports" / "gpu" / slug(host.get("name", "gpu")))
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "results").glob("*.jsonl") if (out / "results").exists() else []:
        stale.unlink()  # one run per folder: results of an earlier run would mix into the report
    budget = Budget(budgets, scale)
    parts = {name: PartLog(name, round(seconds * scale, 1)) for name, seconds in budgets.items()}
    log(f"{'dry run on the CPU' if args.dry_run else host.get('name')}: {len(plan.cell_parts)} cell parts, "
        f"budget {plan.total_s * scale:.0f} s -> {out}")
    git = git_info()
    common = {"env_fingerprint": fingerprint(host, environment(device), git), "host_device": host, "git": git}
    reasons: dict[str, str | None] = {}
    running: PartLog | None = None
    estimates: EstimateWorkers | None = None
    cell_part_names = {p.name for p in plan.cell_parts}
    unfinished: str | None = None
    previous_handler = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        for name in budgets:
            part = parts[name]
            if name in args.skip:
                part.status, part.notes = "skipped", ["skipped by --skip"]
                continue
            if name == "kernels":
                if "probe" in args.skip:
                    part.status, part.notes = "skipped", ["runs in the probe process, which was skipped"]
                continue  # otherwise it ran inside the probe child
            # The estimates made so far are collected, and the report built, however late it is.
            if name not in ("estimate", "report") and budget.remaining(name) <= 0:
                part.status, part.notes = "skipped", ["no time left in the budget"]
                continue
            if estimates is None and name in cell_part_names and "estimate" not in args.skip:
                # After the probe and kernels, whose rates host load would disturb; before the first cell.
                estimates = EstimateWorkers.start(plan, out, git, host.get("name", ""), out / "logs")
                log(f"estimate: {len(estimates.processes)} CPU processes started, alongside the GPU parts")
            log(f"part {name} (until +{budget.ends[name] - budget.start:.0f} s)")
            running = part
            if name == "probe":
                reasons = run_probe(plan, out, budget, parts)
                named = named_by_probe(host, out)
                if named is not host:
                    host = named
                    common.update(host_device=host, env_fingerprint=fingerprint(host, environment(device), git))
            elif name == "estimate":
                if estimates is None:
                    part.status, part.notes = "skipped", ["no cell part ran, so no estimate was started"]
                else:
                    collect_estimates(estimates, budget, part)
            elif name == "report":
                write_reports(plan, out, budget, part)
            else:
                cell_part = next(p for p in plan.cell_parts if p.name == name)
                run_cell_part(cell_part, plan, out, budget, part, reasons, common)
            running = None
            if name == "report":
                continue
            try:  # what finished is on disk before the next part (the reports included)
                write_summary(out, plan, parts, budget, scale, f"still running; written after part {name}")
            except Exception as exc:  # the parts still to run matter more than this interim summary
                log(f"interim summary failed: {type(exc).__name__}: {exc}")
    except BaseException as exc:  # SIGTERM (see _stop_on_sigterm), Ctrl-C or a bug: say so in the summary
        sigterm = isinstance(exc, SystemExit) and exc.code == 128 + signal.SIGTERM
        unfinished = "stopped by " + ("SIGTERM" if sigterm else f"{type(exc).__name__} {exc}".strip()[:200])
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # nothing may interrupt the summary now
        if running is not None:
            running.status = "stopped"
            running.notes.append(f"{unfinished} {budget.elapsed():.0f} s into the run, during this part")
        if unfinished:
            kill_children()
        if estimates is not None and not estimates.collected:  # stopped early: keep the estimates made
            parts["estimate"].notes = estimates.collect(deadline=time.monotonic())[2]
        text = write_summary(out, plan, parts, budget, scale, unfinished)
        signal.signal(signal.SIGTERM, previous_handler)
        log(f"{unfinished or 'done'} after {budget.elapsed():.0f} s; "
            f"{'what finished' if unfinished else 'everything'} is in {out} (summary.md first)")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
