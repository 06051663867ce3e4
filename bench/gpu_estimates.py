"""bench.gpu_check's estimates, made on the CPU while the GPU cells run.

bench.estimate takes 6-40 s per paper-size cell on one CPU thread (FakeTensorMode; measured under torch
2.11), so estimating the ~40 cells a GPU check measures takes minutes: in gpu_check's own process, in
turn with the GPU parts, its share of the budget covered three cells. It needs no GPU, so it runs in
`workers` background processes instead, started after the probe (which measures copy bandwidth, the
matmul rate and the kernels, all sensitive to host load) and collected before the report. Each worker is
niced and single-threaded: on a 16-core GPU host they take 4 cores the timed cells do not need (a timed
step keeps one thread busy launching kernels). The summary says they ran alongside.

Each worker estimates every `workers`-th cell of `estimate_jobs(plan)` (paper size first: those are the
cells the estimator's error against the GPU is reported for) and appends to its own result file;
`EstimateWorkers.collect` merges the files into results/estimate-<size>.jsonl.

    python -m bench.gpu_estimates --out DIR --worker I --workers N --gpu NAME [--dry-run] --git JSON
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import store
from bench.design import Cell
from bench.gpu_plan import CellPart, Plan, make_plan

WORKER_NICE = 10


def estimate_jobs(plan: Plan) -> list[tuple[CellPart, Cell]]:
    """Every planned (size, batch, cell) once, paper-size parts first (the first
    `plan.estimated_cells` of them, if set)."""
    jobs, seen = [], set()
    for part in sorted(plan.cell_parts, key=lambda p: p.size != "paper"):
        for cell in part.cells:
            if (part.size, part.batch, cell.key) not in seen:
                seen.add((part.size, part.batch, cell.key))
                jobs.append((part, cell))
    return jobs[:plan.estimated_cells]


def worker_count(dry_run: bool) -> int:
    """4 on a GPU host (16 cores on the lent machines); on a CPU dry run, 1 (CI has 2 cores)."""
    return 1 if dry_run else max(1, min(4, (os.cpu_count() or 2) // 4))


def _worker_dir(out: Path) -> Path:
    return out / "results" / "estimates"


def _result_file(out: Path, size: str, worker: int) -> Path:
    return _worker_dir(out) / f"estimate-{size}.w{worker}.jsonl"


@dataclass
class EstimateWorkers:
    """The background estimate processes of one gpu_check run."""

    out: Path
    plan: Plan
    processes: list[subprocess.Popen] = field(default_factory=list)
    started: float = 0.0
    collected: bool = False

    @classmethod
    def start(cls, plan: Plan, out: Path, git: dict, gpu_name: str, log_dir: Path) -> "EstimateWorkers":
        workers = cls(out, plan, started=time.monotonic())
        count = worker_count(plan.dry_run)
        shutil.rmtree(_worker_dir(out), ignore_errors=True)  # an earlier run's in this folder
        log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # CPU only: no CUDA context
        for index in range(count):
            command = [sys.executable, "-m", "bench.gpu_estimates", "--out", str(out), "--worker", str(index),
                       "--workers", str(count), "--gpu", gpu_name, "--git", json.dumps(git)]
            with open(log_dir / f"estimate-worker{index}.log", "w") as log_file:
                workers.processes.append(subprocess.Popen(
                    command + (["--dry-run"] if plan.dry_run else []), stdout=log_file, stderr=subprocess.STDOUT,
                    env=env, start_new_session=True))
        return workers

    def collect(self, deadline: float) -> tuple[int, bool, list[str]]:
        """Wait for the workers until `deadline` (time.monotonic()), stop the rest, merge their files into
        results/estimate-<size>.jsonl. Returns (cells estimated, whether every job was, notes)."""
        notes = []
        for process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(process)
        self.collected = True
        failed = [i for i, p in enumerate(self.processes) if p.returncode not in (0, -signal.SIGKILL)]
        if failed:
            notes.append(f"estimate workers {failed} failed (logs/estimate-worker<i>.log)")
        estimated = set()
        for path in sorted(_worker_dir(self.out).glob("estimate-*.w*.jsonl")):
            # store.read skips the partial last line of a worker killed mid-write.
            for result in store.read(path).results:
                store.append(self.out / "results" / f"estimate-{result.size}.jsonl", result)
                estimated.add((result.size, result.batch, result.variant_key))
        shutil.rmtree(_worker_dir(self.out), ignore_errors=True)  # merged: kept once, not twice
        missing = [f"{cell.key}@{part.size}" for part, cell in estimate_jobs(self.plan)
                   if (part.size, part.batch, cell.variant.key) not in estimated]
        if missing:
            notes.append(f"not estimated in time: {len(missing)} cells: {', '.join(missing)}")
        notes.append(f"{len(self.processes)} niced single-thread CPU processes alongside the GPU parts, "
                     f"collected {time.monotonic() - self.started:.0f} s after they started")
        return len(estimated), not (failed or missing), notes


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended on its own meanwhile
        pass
    process.wait()


def run_worker(out: Path, worker: int, workers: int, gpu_name: str, dry_run: bool, git: dict) -> int:
    import torch

    from bench.cell import CellSpec
    from bench.environment import environment, fingerprint, host_device_info
    from bench.estimate import DEFAULT_GPU, estimate_cell
    from bench.gpu_specs import find_gpu
    from bench.gpu_summary import TARGET_GPU

    os.nice(WORKER_NICE)
    torch.set_num_threads(1)
    plan = make_plan(dry_run)
    # The roofline against this GPU's datasheet (an H100 SXM's in a dry run) and, on another GPU, the
    # targets' too, so the summary can carry the run over to it.
    gpu = find_gpu(gpu_name) or DEFAULT_GPU
    target = find_gpu(TARGET_GPU)
    also = (target,) if target.entry != gpu.entry else ()
    cpu = torch.device("cpu")
    host = host_device_info(cpu)
    host = dict(host, type="cpu", name=f"FakeTensorMode ({host['name']})")
    env = environment(cpu)
    fp = fingerprint(host, env, git)
    for part, cell in estimate_jobs(plan)[worker::workers]:
        spec = CellSpec(variant=cell.variant.as_dict(), size=part.size, batch=part.batch, device="cpu",
                        design=cell.design, baseline=cell.baseline, env_fingerprint=fp, host_device=host, git=git)
        started = time.perf_counter()
        # The kernels the measured cells run: a GPU's, or on a dry run the CPU build's.
        result = estimate_cell(spec, gpu, "cpu" if dry_run else "cuda", also_gpus=also)
        result.env = env
        path = _result_file(out, part.size, worker)
        path.parent.mkdir(parents=True, exist_ok=True)
        store.append(path, result)
        print(f"{cell.key}@{part.size}: {result.status} in {time.perf_counter() - started:.1f} s", flush=True)
    return 0


def main(argv: "list[str] | None" = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_estimates", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--gpu", default="")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--git", default="{}", help="the run's git record, as JSON")
    args = p.parse_args(argv)
    return run_worker(args.out, args.worker, args.workers, args.gpu, args.dry_run, json.loads(args.git))


if __name__ == "__main__":
    sys.exit(main())
