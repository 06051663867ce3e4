"""The result schema: one `Result` per cell, the only contract between `bench` and `reports`.

A result file is JSON Lines (one `Result.to_dict()` per line, appended as each cell finishes) with a
CSV beside it (`bench.store.flatten`, one row per cell, nested fields joined with dots, raw samples
left out). Readers should check `schema_version` and ignore fields they do not know.

Units everywhere in the file: **bytes** and **seconds** (tables convert to GiB = 2^30 bytes and ms).
FLOPs are plain floating-point operation counts (a multiply-add is 2).

Fields of `Result` (schema version 1):

- `schema_version` int; `kind` "measured" (a real run) | "estimate" (bench.estimate, FakeTensorMode).
- `status` "ok" | "oom" | "unsupported" | "error" | "timeout"; `reason` the backend's one-line
  reason for `unsupported`, else None; `message` the error text (or a note) for other statuses.
- `cell_key` the identity used by `--resume`: "<variant_key>|<size>|b<batch>|<device type>|<kind>".
- `variant_key` (`Variant.key`, e.g. "faithful", "attn=sdpa_flash,pos=none"), `variant` dict of every
  axis value (attention, position, norm, mlp, loss, text, vq, peg_layout, precision, checkpointing,
  compile), `precision` (copy of variant["precision"]: "fp32" | "fp16" | "bf16"; fp16/bf16 are
  autocast mixed precision with fp32 master weights).
- `size` preset name, `size_config` every `Size` field, `batch` the batch actually used.
- `design` which design produced the cell ("paper" | "ofat" | "loo" | "full"), `baseline` True for the
  row the design compares the others against.
- `device` dict: `type` "cpu" | "cuda", `name` (GPU name or CPU model), `count` (GPUs visible; for a
  CPU the number of cores this process may use), `torch_threads`, `uuid` (GPU only).
- `stages` dict stage -> `StageStats` for `text_forward`, `vision_forward`, `loss`, `backward`,
  `optimizer` (each timed at stage boundaries) and `step` (the whole step timed with nothing inside
  it). `StageStats`: `median`, `iqr`, `p10`, `p90` (seconds), `n`, `samples` (every raw sample,
  seconds). `timer` says how: "cuda_events" or "perf_counter". Empty for non-ok rows and estimates.
- `timing_windows` one summary per timing window tried ({step_median, stage_sum, step_iqr, n, kept},
  seconds): a window disturbed by other load is retimed up to `settings.attempts` times and the
  cleanest is kept (`bench.timers.time_stable`); the discarded ones stay visible here.
- `memory` a `Memory` dict, every figure in bytes or None when not measured on this device; the
  prefix says whose figure it is: `gpu_*` from the CUDA caching allocator, `nvml_*` from NVML (device
  wide), `cpu_*` the process's resident set, unprefixed ones are device-independent accounting
  (bytes saved for backward, parameters, gradients, optimizer state). See `Memory`.
- `flops` dict `forward`, `backward`, `total` per training step as executed (FlopCounterMode; backward
  includes any checkpoint recomputation), and `recomputed`, the part of `backward` that checkpointing
  reran (bench.recompute). Model FLOPs = total - recomputed (PaLM's definition). `tflops_per_s` = model
  FLOPs / step median / 1e12; `mfu` = tflops_per_s / peak; `hfu` the same with every executed FLOP
  (recomputation included; equal to `mfu` without checkpointing); `peak` the table entry used
  ({"entry", "precision", "tflops"}) or None with `mfu` and `hfu` None.
- `settings` how the cell was run: warmup, warmup_time_s, repeats, min_time_s, timeout_s, seed.
- `env` environment (python, torch, cuda, cudnn, triton, transformers, optional packages, GPU driver,
  clocks and throttle reasons before/after, CPU model...); `git` {"sha", "dirty"}.
- `env_fingerprint` short hash of what must match for `--resume` to reuse a row.
- `flags` list of warnings: "stage_sum_mismatch" (sum of stage medians differs from the step median
  by > 10 %), "noisy:<stage>" (IQR/median > 10 %), "profile_failed: <error>", "fp16_overflow: ..."
  (GradScaler skipped optimizer steps inside the timed window, so those samples did less work),
  "accounting_failed: <error>" (the FLOP and saved-bytes step failed, e.g. FlopCounterMode has no rule
  for FlexAttention; timings and the GPU peak stand, FLOPs and MFU are None).
- `profile` None, or the top operators of one extra profiled step (`bench.profile`), each {"name",
  "self_s", "calls", "share"}: kernels by time on the GPU, host operators by CPU time on a CPU; share
  is of the step's total self time. Made only when asked (`--profile-top N`, bench.gpu_check).
- `profile_totals` None, or that step's totals over every operator: {"self_s", "calls"} (kernel time
  and launches on a GPU, host operator time and calls on a CPU).
- `roofline` None, or (estimates only, `bench.roofline`) the step's lower bound on a named GPU: `gpu`,
  `dram_gb_per_s`, `peak_tflops`, `step_s` (every op at max(FLOPs/peak, bytes/bandwidth)), its
  `compute_bound_s` and `memory_bound_s` parts, `flops`, `bytes`, `ops`, `mfu_bound` (the highest MFU
  the step could show), `top_ops` (per operator: name, calls, flops, bytes, seconds, compute_bound_s,
  share of the step), `top_signatures` (the same per call site, when asked for) and `step_s_on` (the
  same bound on other GPUs, by bench.gpu_specs entry; empty unless asked for).
- `round` which pass over the design the row came from (`bench.run --rounds N`: 0 .. N-1; 0 for a
  single pass). Rows of one `cell_key` from different rounds are repeat measurements, each in a fresh
  process; a later row of the same cell and round supersedes an earlier one.
- `timestamp` ISO-8601 UTC when the row was written; `wall_s` seconds the cell took end to end.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 1

STATUSES = ("ok", "oom", "unsupported", "error", "timeout")
KINDS = ("measured", "estimate")
# Stages timed at boundaries, in execution order; `step` is the separately timed whole step.
STAGES = ("text_forward", "vision_forward", "loss", "backward", "optimizer")
ALL_STAGES = STAGES + ("step",)

# A stage sum or a spread beyond this fraction of the median gets a flag.
FLAG_TOLERANCE = 0.10


@dataclass
class StageStats:
    """Summary of one stage's samples, all in seconds."""

    median: float
    iqr: float
    p10: float
    p90: float
    n: int
    samples: list[float] = field(default_factory=list)


@dataclass
class Memory:
    """Memory figures in bytes; None means "not measured here", never zero-as-missing.

    Device-independent accounting (any device, and estimates):
      saved_activations_bytes  tensors saved for backward during the forward, deduplicated by storage,
                               parameters excluded (a saved_tensors_hooks counter)
      param_bytes, grad_bytes, optimizer_state_bytes   after one optimizer step
      largest_transient_bytes  the largest single op output seen during the step (estimates)
      predicted_peak_bytes     most bytes live at once over one step (bench.allocations), resident state included
      predicted_peak_at        where that peak is reached: the op whose outputs set it, and the phase
                               ("ctclip_kernels.gated_backward.default in the backward"); text, not bytes
    CPU process (measured on a CPU; these are NOT GPU figures):
      cpu_rss_baseline_bytes   resident set size before the model was built
      cpu_peak_rss_bytes       peak resident set size of the cell's process (getrusage ru_maxrss)
    GPU (measured on CUDA only):
      gpu_allocated_baseline_bytes  memory_allocated() after warm-up, before the timed steps
      gpu_allocated_peak_bytes      max_memory_allocated() over the timed steps
      gpu_peak_minus_baseline_bytes the difference: what the step itself adds
      gpu_requested_peak_bytes      the peak of the bytes the ops asked for (memory_stats'
                                    requested_bytes.all.peak): the allocated peak less the allocator's
                                    rounding and the block tails it does not split off (up to 1 MiB
                                    per large block), which predicted_peak_bytes does not model
      gpu_reserved_peak_bytes       max_memory_reserved() (allocator cache included)
      nvml_used_before_bytes        NVML device-used at the baseline (other processes included)
      nvml_used_after_bytes         NVML device-used after the timed steps; the allocator keeps its
                                    peak reservation, so this is the peak as the driver sees it
      cuda_context_bytes            CUDA context: NVML device-used after minus before this process
                                    created its context, less the allocator's reservation
    """

    saved_activations_bytes: int | None = None
    param_bytes: int | None = None
    grad_bytes: int | None = None
    optimizer_state_bytes: int | None = None
    largest_transient_bytes: int | None = None
    predicted_peak_bytes: int | None = None
    predicted_peak_at: str | None = None
    cpu_rss_baseline_bytes: int | None = None
    cpu_peak_rss_bytes: int | None = None
    gpu_allocated_baseline_bytes: int | None = None
    gpu_allocated_peak_bytes: int | None = None
    gpu_peak_minus_baseline_bytes: int | None = None
    gpu_requested_peak_bytes: int | None = None
    gpu_reserved_peak_bytes: int | None = None
    nvml_used_before_bytes: int | None = None
    nvml_used_after_bytes: int | None = None
    cuda_context_bytes: int | None = None


@dataclass
class Result:
    """One cell of a matrix: what ran, how it ended, and what it cost (see the module docstring)."""

    cell_key: str
    variant_key: str
    variant: dict[str, Any]
    size: str
    size_config: dict[str, Any]
    batch: int
    device: dict[str, Any]
    status: Literal["ok", "oom", "unsupported", "error", "timeout"]
    kind: Literal["measured", "estimate"] = "measured"
    reason: str | None = None
    message: str | None = None
    design: str | None = None
    baseline: bool = False
    precision: str = "fp32"
    timer: str | None = None
    stages: dict[str, StageStats] = field(default_factory=dict)
    timing_windows: list[dict[str, Any]] = field(default_factory=list)
    memory: Memory = field(default_factory=Memory)
    flops: dict[str, float] | None = None
    tflops_per_s: float | None = None
    mfu: float | None = None
    hfu: float | None = None
    peak: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    git: dict[str, Any] = field(default_factory=dict)
    env_fingerprint: str = ""
    flags: list[str] = field(default_factory=list)
    profile: list[dict[str, Any]] | None = None
    profile_totals: dict[str, Any] | None = None
    roofline: dict[str, Any] | None = None
    round: int = 0
    timestamp: str = ""
    wall_s: float | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {KINDS}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Result":
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {data.get('schema_version')!r}, this reader knows {SCHEMA_VERSION}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["stages"] = {k: StageStats(**v) for k, v in (values.get("stages") or {}).items()}
        mem_fields = {f.name for f in dataclasses.fields(Memory)}
        values["memory"] = Memory(**{k: v for k, v in (values.get("memory") or {}).items() if k in mem_fields})
        return cls(**values)


def cell_key(variant_key: str, size: str, batch: int, device_type: str, kind: str = "measured") -> str:
    return f"{variant_key}|{size}|b{batch}|{device_type}|{kind}"


def stage_flags(stages: dict[str, StageStats], tolerance: float = FLAG_TOLERANCE) -> list[str]:
    """Flags for a row whose stage medians do not add up to the step, or whose spread is wide."""
    flags = []
    step = stages.get("step")
    parts = [stages[s].median for s in STAGES if s in stages]
    if step and parts and step.median > 0 and abs(sum(parts) - step.median) > tolerance * step.median:
        flags.append("stage_sum_mismatch")
    for name, stats in stages.items():
        if stats.median > 0 and stats.iqr / stats.median > tolerance:
            flags.append(f"noisy:{name}")
    return flags
