"""FLOPs per training step (FlopCounterMode), TFLOP/s and MFU against the datasheet peak (bench.gpu_specs).

`FlopCounterMode` has no formula for PyTorch's CPU flash-attention kernel or its backward, so CPU SDPA
attention would count as zero (cpu-facts §4). `register_cpu_flash_formulas()` adds the standard SDPA
formulas (forward 4·B·H·S_q·S_kv·D, backward 2.5× that) for those two ops; and its convolution
backward formula ignores `groups` for the weight gradient, over-counting CT-CLIP's depthwise PEG conv
~dim-fold, which `register_grouped_conv_backward_formula()` corrects. Importing this module does both.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_flop_count,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from bench.gpu_specs import find_gpu

aten = torch.ops.aten


def register_cpu_flash_formulas() -> None:
    """Idempotent: a later torch that ships its own formula keeps it."""
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in flop_registry and fwd.default not in flop_registry:
        @register_flop_formula(fwd)
        def _cpu_flash_fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query, key, value)

    if bwd is not None and bwd not in flop_registry and bwd.default not in flop_registry:
        @register_flop_formula(bwd)
        def _cpu_flash_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
            return sdpa_backward_flop_count(grad_out, query, key, value)


def _grouped_conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                                transposed, _output_padding, groups, output_mask, out_shape, **kwargs) -> int:
    """torch's convolution_backward formula, with the weight-gradient term divided by `groups`.

    torch 2.13 counts grad_weight as a dense conv(inp, grad_out) whatever the groups, so a depthwise
    conv (CT-CLIP's PEG: groups = dim = 512) has its backward over-counted ~groups-fold (at paper size
    several TFLOP per step). The grad-input term already uses the grouped weight shape and is right.
    """
    def t(shape):
        return [shape[1], shape[0]] + list(shape[2:])

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        if transposed:
            dense = conv_flop_count(t(grad_out_shape), t(x_shape), t(out_shape[1]), transposed=False)
        else:
            dense = conv_flop_count(t(x_shape), t(grad_out_shape), t(out_shape[1]), transposed=False)
        flops += dense // groups
    return flops


def register_grouped_conv_backward_formula() -> None:
    for op in [k for k in flop_registry if getattr(k, "overloadpacket", k) is aten.convolution_backward]:
        del flop_registry[op]
    register_flop_formula(aten.convolution_backward)(_grouped_conv_backward_flop)


register_cpu_flash_formulas()
register_grouped_conv_backward_formula()


def counter() -> FlopCounterMode:
    _import_kernel_formulas()
    return FlopCounterMode(display=False)


def _import_kernel_formulas() -> None:
    """Import the Triton kernel modules, which register their custom ops' FLOP formulas, if Triton is
    installed. FlopCounterMode copies the formula registry when it is made, and models/ imports a kernel
    module lazily, at a forward's first call: a counter made before any forward would count those ops 0."""
    if importlib.util.find_spec("triton") is None:
        return
    import kernels

    for name in kernels.KERNEL_MODULES:
        importlib.import_module(name)


def matmul_precision(precision: str, device_type: str) -> str:
    """The precision the step's matmuls run in: autocast's dtype, or fp32/tf32 per torch's setting."""
    if precision in ("fp16", "bf16"):
        return precision
    if device_type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "fp32"


def peak_entry(device_name: str, precision: str, device_type: str) -> dict[str, Any] | None:
    """{"entry", "precision", "tflops"} for this GPU and precision, or None (CPUs have no entry)."""
    if device_type != "cuda":
        return None
    mm = matmul_precision(precision, device_type)
    spec = find_gpu(device_name)
    if spec is None or mm not in spec.tflops:
        return None
    return {"entry": spec.entry, "precision": mm, "tflops": spec.tflops[mm]}


def model_flops(flops: dict[str, float]) -> float:
    """MFU's numerator: the step's executed FLOPs less what activation checkpointing recomputed (its
    `recomputed` entry, bench.recompute; absent or 0 without checkpointing). HFU counts them all."""
    return flops["total"] - flops.get("recomputed", 0.0)


def throughput(total_flops: float | None, step_seconds: float | None,
               peak: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """(TFLOP/s, MFU); MFU is None without a peak entry."""
    if not total_flops or not step_seconds:
        return None, None
    tflops = total_flops / step_seconds / 1e12
    return tflops, (tflops / peak["tflops"] if peak else None)
