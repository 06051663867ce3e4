"""The sweep: one subprocess per cell, with a timeout; every outcome becomes a row; nothing stops it.

Outcomes: the child writes its own row for `ok`, `unsupported`, `oom` and Python errors. If it leaves no
row, the parent classifies: past the timeout -> `timeout` (the whole process group is killed); killed
by a signal or a non-zero exit -> `error` with the signal and the tail of the cell's log. A CUDA
illegal memory access poisons a process, which is why every cell gets a fresh one.

On a CPU the parent asks `models.supports` first and records `unsupported` without spawning (the
answer is the child's own, and spawning costs seconds of imports). On a GPU it never does, because
the checks may initialise CUDA and the parent must hold no CUDA context while cells are measured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from bench import store
from bench.cell import CellSpec, base_result
from bench.design import Cell
from bench.environment import REPO_ROOT
from bench.result import Result
from models import supports

LOG_TAIL_LINES = 15


@dataclass
class SweepSettings:
    size: str
    batch: int
    device: str
    timing: dict
    timeout_s: float
    threads: int
    seed: int
    env_fingerprint: str
    host_device: dict
    git: dict
    profile_top: int = 0


def spec_for(cell: Cell, settings: SweepSettings, round_index: int = 0) -> CellSpec:
    return CellSpec(
        variant=cell.variant.as_dict(), size=settings.size, batch=settings.batch, device=settings.device,
        design=cell.design, baseline=cell.baseline, timing=dict(settings.timing), timeout_s=settings.timeout_s,
        seed=settings.seed, threads=settings.threads, env_fingerprint=settings.env_fingerprint,
        host_device=dict(settings.host_device), git=dict(settings.git), profile_top=settings.profile_top,
        round=round_index,
    )


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _die_with_parent(runner_pid: int) -> None:
    """Runs in the forked child before exec: if the sweep is killed, its cell gets SIGKILL instead of
    living on as an orphan (holding a GPU, or hanging forever). Linux only; elsewhere a no-op.
    Done here rather than in the child's main(), because a runner killed during the child's seconds of
    imports would otherwise leave it orphaned before it could ask.

    `runner_pid` is the runner's pid, read before the fork. The kernel sends the death signal only for
    a parent that dies after prctl; a runner killed between fork and prctl has already handed the child
    to another parent, so the child checks for that itself (the remedy prctl(2) gives)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != runner_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_in_subprocess(spec: CellSpec, log_path: Path) -> Result:
    """Run one cell in a fresh Python process and classify how it ended."""
    started = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ctclip-cell-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(spec.to_json())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.cell", str(spec_path), str(result_path)],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=partial(_die_with_parent, os.getpid()) if sys.platform.startswith("linux") else None,
            )
            try:
                returncode = proc.wait(timeout=spec.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return base_result(spec, "timeout", wall_s=time.perf_counter() - started,
                                   message=f"no result after {spec.timeout_s:g} s; process group killed. "
                                           f"Log tail:\n{_tail(log_path)}")
        if result_path.exists():
            try:
                return Result.from_dict(json.loads(result_path.read_text()))
            except (ValueError, TypeError) as exc:
                return base_result(spec, "error", wall_s=time.perf_counter() - started,
                                   message=f"unreadable result from the cell process: {exc}")
    if returncode < 0:
        name = signal.Signals(-returncode).name
        how = f"cell process killed by {name}"
        if name == "SIGKILL":
            how += " (the kernel's out-of-memory killer sends this when host memory runs out)"
    else:
        how = f"cell process exited with code {returncode} without writing a result"
    return base_result(spec, "error", wall_s=time.perf_counter() - started,
                       message=f"{how}. Log tail:\n{_tail(log_path)}")


def precheck(cell: Cell, settings: SweepSettings, round_index: int = 0) -> Result | None:
    """An `unsupported` row decided in the parent on a CPU, or None to run the cell."""
    if torch.device(settings.device).type != "cpu":
        return None
    reason = supports(cell.variant, settings.device)
    if reason is None:
        return None
    return base_result(spec_for(cell, settings, round_index), "unsupported", reason=reason, wall_s=0.0)


def run_sweep(cells: list[Cell], settings: SweepSettings, results_path: Path, done: set[tuple[str, int]],
              log_dir: Path, progress: bool = True,
              on_result: Callable[[Result], None] | None = None, round_index: int = 0) -> list[Result]:
    """Run, in the order given, every cell whose (cell_key, round) is not in `done`, appending each row
    to `results_path` as it finishes."""
    from tqdm import tqdm

    todo = [c for c in cells if (spec_for(c, settings).key, round_index) not in done]
    results: list[Result] = []
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, desc=f"round {round_index}" if round_index else None)
    prefix = f"r{round_index}-" if round_index else ""
    try:
        for index, cell in enumerate(todo):
            bar.set_postfix_str(cell.key, refresh=True)
            result = precheck(cell, settings, round_index)
            if result is None:
                safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in cell.key)
                result = run_in_subprocess(spec_for(cell, settings, round_index),
                                           log_dir / f"{prefix}{index:03d}-{safe}.log")
            store.append(results_path, result)
            results.append(result)
            if on_result:
                on_result(result)
            bar.update(1)
    finally:
        bar.close()
    return results
