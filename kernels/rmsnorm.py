"""Fused RMSNorm, forward and backward, in Triton.

For one row x of width N, weight w and eps, with all arithmetic in fp32 whatever the input dtype:

    eps "inside"  (torch.nn.RMSNorm):  r = 1 / sqrt(mean(x^2) + eps)
    eps "outside" (the seed project):  r = 1 / (sqrt(mean(x^2)) + eps)
    y = x * r * w

The forward saves r per row (fp32), so the backward never re-reduces for it. With g = dy * w and
c = mean(g * x) (one row reduction):

    inside:   dx = r * g - x * r^3 * c                       (dr/dx = -r^3 x / N)
    outside:  dx = r * g - x * r^2 * c / rms,  rms = sqrt(mean(x^2))   (dr/dx = -r^2 x / (N rms));
              the second term is taken as 0 for an all-zero row, where the derivative does not exist
    dw = sum over rows of dy * x * r

dw is reduced in two deterministic stages: each program of the backward walks a fixed set of row tiles
and keeps its own fp32 partial sum (no atomics), then one `sum` over the programs' partials. Rows of any
width up to 65,536 are handled in one tile per row, with masking for widths that are not powers of two.

Both kernels also serve the residual add fused into the norm (kernels/add_rmsnorm.py), behind constexpr
flags that compile away when off: the forward adds a branch to x, rounds the sum to the stream's dtype
and writes it (and a copy in the output's dtype); the backward adds the sum's own gradients to dx and
writes dx a second time in the branch's dtype.

References: the Triton layer-norm tutorial (fused backward with per-program dW partials) and
Liger-Kernel's rms_norm (saved fp32 rstd, grid-stride backward); the code here is written afresh.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn

from kernels._launch import (MAX_ROW_WIDTH, as_rows, check_float, interpreting, next_pow2, num_warps,
                             output_buffer, persistent_tiling, rows_per_tile)

# Whether the kernels below were defined for the interpreter (read by kernels.supports).
INTERPRETED = interpreting()
EPS_PLACEMENTS = ("inside", "outside")


# How the fused add rounds its sum before normalising it: as the unfused add's output is stored.
SUM_ROUNDING = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@triton.jit
def _round_to_bf16(x):
    # Round-to-nearest-even to bf16, kept in fp32, by integer arithmetic: the interpreter's own
    # conversion truncates. Finite values and infinities round as torch's cast does; a NaN is passed
    # through, because the carry would turn a GPU's NaN (bits 0x7FFFFFFF) into -0.0.
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))


@triton.jit
def rounded(x, ROUNDING: tl.constexpr):
    # fp32 x as a cast to the dtype of a SUM_ROUNDING code and back would leave it (0: unchanged).
    if ROUNDING == 1:
        x = _round_to_bf16(x)
    elif ROUNDING == 2:
        x = x.to(tl.float16).to(tl.float32)
    return x


@triton.jit
def _rmsnorm_fwd_kernel(X, Y, W, R, BRANCH, SUM, SUM_COPY, stride_x, stride_y, stride_branch, n_rows, n_cols,
                        eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EPS_INSIDE: tl.constexpr,
                        ADD_BRANCH: tl.constexpr, SUM_ROUNDING: tl.constexpr, WRITE_SUM_COPY: tl.constexpr):
    # int64 row indices: rows * stride overflows int32 beyond 2^31 elements.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    # Upcast on load: the interpreter multiplies bf16 by bf16 wrongly, and fp32 is the accuracy we promise.
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    out_offsets = rows[:, None] * stride_y + cols[None, :]  # every output is a fresh [rows, n_cols] buffer
    if ADD_BRANCH:  # x is the residual: normalise residual + branch, write the sum (kernels/add_rmsnorm.py)
        branch = tl.load(BRANCH + rows[:, None] * stride_branch + cols[None, :], mask=mask, other=0.0)
        x = rounded(x + branch.to(tl.float32), SUM_ROUNDING)
        tl.store(SUM + out_offsets, x.to(SUM.dtype.element_ty), mask=mask)
        if WRITE_SUM_COPY:
            tl.store(SUM_COPY + out_offsets, x.to(SUM_COPY.dtype.element_ty), mask=mask)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    # Per-row scalars use IEEE-rounded sqrt and division (Triton's defaults are approximate): they cost
    # nothing here and keep fp32 results within an ulp or two of PyTorch's. `n_cols * 1.0` rather than
    # `.to()`: Triton turns an int argument equal to 1 into a constexpr, which has no `.to`.
    mean_sq = tl.div_rn(tl.sum(x * x, axis=1), n_cols * 1.0)
    if EPS_INSIDE:
        r = tl.div_rn(1.0, tl.sqrt_rn(mean_sq + eps))
    else:
        r = tl.div_rn(1.0, tl.sqrt_rn(mean_sq) + eps)
    y = x * r[:, None] * w[None, :]
    tl.store(Y + out_offsets, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(R + rows, r, mask=row_ok)


@triton.jit
def _rmsnorm_bwd_kernel(DY, X, W, R, DX, DW_PARTIAL, D_SUM, D_SUM_COPY, D_BRANCH, stride_dy, stride_x,
                        stride_dx, stride_d_sum, stride_d_sum_copy, n_rows, n_cols,
                        TILES_PER_PROGRAM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        EPS_INSIDE: tl.constexpr, ADD_D_SUM: tl.constexpr, ADD_D_SUM_COPY: tl.constexpr,
                        WRITE_D_BRANCH: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    # Per-element accumulator, reduced over rows once at the end rather than once per tile.
    dw_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # Each program owns a contiguous run of row tiles; tiles past the end are fully masked. The trip
    # count is a constexpr because the interpreter (with numpy >= 2.4) cannot loop to a runtime bound.
    first_tile = pid.to(tl.int64) * TILES_PER_PROGRAM
    for tile in range(0, TILES_PER_PROGRAM):
        rows = (first_tile + tile) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        r = tl.load(R + rows, mask=row_ok, other=0.0)
        dw_acc += dy * x * r[:, None]
        g = dy * w[None, :]
        c = tl.div_rn(tl.sum(g * x, axis=1), n_cols * 1.0)
        if EPS_INSIDE:
            coef = r * r * r * c
        else:
            rms = tl.sqrt_rn(tl.div_rn(tl.sum(x * x, axis=1), n_cols * 1.0))
            coef = tl.where(rms > 0.0, tl.div_rn(r * r * c, tl.where(rms > 0.0, rms, 1.0)), 0.0)
        dx = r[:, None] * g - x * coef[:, None]
        # The fused add's backward (kernels/add_rmsnorm.py): x was residual + branch, and the sum (and its
        # low-precision copy) also had consumers of their own, whose gradients join here.
        if ADD_D_SUM:
            dx += tl.load(D_SUM + rows[:, None] * stride_d_sum + cols[None, :], mask=mask,
                          other=0.0).to(tl.float32)
        if ADD_D_SUM_COPY:
            dx += tl.load(D_SUM_COPY + rows[:, None] * stride_d_sum_copy + cols[None, :], mask=mask,
                          other=0.0).to(tl.float32)
        out_offsets = rows[:, None] * stride_dx + cols[None, :]
        tl.store(DX + out_offsets, dx.to(DX.dtype.element_ty), mask=mask)
        if WRITE_D_BRANCH:  # the branch's gradient in the branch's own dtype, without a cast kernel
            tl.store(D_BRANCH + out_offsets, dx.to(D_BRANCH.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid * n_cols + cols, tl.sum(dw_acc, axis=0), mask=col_ok)


def _block_n(n_cols: int) -> int:
    if n_cols > MAX_ROW_WIDTH:
        raise ValueError(f"TritonRMSNorm handles rows up to {MAX_ROW_WIDTH} wide, got {n_cols}")
    return next_pow2(n_cols)


def check_rmsnorm_arguments(x: torch.Tensor, weight: torch.Tensor) -> None:
    check_float(x, "RMSNorm input")
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"RMSNorm weight has shape {tuple(weight.shape)}, expected ({x.shape[-1]},)")


def launch_forward(x2: torch.Tensor, weight: torch.Tensor, eps: float, eps_placement: str, y: torch.Tensor,
                   r: torch.Tensor, branch2: "torch.Tensor | None" = None,
                   sum_out: "torch.Tensor | None" = None, sum_copy: "torch.Tensor | None" = None,
                   sum_dtype: torch.dtype = torch.float32) -> None:
    """Fill y ([rows, width], fresh) and r from the row view x2; with `branch2`, normalise x2 + branch2
    (rounded to `sum_dtype` first) and write that sum to `sum_out` (and `sum_copy`, if given), both
    fresh buffers shaped like y."""
    n_rows, n_cols = x2.shape
    if not (n_rows and n_cols):
        return
    block_n = _block_n(n_cols)
    block_m = rows_per_tile(block_n, n_rows)
    # Absent tensors are never read or written (their flags are off); any pointer stands in for them.
    _rmsnorm_fwd_kernel[(triton.cdiv(n_rows, block_m),)](
        x2, y, weight.contiguous(), r, x2 if branch2 is None else branch2, y if sum_out is None else sum_out,
        y if sum_copy is None else sum_copy, x2.stride(0), y.stride(0),
        0 if branch2 is None else branch2.stride(0), n_rows, n_cols, float(eps),
        BLOCK_M=block_m, BLOCK_N=block_n, EPS_INSIDE=eps_placement == "inside",
        ADD_BRANCH=branch2 is not None, SUM_ROUNDING=SUM_ROUNDING[sum_dtype],
        WRITE_SUM_COPY=sum_copy is not None,
        num_warps=num_warps(block_m * block_n))


def launch_backward(dy2: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, r: torch.Tensor,
                    eps_placement: str, dx: torch.Tensor, d_sum2: "torch.Tensor | None" = None,
                    d_sum_copy2: "torch.Tensor | None" = None,
                    d_branch: "torch.Tensor | None" = None) -> torch.Tensor:
    """Fill dx ([rows, width], fresh) and return dw in weight's dtype. `d_sum2` and `d_sum_copy2` (row
    views) are added to dx; `d_branch`, if given, receives dx again in its own dtype."""
    n_rows, n_cols = x2.shape
    if not (n_rows and n_cols):
        return torch.zeros_like(weight)
    block_n = _block_n(n_cols)
    block_m = rows_per_tile(block_n, n_rows)
    n_tiles = triton.cdiv(n_rows, block_m)
    tiles_per_program, programs = persistent_tiling(x2.device, n_tiles)
    dw_partial = torch.empty((programs, n_cols), dtype=torch.float32, device=x2.device)
    _rmsnorm_bwd_kernel[(programs,)](
        dy2, x2, weight.contiguous(), r, dx, dw_partial, dy2 if d_sum2 is None else d_sum2,
        dy2 if d_sum_copy2 is None else d_sum_copy2, dx if d_branch is None else d_branch,
        dy2.stride(0), x2.stride(0), dx.stride(0), 0 if d_sum2 is None else d_sum2.stride(0),
        0 if d_sum_copy2 is None else d_sum_copy2.stride(0), n_rows, n_cols,
        TILES_PER_PROGRAM=tiles_per_program, BLOCK_M=block_m, BLOCK_N=block_n,
        EPS_INSIDE=eps_placement == "inside", ADD_D_SUM=d_sum2 is not None,
        ADD_D_SUM_COPY=d_sum_copy2 is not None, WRITE_D_BRANCH=d_branch is not None,
        num_warps=num_warps(block_m * block_n))
    # Second stage of the dw reduction: a fixed-shape sum, so the result is bitwise reproducible.
    return dw_partial.sum(0).to(weight.dtype)


# Each launch is a torch custom op (torch.library), so fake tensors and dispatch modes see one op with
# the kernel's inputs and outputs: bench.estimate can size Triton variants without running them, and
# torch.compile keeps the kernels as opaque nodes.
@torch.library.custom_op("ctclip_kernels::rmsnorm_forward", mutates_args=())
def rmsnorm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float,
                    eps_placement: str = "inside") -> tuple[torch.Tensor, torch.Tensor]:
    """y (x's shape and dtype) and the per-row fp32 r = 1/RMS (shape [rows]) for the backward."""
    check_rmsnorm_arguments(x, weight)
    x2 = as_rows(x, x.shape[-1])
    y = output_buffer(x2.shape, x.dtype, x.device, INTERPRETED)
    r = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
    launch_forward(x2, weight, eps, eps_placement, y, r)
    return y.to(x.dtype).view(x.shape), r


@rmsnorm_forward.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float,
      eps_placement: str = "inside") -> tuple[torch.Tensor, torch.Tensor]:
    check_rmsnorm_arguments(x, weight)
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return x.new_empty(x.shape), x.new_empty(rows, dtype=torch.float32)


@torch.library.custom_op("ctclip_kernels::rmsnorm_backward", mutates_args=())
def rmsnorm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, r: torch.Tensor,
                     eps_placement: str = "inside") -> tuple[torch.Tensor, torch.Tensor]:
    """(dx in x's shape and dtype, dw in weight's dtype) from the forward's saved r."""
    n_cols = x.shape[-1]
    x2 = as_rows(x, n_cols)
    dx = output_buffer(x2.shape, x.dtype, x.device, INTERPRETED)
    dw = launch_backward(as_rows(dy, n_cols), x2, weight, r, eps_placement, dx)
    return dx.to(x.dtype).view(x.shape), dw


@rmsnorm_backward.register_fake
def _(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, r: torch.Tensor,
      eps_placement: str = "inside") -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape), torch.empty_like(weight)


class TritonRMSNormFunction(torch.autograd.Function):
    """Autograd wrapper: saves x, w and the fp32 per-row r; see the module docstring for the math."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float,
                eps_placement: str) -> torch.Tensor:
        # Save the unit-stride row view the kernel reads, so the backward never copies x a second time.
        x_rows = as_rows(x, x.shape[-1])
        y, r = rmsnorm_forward(x_rows, weight, eps, eps_placement)
        ctx.save_for_backward(x_rows, weight, r)
        ctx.eps_placement = eps_placement
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x_rows, weight, r = ctx.saved_tensors
        dx, dw = rmsnorm_backward(dy, x_rows, weight, r, ctx.eps_placement)
        dx = dx.view(dy.shape) if ctx.needs_input_grad[0] else None
        return dx, (dw if ctx.needs_input_grad[1] else None), None, None


def triton_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                   eps_placement: str = "inside") -> torch.Tensor:
    """Functional RMSNorm over the last dimension; differentiable in x and weight."""
    if eps_placement not in EPS_PLACEMENTS:
        raise ValueError(f"unknown eps_placement {eps_placement!r}; valid: {', '.join(EPS_PLACEMENTS)}")
    return TritonRMSNormFunction.apply(x, weight, eps, eps_placement)


class TritonRMSNorm(nn.Module):
    """Drop-in for `torch.nn.RMSNorm(dim, eps)`: same `weight` parameter, so state dicts interchange.

    `eps_placement="inside"` (default) is nn.RMSNorm's y = x / sqrt(mean(x^2) + eps) * w;
    `"outside"` is the seed project's y = x * w / (sqrt(mean(x^2)) + eps).
    The output has x's dtype; arithmetic is fp32 inside the kernel for every input dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-6, eps_placement: str = "inside",
                 device: "torch.device | str | None" = None, dtype: "torch.dtype | None" = None) -> None:
        super().__init__()
        if eps_placement not in EPS_PLACEMENTS:
            raise ValueError(f"unknown eps_placement {eps_placement!r}; valid: {', '.join(EPS_PLACEMENTS)}")
        if dim > MAX_ROW_WIDTH:
            raise ValueError(f"TritonRMSNorm handles rows up to {MAX_ROW_WIDTH} wide, got {dim}")
        self.normalized_shape = (dim,)
        self.eps = eps
        self.eps_placement = eps_placement
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.normalized_shape[0]:
            raise ValueError(f"TritonRMSNorm({self.normalized_shape[0]}) got input of shape {tuple(x.shape)}")
        return TritonRMSNormFunction.apply(x, self.weight, self.eps, self.eps_placement)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, eps_placement={self.eps_placement!r}"
