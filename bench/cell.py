"""One matrix cell, run in its own process: `python -m bench.cell SPEC.json RESULT.json`.

The child builds the variant, warms up, times the interleaved staged/whole steps, reads memory,
counts FLOPs on one extra step, and writes its `Result` as JSON to RESULT.json (atomically). Anything
it can classify itself (unsupported, OOM, a Python error) becomes a row; a crash or a hang leaves no
file and the parent (`bench.runner`) classifies it from the exit code or the timeout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench import faults
from bench.environment import device_info, environment, gpu_clocks
from bench.flops import counter, model_flops, peak_entry, throughput
from bench.memory import (GpuMemoryProbe, SavedBytes, grad_bytes, optimizer_state_bytes, param_bytes,
                          peak_rss_bytes, rss_bytes)
from bench.profile import profile_step
from bench.recompute import counting_recomputation
from bench.result import Memory, Result, cell_key, stage_flags
from bench.step import TrainStep
from bench.timers import TimingSettings, loss_scale_settled, time_stable, warm_up
from models import Variant, build, example_batch, get_size, make_current, supports

MESSAGE_LIMIT = 2000


@dataclass
class CellSpec:
    """Everything a cell process needs; the parent writes it as JSON."""

    variant: dict[str, Any]
    size: str
    batch: int
    device: str
    design: str | None = None
    baseline: bool = False
    timing: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    seed: int = 0
    # torch intra-op threads; 0 keeps torch's default. On a shared CPU one thread is far steadier: two
    # threads on two busy cores spin-wait on each other and samples scatter by 4x.
    threads: int = 0
    profile_top: int = 0  # > 0: profile one more step after timing and keep this many operators
    env_fingerprint: str = ""
    host_device: dict[str, Any] = field(default_factory=dict)
    git: dict[str, Any] = field(default_factory=dict)
    round: int = 0  # which pass over the design (bench.run --rounds); copied into the row

    @property
    def variant_obj(self) -> Variant:
        return Variant.from_dict(self.variant)

    @property
    def key(self) -> str:
        return cell_key(self.variant_obj.key, self.size, self.batch, torch.device(self.device).type)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "CellSpec":
        return cls(**json.loads(text))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def base_result(spec: CellSpec, status: str, **extra: Any) -> Result:
    """A row for `spec` with the identity fields filled in; used by the child and by the parent."""
    variant = spec.variant_obj
    settings = dict(spec.timing, timeout_s=spec.timeout_s, seed=spec.seed, threads=spec.threads)
    # Every row of a sweep, run or not, names the same thread count, so reports group them together
    # (the parent's own count is torch's default, which a cell only keeps when spec.threads is 0).
    device = dict(spec.host_device)
    device["torch_threads"] = spec.threads or device.get("torch_threads") or torch.get_num_threads()
    return Result(
        cell_key=spec.key, variant_key=variant.key, variant=variant.as_dict(), size=spec.size,
        size_config=get_size(spec.size).as_dict(), batch=spec.batch, device=device,
        status=status, design=spec.design, baseline=spec.baseline, precision=variant.precision,
        settings=settings, git=dict(spec.git), env_fingerprint=spec.env_fingerprint, round=spec.round,
        timestamp=now(), **extra,
    )


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(status, message) for an exception raised inside a cell."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower():
        return "oom", text[:MESSAGE_LIMIT]
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
    return "error", (text + "\n" + tb)[:MESSAGE_LIMIT]


def _accounting_step(step: TrainStep) -> tuple[Memory, dict[str, float]]:
    """One extra, untimed step: bytes saved for backward, FLOPs (and those checkpointing recomputes), and
    parameter/gradient/optimizer bytes."""

    memory = Memory(param_bytes=param_bytes(step.model))
    with counting_recomputation(step.model) as recomputed:
        with SavedBytes(step.resident()) as saved, counter() as fwd:
            loss = step.forward()
        with counter() as bwd:
            step.backward(loss)
    memory.saved_activations_bytes = saved.bytes
    memory.grad_bytes = grad_bytes(step.model)
    step.optimizer_step()
    memory.optimizer_state_bytes = optimizer_state_bytes(step.optimizer)
    step.zero_grad()
    forward, backward = float(fwd.get_total_flops()), float(bwd.get_total_flops())
    return memory, {"forward": forward, "backward": backward, "total": forward + backward,
                    "recomputed": recomputed.flops}


def measure(spec: CellSpec) -> Result:
    """Run the cell in this process and return its row (never raises for a cell-level failure)."""
    started = time.perf_counter()
    variant = spec.variant_obj
    device = torch.device(spec.device)
    probe = GpuMemoryProbe(device)
    try:
        probe.measure_context()  # before anything else (supports() included) touches CUDA in this process
        make_current(device)  # CUDA events and Triton kernels use the current device's stream
    except Exception as exc:
        status, message = classify_exception(exc)
        return base_result(spec, status, message=message, wall_s=time.perf_counter() - started)
    reason = supports(variant, device)
    if reason:
        return base_result(spec, "unsupported", reason=reason, wall_s=time.perf_counter() - started)
    result = base_result(spec, "error")
    caller_threads = torch.get_num_threads()
    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    try:
        result.device.update(device_info(device))
        result.env = environment(device)
        result.env["clocks_before"] = gpu_clocks(device)
        rss_baseline = rss_bytes()
        torch.manual_seed(spec.seed)
        model = build(variant, spec.size, device=device)
        inputs = example_batch(spec.size, batch=spec.batch, device=device, seed=spec.seed)
        step = TrainStep(model, inputs)
        faults.inject(variant.key)
        settings = TimingSettings(**spec.timing)
        warm_up(step, settings, device)
        probe.start()
        if probe.active:  # start() emptied the allocator's cache: refill it so no timed step pays cudaMalloc
            step()
            step.zero_grad()
        scale_before = step.scaler.get_scale() if step.scaler is not None else None
        result.timer, result.stages, result.timing_windows = time_stable(step, settings, device)
        probe.finish(result.memory)
        skipped = scale_before is not None and not loss_scale_settled(step, scale_before)
        result.env["clocks_after"] = gpu_clocks(device)
        result.flags = stage_flags(result.stages) + (
            ["fp16_overflow: GradScaler skipped optimizer steps while timing"] if skipped else [])
        try:
            accounting, flops = _accounting_step(step)
            for f in ("saved_activations_bytes", "param_bytes", "grad_bytes", "optimizer_state_bytes"):
                setattr(result.memory, f, getattr(accounting, f))
        except Exception as exc:  # the timed figures stand without FLOPs (FlopCounterMode has no flex rule)
            flops = None
            result.flags.append(f"accounting_failed: {type(exc).__name__}: {exc}"[:300])
        result.memory.cpu_rss_baseline_bytes = rss_baseline
        result.memory.cpu_peak_rss_bytes = peak_rss_bytes()
        # Under a dispatch mode torch.compile runs the step eagerly, so compile=on cells count the same
        # FLOPs as eager ones; a zero count would mean nothing was seen: "unknown", not zero work.
        result.flops = flops if flops is not None and flops["total"] > 0 else None
        result.peak = peak_entry(result.device.get("name", ""), variant.precision, device.type)
        step_median = result.stages["step"].median
        if result.flops is not None:
            result.tflops_per_s, result.mfu = throughput(model_flops(flops), step_median, result.peak)
            result.hfu = throughput(flops["total"], step_median, result.peak)[1]
        if spec.profile_top > 0:
            try:
                result.profile, result.profile_totals = profile_step(step, device, spec.profile_top)
            except Exception as exc:  # the timed figures stand without a breakdown
                result.flags.append(f"profile_failed: {type(exc).__name__}: {exc}"[:300])
        result.status = "ok"
    except Exception as exc:  # a cell's failure is data, not a reason to stop
        result.status, result.message = classify_exception(exc)
        result.stages = {}
    finally:  # bench.run gives each cell a process, but a caller may measure in its own (tests, notebooks)
        torch.set_num_threads(caller_threads)
    result.timestamp = now()
    result.wall_s = time.perf_counter() - started
    return result


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print("usage: python -m bench.cell SPEC.json RESULT.json  (run by bench.run; see bench/cell.py)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    spec = CellSpec.from_json(Path(argv[0]).read_text())
    result = measure(spec)
    write_atomic(Path(argv[1]), json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
