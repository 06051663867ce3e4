"""The residual add before a PEG fused into its convolution, forward and backward, in Triton.

Each CT-ViT layer ends with `x = ff(x) + x`, and the next layer starts with the PEG's convolution of
that sum (models/transformer.py). Unfused, under autocast, the add reads the fp32 stream and the bf16
FF output and writes the fp32 sum, which the PEG kernel then reads; in backward autograd sums the
sum's two gradients (the PEG's and the next norm's) in one more pass and casts the total to bf16 for
the FF branch in another. Here the PEG kernels (kernels/peg_conv.py, behind their ADD_BRANCH /
ADD_D_SUM / WRITE_D_BRANCH flags) do it in their own passes:

    s   = x + branch            (in the promoted dtype: fp32 under autocast; the kernel writes it once)
    out = conv(s)               (s recomputed from x and branch at every tap, rounded as the add stores)
    dx  = conv_backward(dout) + ds,   dbranch = dx in the branch's dtype   (one pass)

The numbers are the unfused path's: the same rounding (s to its dtype, then to the compute dtype for
the products; dx's convolution part to the compute dtype before the fp32 add), the same fp32 sums.
Saved for backward: s in the compute dtype (or s itself when that is its dtype) and the weight, as the
unfused PEG saves.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.flop_counter import register_flop_formula

from kernels._launch import check_branch, output_buffer_like
from kernels.peg_conv import (INTERPRETED, TAPS, channels_unit_stride, check_peg_arguments, conv_flops, launch_backward,
                              launch_forward)

# An output the caller did not ask for (custom ops cannot return None).
_NOTHING = (0,)


@torch.library.custom_op("ctclip_kernels::peg_add_conv_forward", mutates_args=())
def peg_add_conv_forward(x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         out_dtype: torch.dtype, write_sum_copy: bool
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, out, s_copy) for (B, T, H, W, C) grids x and branch: s = x + branch in their promoted dtype,
    out its convolution in `out_dtype`, s_copy s in `out_dtype` (for the backward) or empty."""
    check_peg_arguments(x, weight, bias)
    check_branch(branch, x, "PEG add branch")
    x, branch = channels_unit_stride(x), channels_unit_stride(branch)
    sum_dtype = torch.promote_types(x.dtype, branch.dtype)
    total = output_buffer_like(x, sum_dtype, INTERPRETED)
    out = output_buffer_like(x, out_dtype, INTERPRETED)
    copy = output_buffer_like(x, out_dtype, INTERPRETED) if write_sum_copy else None
    launch_forward(x, weight, bias, out, copy, out_dtype, branch, total, sum_dtype)
    copy = copy.to(out_dtype) if write_sum_copy else x.new_empty(_NOTHING, dtype=out_dtype)
    return total.to(sum_dtype), out.to(out_dtype), copy


@peg_add_conv_forward.register_fake
def _(x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out_dtype: torch.dtype,
      write_sum_copy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_peg_arguments(x, weight, bias)
    check_branch(branch, x, "PEG add branch")
    sum_dtype = torch.promote_types(x.dtype, branch.dtype)
    x = channels_unit_stride(x)  # as the real op lays its outputs out: torch.compile trusts these strides
    copy = torch.empty_like(x, dtype=out_dtype) if write_sum_copy else x.new_empty(_NOTHING, dtype=out_dtype)
    return torch.empty_like(x, dtype=sum_dtype), torch.empty_like(x, dtype=out_dtype), copy


@torch.library.custom_op("ctclip_kernels::peg_add_conv_backward", mutates_args=())
def peg_add_conv_backward(dout: torch.Tensor, d_sum: Optional[torch.Tensor], saved: torch.Tensor,
                          weight: torch.Tensor, x_rounding_dtype: torch.dtype, sum_dtype: torch.dtype,
                          branch_dtype: torch.dtype, compute_dtype: torch.dtype
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx in `sum_dtype`, dbranch in `branch_dtype` or empty when that is `sum_dtype`, dw (C, 27),
    dbias (C,)) from the output's gradient, the sum's own (`d_sum`, from its other consumers; None if
    it has none) and the saved s (rounded to `x_rounding_dtype` here; float32: as it is)."""
    check_peg_arguments(saved, weight)
    dout, saved = channels_unit_stride(dout), channels_unit_stride(saved)
    d_sum = None if d_sum is None else channels_unit_stride(d_sum)
    dx = output_buffer_like(saved, sum_dtype, INTERPRETED)
    separate = branch_dtype != sum_dtype
    d_branch = output_buffer_like(saved, branch_dtype, INTERPRETED) if separate else None
    dw, dbias = launch_backward(dout, saved, weight, dx, x_rounding_dtype, compute_dtype, d_sum, d_branch)
    d_branch = d_branch.to(branch_dtype) if separate else saved.new_empty(_NOTHING, dtype=branch_dtype)
    return dx.to(sum_dtype), d_branch, dw, dbias


@peg_add_conv_backward.register_fake
def _(dout: torch.Tensor, d_sum: Optional[torch.Tensor], saved: torch.Tensor, weight: torch.Tensor,
      x_rounding_dtype: torch.dtype, sum_dtype: torch.dtype, branch_dtype: torch.dtype,
      compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    separate = branch_dtype != sum_dtype
    saved = channels_unit_stride(saved)
    d_branch = (torch.empty_like(saved, dtype=branch_dtype) if separate
                else saved.new_empty(_NOTHING, dtype=branch_dtype))
    return (torch.empty_like(saved, dtype=sum_dtype), d_branch, torch.empty_like(weight, dtype=torch.float32),
            weight.new_empty(saved.shape[-1], dtype=torch.float32))


@register_flop_formula(torch.ops.ctclip_kernels.peg_add_conv_forward)
def _forward_flops(x_shape, *args, **kwargs) -> int:
    return conv_flops(x_shape)  # as the unfused PEG counts; the add is not a matmul FLOP


@register_flop_formula(torch.ops.ctclip_kernels.peg_add_conv_backward)
def _backward_flops(dout_shape, *args, **kwargs) -> int:
    return 2 * conv_flops(dout_shape)


class TritonPEGAddConvFunction(torch.autograd.Function):
    """Autograd wrapper: (s, out) from (x, branch, Conv3d weight, bias); saves s in the compute dtype (or
    s itself) and w as (C, 27)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                compute_dtype: torch.dtype):
        w = weight.reshape(x.shape[-1], TAPS)
        sum_dtype = torch.promote_types(x.dtype, branch.dtype)
        write_copy = compute_dtype != sum_dtype
        total, out, copy = peg_add_conv_forward(x, branch, w, bias, compute_dtype, write_copy)
        ctx.save_for_backward(copy if write_copy else total, w)
        ctx.dtypes = (sum_dtype, branch.dtype, compute_dtype)
        ctx.x_rounding = torch.float32 if write_copy else compute_dtype
        ctx.weight_shape, ctx.weight_dtype, ctx.bias_dtype = weight.shape, weight.dtype, bias.dtype
        # A sum with no other consumer sends None rather than materialised zeros; the kernel skips it.
        ctx.set_materialize_grads(False)
        return total, out

    @staticmethod
    def backward(ctx, d_sum: Optional[torch.Tensor], dout: Optional[torch.Tensor]):
        saved, w = ctx.saved_tensors
        sum_dtype, branch_dtype, compute_dtype = ctx.dtypes
        if dout is None:  # the convolution took no part in the loss
            dout = saved.new_zeros(saved.shape, dtype=compute_dtype)
        dx, d_branch, dw, dbias = peg_add_conv_backward(dout, d_sum, saved, w, ctx.x_rounding, sum_dtype,
                                                        branch_dtype, compute_dtype)
        d_branch = d_branch if branch_dtype != sum_dtype else dx
        wants = ctx.needs_input_grad
        return (dx if wants[0] else None, d_branch if wants[1] else None,
                dw.to(ctx.weight_dtype).reshape(ctx.weight_shape) if wants[2] else None,
                dbias.to(ctx.bias_dtype) if wants[3] else None, None)


def triton_peg_add_conv(x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, conv(s)) with s = x + branch on (B, T, H, W, C) grids, the convolution a Conv3d's causal
    depthwise (C, 1, 3, 3, 3) weight and bias, in autocast's dtype when autocast is on for x's device."""
    device = x.device.type
    sum_dtype = torch.promote_types(x.dtype, branch.dtype)
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else sum_dtype
    return TritonPEGAddConvFunction.apply(x, branch, weight, bias, compute_dtype)
