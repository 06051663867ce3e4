"""What bench.gpu_check runs, part by part, with its time budget: on a GPU and in a CPU dry run.

Budgets are seconds at the default total (--budget scales them all). Unused time rolls over: part i
must end by start + scale * (budget_1 + ... + budget_i), so a quick part leaves more to the next one,
and a slow one can only eat its own share. A part whose time has run out is skipped with a note; a
cell is not started unless `min_start_s` remain (a half-timed cell is worth less than a recorded skip).

Order is what the issue needs most first: the headline (paper size, bf16) and the variants that test
its targets, then single switches, and the seed's fp16 last. The estimator needs no GPU: it runs on the
host's CPUs alongside the cell parts (bench.gpu_estimates), and the `estimate` part collects it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.design import Cell, expand, leanest_candidate, learned_bias_candidate, target_ladder
from models import Variant
from reports.stats import MIN_SAMPLES

# The budgets below add up to 480 s on a GPU: 8 minutes on one H100.
PROFILE_TOP = 12  # operators kept from one profiled step of each paper-size bf16 cell (bench.profile)


@dataclass(frozen=True)
class CellPart:
    """A group of cells run like bench.run --matrix: one subprocess each, one result file."""

    name: str
    budget_s: float
    size: str
    batch: int
    precision: str
    cells: tuple[Cell, ...]
    timing: dict[str, Any]
    cell_timeout_s: float
    min_start_s: float
    profile_top: int = 0  # > 0: each cell profiles one extra step (bench.profile) for the summary


@dataclass(frozen=True)
class Plan:
    dry_run: bool
    device: str
    probe_budget_s: float     # env, copy bandwidth, matmul, supports() (one child process)
    kernels_budget_s: float   # kernels.bench cases (the same child, after the probe)
    estimate_budget_s: float  # waiting for bench.gpu_estimates' CPU workers, which run alongside the cells
    report_budget_s: float
    cell_parts: tuple[CellPart, ...] = field(default_factory=tuple)
    threads: int = 0
    estimated_cells: "int | None" = None  # estimate only the first N cells (bench.gpu_estimates); None: all

    @property
    def total_s(self) -> float:
        return sum(self.budgets().values())

    def part_names(self) -> list[str]:
        names = [p.name for p in self.cell_parts]
        # The estimates run alongside the cell parts (bench.gpu_estimates) and are collected after them.
        return ["probe", "kernels", *names, "estimate", "report"]

    def budgets(self) -> dict[str, float]:
        fixed = {"probe": self.probe_budget_s, "kernels": self.kernels_budget_s,
                 "estimate": self.estimate_budget_s, "report": self.report_budget_s}
        parts = {p.name: p.budget_s for p in self.cell_parts}
        return {name: fixed.get(name, parts.get(name, 0.0)) for name in self.part_names()}


def target_variants(dry_run: bool) -> list[Variant]:
    """Paper-size candidates for the issue's targets, each keeping a position signal (RoPE or the cached
    bias table): the fastest (Triton kernels for the norms with the residual adds before them, the
    SwiGLU gate in the feed-forward's matmul epilogues, the q/k norm + RoPE, the PEG's convolution, the
    patch norm, the latent projections and the VQ's nearest-code search in tf32, fused AdamW, the VQ's EMA
    without its 55,296 x 8,192 one-hot, and the residual stream in bf16; bench.roofline puts its eager
    bound at 0.24x the faithful one on an H100), the leanest (plus checkpointing; bench.estimate predicts
    0.20x the faithful peak), the fastest with the gate as a kernel of its own between cuBLAS matmuls
    (what the epilogue buys, measured), then also with upstream's fp32 stream (what the bf16 stream
    buys), one without Triton that keeps CT-CLIP's learned bias through the memory-efficient kernel, and
    last (run if the budget allows) the four
    ladder steps before that (bench.design.target_ladder), which isolate the patch-norm kernel, the PEG
    kernel (whose effect on a GPU the roofline cannot see: PyTorch's 5-D depthwise convolution is its own
    kernel, not cuDNN's), the projection kernel and then the fused add."""
    *_, without_fused_add, without_projection_kernel, without_peg_kernel, without_patch_kernel, fp32_stream, \
        separate_gate, fast = target_ladder()
    if dry_run:  # the interpreter would spend seconds per Triton call: same structure, eager norm/MLP
        return [Variant.modern().replace(position="rope", vq_impl="chunked", optimizer="adamw_fused",
                                         precision="bf16")]
    return [v.replace(precision="bf16") for v in (
        fast, leanest_candidate(), separate_gate, fp32_stream, learned_bias_candidate(), without_patch_kernel,
        without_peg_kernel, without_projection_kernel, without_fused_add,
    )]


def _cells(design: str, precision: str, keep: "set[str] | None" = None) -> tuple[Cell, ...]:
    cells = expand(design, precision=precision)
    if keep is not None:
        cells = [c for c in cells if c.baseline or c.key in keep]
    return tuple(cells)


def _compiling_last(cells: tuple[Cell, ...]) -> tuple[Cell, ...]:
    """Cells that compile (compile=on, and flex, which runs compiled) after the rest: their minute of
    inductor time would otherwise push several quick single switches out of the budget."""
    compiles = [c for c in cells if c.variant.compile or c.variant.attention == "flex"]
    return tuple([c for c in cells if c not in compiles] + compiles)


def seed_switches_first(cells: tuple[Cell, ...]) -> tuple[Cell, ...]:
    """Single-switch cells with the baseline first, then each switch of the seed's modern row alone (and
    `attention=sdpa`, the fused kernel that keeps the learned bias, which sdpa_flash cannot take), then
    the rest in design order: when the budget runs out, what is skipped is not what the seed claimed."""
    base = next((c.variant for c in cells if c.baseline), Variant.faithful())
    seed = [base.replace(**{axis: value}) for axis, value in Variant.modern().changed_axes().items()]
    seed.append(base.replace(attention="sdpa"))
    first = [c for c in cells if c.baseline] + sorted((c for c in cells if c.variant in seed),
                                                      key=lambda c: seed.index(c.variant))
    return tuple(first + [c for c in cells if c not in first])


def _headline_first(cells: tuple[Cell, ...]) -> tuple[Cell, ...]:
    """The baseline, then Variant.modern() (the seed's all-on row), then the rest in design order."""
    modern = Variant.modern().key.split(",prec=")[0]
    first = [c for c in cells if c.baseline] + [c for c in cells if c.key.split(",prec=")[0] == modern]
    return tuple(first + [c for c in cells if c not in first])


def make_plan(dry_run: bool) -> Plan:
    if dry_run:
        quick = {"warmup": 1, "warmup_time_s": 0.0, "repeats": 2, "min_time_s": 0.0, "attempts": 1}
        modern = Variant.modern()
        parts = (
            CellPart("paper-bf16", 40, "tiny", 2, "bf16", _cells("paper", "bf16"), quick, 60, 3, PROFILE_TOP),
            CellPart("targets", 10, "tiny", 2, "bf16",
                     tuple(Cell(v, "targets") for v in target_variants(True)), quick, 60, 3, PROFILE_TOP),
            # A subset so CI stays quick: the baseline, one spawned switch, and two that a CPU without
            # the MiniLM package records unsupported without a spawn (as the GPU machine lacks it).
            CellPart("ofat-tiny", 20, "tiny", 2, "bf16",
                     _cells("ofat", "bf16", {"norm=rmsnorm,prec=bf16", "attn=flex,prec=bf16",
                                             "text=minilm,prec=bf16"}), quick, 60, 3),
            CellPart("paper-fp16", 10, "tiny", 2, "fp16",
                     (Cell(modern.replace(precision="fp16"), "paper"),), quick, 60, 3),
        )
        return Plan(True, "cpu", probe_budget_s=15, kernels_budget_s=10,
                    estimate_budget_s=10, report_budget_s=15, cell_parts=parts, threads=1,
                    # Enough for the estimate section and each report's estimate columns: the tiny
                    # cells take 3-9 s each on CI's 2 cores, which the cells and tests share.
                    estimated_cells=4)
    headline = {"warmup": 2, "warmup_time_s": 0.0, "repeats": 6, "min_time_s": 0.0, "attempts": 1}
    # The targets' verdicts need an interval on each step ratio, which reports.stats draws from at least
    # MIN_SAMPLES (5) timed steps a cell; the other parts keep 4 (a step less per cell, to fit the budget)
    # and their ratios are printed with the sample count and no interval.
    with_interval = {"warmup": 2, "warmup_time_s": 0.0, "repeats": MIN_SAMPLES, "min_time_s": 0.0, "attempts": 1}
    short = dict(with_interval, repeats=4)
    parts = (
        # ~1-2 s per paper-size step: 1 + 2 + 2 x 6 + 1 steps and ~10 s of process start and build per
        # cell. The two rows the headline compares go first, in case the budget ends the part early.
        CellPart("paper-bf16", 140, "paper", 4, "bf16", _headline_first(_cells("paper", "bf16")), headline,
                 120, 30, PROFILE_TOP),
        CellPart("targets", 60, "paper", 4, "bf16",
                 tuple(Cell(v, "targets") for v in target_variants(False)), with_interval, 90, 25,
                 PROFILE_TOP),
        # 23 cells, ~10 s each, mostly process start: whatever does not fit is skipped with a note, so the
        # seed's own switches go first.
        CellPart("ofat-small", 155, "small", 2, "bf16",
                 _compiling_last(seed_switches_first(_cells("ofat", "bf16"))), short, 60, 12),
        # The seed measured in fp16: its two headline rows first (the budget may end the part there).
        CellPart("paper-fp16", 45, "paper", 4, "fp16", _headline_first(_cells("paper", "fp16")), short,
                 90, 25),
        # Whatever time is left: the fastest candidate compiled (inductor fuses the elementwise work the
        # 40 % MFU target needs), started only with 60 s in hand since compiling the towers takes a while.
        CellPart("targets-compiled", 0, "paper", 4, "bf16",
                 (Cell(target_variants(False)[0].replace(compile=True), "targets"),), with_interval, 150, 60,
                 PROFILE_TOP),
    )
    return Plan(False, "cuda", probe_budget_s=20, kernels_budget_s=40,
                estimate_budget_s=10, report_budget_s=10, cell_parts=parts, threads=0)
