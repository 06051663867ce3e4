"""Roofline step time: a lower bound on what one eager training step takes on a named GPU.

Every aten op the step dispatches costs max(FLOPs / peak, bytes moved / DRAM bandwidth), with the peak
of the precision its matmuls run in and both ceilings from the datasheet (bench.gpu_specs). Summed over
the step this is the time eager PyTorch would need if every kernel ran at its ceiling; a measured step
divided by it says how far the kernels are from that, and the op-by-op split says which ops a faster
variant must remove rather than speed up (memory-bound elementwise work, materialised attention scores).
It follows torch.utils._runtime_estimation (the cost model behind RuntimeEstimator's roofline mode),
which needs CUDA to read the ceilings; this one takes them from the table so it runs on fake tensors.

What the bound leaves out, so a measured step is always slower: kernel launch gaps (the op count is
recorded), caches (every operand is read from DRAM once per op; L2 is ignored), the efficiency of real
kernels, and fusion (eager ops each round-trip DRAM; torch.compile fuses them, so compiled steps can
beat the eager bound). Under FakeTensorMode on a CPU build the ops are the CPU build's, except where
bench.estimate models the CUDA build's dispatch (its autocast policy, fused rms_norm and dropout
attention; bench.gpu_dispatch): the same matmuls and flash attention, CPU kernels for the rest.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

import bench.flops  # noqa: F401  (registers the CPU flash and grouped-conv formulas in flop_registry)
from bench.gpu_specs import GpuSpec
from bench.memory import storage_id

aten = torch.ops.aten

# Ops that allocate or describe memory without reading or writing it (views are found by `is_view`).
NO_TRAFFIC = frozenset({aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty,
                        aten.new_empty_strided, aten.lift_fresh})
MATMUL_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
MAX_LISTED_OPERANDS = 6  # a call-site signature lists at most this many operand shapes
# The fused optimizers' schemas mark `grads` mutable, but their CUDA kernels store the gradients back
# only to unscale them, when a GradScaler passes `grad_scale` (aten/src/ATen/native/cuda/
# fused_adam_utils.cuh and its SGD/Adagrad siblings: `if (i != kGradIdx || grad_scale_ptr) store`).
# Without a scale that is a read of every gradient, not a read and a write: 4 bytes a parameter.
WRITTEN_ONLY_WITH = {
    packet: ("grads", "grad_scale")
    for packet in (aten._fused_adamw_, aten._fused_adam_, aten._fused_sgd_, aten._fused_adagrad_)
}
# A custom op that states its matmul precision in an argument of one of these names runs its products
# at that precision whatever its inputs' dtypes and torch's TF32 setting: ctclip_kernels::nearest_code's
# tl.dot `input_precision` for fp32 inputs, and ctclip_kernels::skinny_linear's `operand_dtype`, to
# which it rounds its fp32 inputs in registers.
STATED_PRECISION_ARG = "input_precision"
STATED_PRECISIONS = {"tf32": "tf32", "ieee": "fp32"}
STATED_DTYPE_ARG = "operand_dtype"
STATED_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def accessed_bytes(t: torch.Tensor) -> int:
    """Bytes one pass over `t` touches: broadcast (stride-0) dimensions are read once."""
    numel = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            numel *= size
    return numel * t.element_size()


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def stated_precision(func, args: tuple, kwargs: dict) -> "str | None":
    """The matmul precision ("tf32", "fp32", "bf16", "fp16") an op states in its STATED_PRECISION_ARG or
    STATED_DTYPE_ARG, or None."""
    for index, argument in enumerate(func._schema.arguments):
        if argument.name in (STATED_PRECISION_ARG, STATED_DTYPE_ARG):
            value = kwargs.get(argument.name, args[index] if index < len(args) else argument.default_value)
            return (STATED_PRECISIONS if argument.name == STATED_PRECISION_ARG else STATED_DTYPES).get(value)
    return None


def _key(t: torch.Tensor) -> tuple:
    return storage_id(t), t.storage_offset(), tuple(t.shape), tuple(t.stride())


def written_tensors(func, args: tuple, kwargs: dict, out: Any) -> list[torch.Tensor]:
    """The tensors the op writes: the arguments it mutates (in-place foreach ops return nothing; the
    fused optimizers' gradients only under a grad scale) and its outputs, unless every output is a view
    of an input (`_unsafe_view` is one without saying so)."""
    conditional, condition = WRITTEN_ONLY_WITH.get(func._overloadpacket, (None, None))
    written = {}
    for index, argument in enumerate(func._schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            # `grad_scale` is keyword-only in those schemas, so dispatch passes it in kwargs when given.
            if argument.name == conditional and kwargs.get(condition) is None:
                continue
            value = args[index] if index < len(args) else kwargs.get(argument.name)
            written.update((_key(t), t) for t in _tensors(value))
    outputs = _tensors(out)
    input_storages = {storage_id(t) for t in _tensors((args, kwargs))}
    if written or not all(storage_id(t) in input_storages for t in outputs):
        written.update((_key(t), t) for t in outputs)
    return list(written.values())


@dataclass
class OpCost:
    """One operator's share of the bound, summed over its calls."""

    name: str
    calls: int = 0
    flops: float = 0.0
    bytes: float = 0.0
    seconds: float = 0.0
    compute_bound_s: float = 0.0  # the part of `seconds` from calls whose FLOPs term is the larger


@dataclass
class RooflineEstimate:
    """The bound for one step; seconds and bytes, FLOPs as counted by torch's flop registry."""

    gpu: str
    dram_gb_per_s: float
    peak_tflops: dict[str, float]
    step_s: float
    compute_bound_s: float  # time of ops whose FLOPs term is the larger
    memory_bound_s: float  # time of ops whose bytes term is the larger
    flops: float
    bytes: float
    ops: int  # ops that move data: roughly the kernels launched
    top_ops: list[dict[str, Any]] = field(default_factory=list)
    # The same split by operand shapes and dtypes ("aten.mm[bf16] bf16[55296, 512] bf16[512, 2730]"),
    # when the mode was asked for it (RooflineMode(signatures=True)): which call sites the time is in.
    top_signatures: list[dict[str, Any]] = field(default_factory=list)
    # The same bound against other GPUs' datasheets, by GpuSpec.entry (RooflineMode(also=...)): what the
    # step would take on a GPU other than the one measured, at the same fraction of its ceilings.
    step_s_on: dict[str, float] = field(default_factory=dict)

    def mfu_bound(self, precision: str, model_flops: float | None = None) -> float | None:
        """The highest MFU this step could show: its model FLOPs (default: every FLOP it executes; pass
        them without checkpointing's recomputation, bench.recompute) over the bound, against the peak
        MFU uses."""
        peak = self.peak_tflops.get(precision)
        flops = self.flops if model_flops is None else model_flops
        return flops / self.step_s / (peak * 1e12) if peak and self.step_s else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def signature(name: str, inputs: list[torch.Tensor]) -> str:
    """An op's name with its tensor operands' dtypes and shapes: `aten.add fp32[4, 13824, 512] bf16[...]`;
    past MAX_LISTED_OPERANDS (a foreach or fused-optimizer op's lists) only their count and size."""
    if len(inputs) > MAX_LISTED_OPERANDS:
        return f"{name} {len(inputs)} tensors, {sum(t.numel() for t in inputs) / 1e6:.1f} M elements"
    short = {torch.float32: "fp32", **MATMUL_DTYPES}
    operands = " ".join(f"{short.get(t.dtype, str(t.dtype).removeprefix('torch.'))}{list(t.shape)}"
                        for t in inputs)
    return f"{name} {operands}".rstrip()


def op_seconds(spec: GpuSpec, flops: float, moved: float, precision: str) -> tuple[float, float]:
    """(compute, memory) seconds of one op at `spec`'s ceilings: FLOPs at `precision`'s peak (tf32's
    where the datasheet has no entry), bytes at the DRAM bandwidth."""
    compute_s = flops / ((spec.tflops.get(precision) or spec.tflops["tf32"]) * 1e12) if flops else 0.0
    return compute_s, moved / (spec.dram_gb_per_s * 1e9)


class RooflineMode(TorchDispatchMode):
    """Costs every dispatched op against `spec`'s ceilings. fp32 matmuls use the tf32 peak if `tf32`;
    with `signatures`, the costs are also kept per operand shapes and dtypes; each GPU in `also` gets
    the whole step's bound too (RooflineEstimate.step_s_on)."""

    def __init__(self, spec: GpuSpec, tf32: bool = False, signatures: bool = False,
                 also: "tuple[GpuSpec, ...]" = ()) -> None:
        super().__init__()
        self.spec, self.tf32, self.also = spec, tf32, also
        self.step_s_on = {other.entry: 0.0 for other in also}
        self.costs: dict[str, OpCost] = defaultdict(lambda: OpCost(""))
        self.signature_costs: "dict[str, OpCost] | None" = (defaultdict(lambda: OpCost("")) if signatures
                                                             else None)

    def _precision(self, inputs: list[torch.Tensor], stated: "str | None") -> str:
        dtype = next((t.dtype for t in inputs if t.is_floating_point()), torch.float32)
        return stated or MATMUL_DTYPES.get(dtype) or ("tf32" if self.tf32 else "fp32")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if func.is_view or packet in NO_TRAFFIC:
            return out
        written = written_tensors(func, args, kwargs, out)
        if not written:  # a view, a metadata query (prim.device, ...) or a scalar read: no kernel
            return out
        inputs = _tensors((args, kwargs))
        moved = sum(accessed_bytes(t) for t in inputs) + sum(accessed_bytes(t) for t in written)
        flops = float(flop_registry[packet](*args, **kwargs, out_val=out)) if packet in flop_registry else 0.0
        name, precision = str(packet), ""
        if flops:
            # Named by precision: an fp32 matmul left among bf16 ones is worth seeing on its own.
            precision = self._precision(inputs, stated_precision(func, args, kwargs))
            name = f"{packet}[{precision}]"
        compute_s, memory_s = op_seconds(self.spec, flops, moved, precision)
        for other in self.also:
            self.step_s_on[other.entry] += max(op_seconds(other, flops, moved, precision))
        tables = [(self.costs, name)]
        if self.signature_costs is not None:
            tables.append((self.signature_costs, signature(name, inputs)))
        for table, key in tables:
            cost = table[key]
            cost.name = key
            cost.calls += 1
            cost.flops += flops
            cost.bytes += moved
            cost.seconds += max(compute_s, memory_s)
            if compute_s > memory_s:
                cost.compute_bound_s += compute_s
        return out

    def estimate(self, top: int = 12, top_signatures: int = 12) -> RooflineEstimate:
        costs = sorted(self.costs.values(), key=lambda c: c.seconds, reverse=True)
        step_s = sum(c.seconds for c in costs)
        compute_s = sum(c.compute_bound_s for c in costs)

        def ranked(table: "dict[str, OpCost] | None", n: int) -> list[dict[str, Any]]:
            ordered = sorted((table or {}).values(), key=lambda c: c.seconds, reverse=True)
            return [dict(asdict(c), share=c.seconds / step_s if step_s else 0.0) for c in ordered[:n]]

        return RooflineEstimate(
            gpu=self.spec.entry, dram_gb_per_s=self.spec.dram_gb_per_s, peak_tflops=dict(self.spec.tflops),
            step_s=step_s, compute_bound_s=compute_s, memory_bound_s=step_s - compute_s,
            flops=sum(c.flops for c in costs), bytes=sum(c.bytes for c in costs),
            ops=sum(c.calls for c in costs), top_ops=ranked(self.costs, top),
            top_signatures=ranked(self.signature_costs, top_signatures), step_s_on=dict(self.step_s_on))
