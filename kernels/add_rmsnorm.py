"""Residual add fused into the RMSNorm that follows it, forward and backward, in Triton.

A pre-norm block adds a branch to the residual stream and normalises the sum for the next matmul:

    s = residual + branch          (the new residual stream, in the promoted dtype: fp32 under autocast)
    y = rms_norm(s) * w            (the next matmul's input)

Unfused, under autocast, that is four passes over the rows: the add, the norm (reads s, writes an fp32
y), autocast's cast of y to bf16 for the matmul, and, where the matmul that reads the stream itself
(CT-CLIP's K/V projection) needs it, a cast of s. One kernel (kernels/rmsnorm.py's, with its
ADD_BRANCH flag) reads residual and branch once and writes s, y in the matmul's dtype, and optionally
`s_copy`, s in that dtype too. The kernel rounds as the unfused path's stores do (y and s_copy to
nearest even, as autocast's casts; s to the stream's dtype before normalising it, where that is 16-bit,
as the add's output is stored), so the fused path computes what the unfused one does, up to the order
of the fp32 row sums.

The backward is one pass too. With ds, dy and ds_copy the gradients of the three outputs:

    dresidual = ds + rms_norm_backward(dy) + ds_copy       (fp32, summed in registers)
    dbranch   = dresidual, written a second time in the branch's dtype (bf16 under autocast)

so the gradient accumulations and the casts back to each input's dtype, three to five kernels per add
unfused, are one. Saved for backward: s, w and the fp32 per-row 1/RMS, as the unfused norm saves.

Prior art: FlashAttention's layer_norm (`residual`, `prenorm`, `residual_in_fp32`), Liger-Kernel's
fused_add_rms_norm and vLLM's; the code here reuses this package's RMSNorm kernels.
"""

from __future__ import annotations

from typing import Optional

import torch

from kernels._launch import as_rows, check_branch, output_buffer
from kernels.rmsnorm import (INTERPRETED, TritonRMSNorm, check_rmsnorm_arguments, launch_backward,
                             launch_forward)

# An output the caller did not ask for (custom ops cannot return None).
_NOTHING = (0,)


def _check(branch: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> None:
    check_rmsnorm_arguments(residual, weight)
    check_branch(branch, residual, "fused add-RMSNorm branch")


@torch.library.custom_op("ctclip_kernels::add_rmsnorm_forward", mutates_args=())
def add_rmsnorm_forward(branch: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                        out_dtype: torch.dtype, write_sum_copy: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, y, s_copy, r): s = residual + branch in their promoted dtype, y = rms_norm(s) * w and s_copy
    in `out_dtype` (s_copy empty unless asked for), r the per-row fp32 1/RMS, all rows flattened."""
    _check(branch, residual, weight)
    width = residual.shape[-1]
    residual2, branch2 = as_rows(residual, width), as_rows(branch, width)
    sum_dtype = torch.promote_types(branch.dtype, residual.dtype)
    shape, device = residual2.shape, residual.device
    total = output_buffer(shape, sum_dtype, device, INTERPRETED)
    y = output_buffer(shape, out_dtype, device, INTERPRETED)
    copy = output_buffer(shape, out_dtype, device, INTERPRETED) if write_sum_copy else None
    r = torch.empty(shape[0], dtype=torch.float32, device=device)
    launch_forward(residual2, weight, eps, "inside", y, r, branch2=branch2, sum_out=total, sum_copy=copy,
                   sum_dtype=sum_dtype)
    copy = copy.to(out_dtype) if copy is not None else residual.new_empty(_NOTHING, dtype=out_dtype)
    return total.to(sum_dtype), y.to(out_dtype), copy, r


@add_rmsnorm_forward.register_fake
def _(branch: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype,
      write_sum_copy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(branch, residual, weight)
    width = residual.shape[-1]
    shape = (residual.numel() // width if width else 0, width)
    copy = residual.new_empty(shape if write_sum_copy else _NOTHING, dtype=out_dtype)
    return (residual.new_empty(shape, dtype=torch.promote_types(branch.dtype, residual.dtype)),
            residual.new_empty(shape, dtype=out_dtype), copy,
            residual.new_empty(shape[0], dtype=torch.float32))


@torch.library.custom_op("ctclip_kernels::add_rmsnorm_backward", mutates_args=())
def add_rmsnorm_backward(dy: torch.Tensor, d_sum: Optional[torch.Tensor], d_sum_copy: Optional[torch.Tensor],
                         total: torch.Tensor, weight: torch.Tensor, r: torch.Tensor, branch_dtype: torch.dtype
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d_residual in s's dtype, d_branch in `branch_dtype` or empty when that is s's dtype, dw)."""
    width = total.shape[-1]
    d_residual = output_buffer(total.shape, total.dtype, total.device, INTERPRETED)
    separate = branch_dtype != total.dtype
    d_branch = output_buffer(total.shape, branch_dtype, total.device, INTERPRETED) if separate else None
    dw = launch_backward(as_rows(dy, width), total, weight, r, "inside", d_residual,
                         d_sum2=None if d_sum is None else as_rows(d_sum, width),
                         d_sum_copy2=None if d_sum_copy is None else as_rows(d_sum_copy, width),
                         d_branch=d_branch)
    d_branch = d_branch.to(branch_dtype) if separate else total.new_empty(_NOTHING, dtype=branch_dtype)
    return d_residual.to(total.dtype), d_branch, dw


@add_rmsnorm_backward.register_fake
def _(dy: torch.Tensor, d_sum: Optional[torch.Tensor], d_sum_copy: Optional[torch.Tensor],
      total: torch.Tensor, weight: torch.Tensor, r: torch.Tensor, branch_dtype: torch.dtype
      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    separate = branch_dtype != total.dtype
    d_branch = total.new_empty(total.shape if separate else _NOTHING, dtype=branch_dtype)
    return torch.empty_like(total), d_branch, torch.empty_like(weight)


class TritonAddRMSNormFunction(torch.autograd.Function):
    """Autograd wrapper of the two ops: (s, y, s_copy or None) from (branch, residual, w)."""

    @staticmethod
    def forward(ctx, branch: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                out_dtype: torch.dtype, sum_copy: bool):
        # A copy in s's own dtype is s: returned as a second view of it rather than written, so that its
        # consumers' gradient still arrives as d_sum_copy and is summed in the kernel, not by autograd.
        write_sum_copy = sum_copy and out_dtype != torch.promote_types(branch.dtype, residual.dtype)
        total, y, copy, r = add_rmsnorm_forward(branch, residual, weight, eps, out_dtype, write_sum_copy)
        ctx.save_for_backward(total, weight, r)
        ctx.branch_dtype = branch.dtype
        # Unused outputs (s_copy when not written, or any whose consumer needs no gradient) arrive as
        # None rather than as materialised zeros, and the kernel skips them.
        ctx.set_materialize_grads(False)
        shape = residual.shape
        if sum_copy and not write_sum_copy:
            copy = total
        return total.view(shape), y.view(shape), (copy.view(shape) if sum_copy else None)

    @staticmethod
    def backward(ctx, d_sum: Optional[torch.Tensor], dy: Optional[torch.Tensor],
                 d_sum_copy: Optional[torch.Tensor]):
        total, weight, r = ctx.saved_tensors
        if dy is None:  # the normalised output took no part in the loss: only the add's gradient remains
            dy = total.new_zeros(total.shape)
        d_residual, d_branch, dw = add_rmsnorm_backward(dy, d_sum, d_sum_copy, total, weight, r,
                                                        ctx.branch_dtype)
        shape = dy.shape
        d_residual = d_residual.view(shape)
        d_branch = d_branch.view(shape) if ctx.branch_dtype != total.dtype else d_residual
        wants = ctx.needs_input_grad
        return (d_branch if wants[0] else None, d_residual if wants[1] else None, dw if wants[2] else None,
                None, None, None)


class TritonAddRMSNorm(TritonRMSNorm):
    """TritonRMSNorm (same `weight`, same plain forward) that can also take the residual add before it.

    `add_and_norm(branch, residual)` returns (s, y, s_copy): s = residual + branch, the new residual
    stream; y = RMSNorm(s) in the dtype the next matmul computes in (autocast's, when autocast is on
    for the device, else s's), or in `out_dtype` when given (a stage's output norm keeps the stream's
    dtype, as the plain forward does); s_copy = s in y's dtype when `sum_copy` (None otherwise, and s
    itself when that dtype is s's).
    """

    def __init__(self, dim: int, eps: float = 1e-6, device: "torch.device | str | None" = None,
                 dtype: "torch.dtype | None" = None) -> None:
        super().__init__(dim, eps=eps, eps_placement="inside", device=device, dtype=dtype)

    def add_and_norm(self, branch: torch.Tensor, residual: torch.Tensor, sum_copy: bool = False,
                     out_dtype: Optional[torch.dtype] = None
                     ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        if residual.shape[-1] != self.normalized_shape[0]:
            raise ValueError(f"TritonAddRMSNorm({self.normalized_shape[0]}) got input of shape "
                             f"{tuple(residual.shape)}")
        device = residual.device.type
        sum_dtype = torch.promote_types(branch.dtype, residual.dtype)
        if out_dtype is None:
            out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else sum_dtype
        return TritonAddRMSNormFunction.apply(branch, residual, self.weight, self.eps, out_dtype, sum_copy)
