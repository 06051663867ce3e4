"""The VQ's nearest-code search as one Triton kernel: argmax of x @ codes^T, never materialised.

CT-CLIP's cosine VQ (models/vq.py) scores every token against every code and keeps the argmax:

    index[m] = argmax_k  sum_d x[m, d] * codes[k, d]      (x and codes unit-norm: cosine similarity)

At paper size, batch 4, that is a 55,296 x 8,192 x 512 fp32 matmul whose (tokens x codes) output is read
once by the argmax and thrown away. Upstream runs it in full fp32 with autocast off: on an H100 that is
the non-tensor-core fp32 rate (67 TFLOP/s), 7 ms a step, 16 % of the fastest candidate's roofline bound
(bench.roofline). This kernel computes the same argmax as a GEMM whose epilogue is a running row
argmax: each program owns BLOCK_M tokens, walks the codebook a BLOCK_N tile at a time, accumulates the
tile's scores over the feature dimension in fp32 with `tl.dot`, and keeps the best score and its index.
The scores never leave registers, so the only traffic is the two inputs and the indices.

`input_precision` is what `tl.dot` reduces its inputs to: "tf32" (tensor cores, 8x the fp32 rate on
Hopper; inputs keep 10 mantissa bits, products accumulate in fp32) or "ieee" (exact fp32 products).
For unit vectors a tf32 score is within 2 * 2^-10 (2e-3) of the exact one even if the hardware
truncates rather than rounds (each input's relative error is below 2^-10, and sum_d |x_d c_d| <= 1 by
Cauchy-Schwarz), so the code it picks scores within 4e-3 of the best one at worst; codes closer than
that are ties at tf32's resolution. Errors of random sign add up far less: typically ~1e-5. The Triton
interpreter ignores input_precision (numpy multiplies in fp32), so CPU tests check the argmax itself.

Ties go to the lowest index, as torch.argmax: within a tile tl.argmax keeps the first maximum, and a
later tile replaces the running best only when strictly greater.

Trip counts are constexprs (the codebook's tiles, the feature dimension's tiles), as the interpreter with
numpy >= 2.4 cannot loop to a runtime bound; a model has one codebook shape, so one compilation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from kernels._launch import as_rows, check_float, interpreting, next_pow2

# Whether the kernel below was defined for the interpreter (read by kernels.supports).
INTERPRETED = interpreting()
INPUT_PRECISIONS = ("tf32", "ieee")
# tl.dot needs every block dimension >= 16.
MIN_BLOCK = 16


@triton.jit
def _nearest_code_kernel(X, CODES, INDEX, stride_x, n_rows, n_codes, dim,
                         CODE_TILES: tl.constexpr, DIM_TILES: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    # int64 row indices: rows * stride overflows int32 beyond 2^31 elements.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    best = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    best_index = tl.zeros([BLOCK_M], dtype=tl.int64)
    for code_tile in range(0, CODE_TILES):
        codes = code_tile * BLOCK_N + tl.arange(0, BLOCK_N)
        code_ok = codes < n_codes
        scores = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for dim_tile in range(0, DIM_TILES):
            d = dim_tile * BLOCK_D + tl.arange(0, BLOCK_D)
            d_ok = d < dim
            # Masked lanes load 0, so padding adds nothing to a score. Upcast on load: tl.dot needs one
            # dtype, and bf16 or fp16 inputs lose nothing in tf32.
            x = tl.load(X + rows[:, None] * stride_x + d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                        other=0.0).to(tl.float32)
            # The code tile transposed, (BLOCK_D, BLOCK_N), read straight from the (codes, dim) layout.
            c = tl.load(CODES + codes[None, :].to(tl.int64) * dim + d[:, None],
                        mask=code_ok[None, :] & d_ok[:, None], other=0.0).to(tl.float32)
            scores = tl.dot(x, c, scores, input_precision=INPUT_PRECISION)
        scores = tl.where(code_ok[None, :], scores, float("-inf"))
        tile_best = tl.max(scores, axis=1)
        tile_index = tl.argmax(scores, axis=1).to(tl.int64) + code_tile * BLOCK_N
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        best_index = tl.where(better, tile_index, best_index)
    tl.store(INDEX + rows, best_index, mask=row_ok)


def _blocks(n_rows: int, n_codes: int, dim: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps). On a GPU a GEMM tile sized for tf32 tensor cores (the
    Triton matmul tutorial's Hopper shape, 32 fp32 = 128 bytes along the reduction); in the interpreter,
    where every program instance costs about a millisecond, as few instances as the shapes allow."""
    if device.type == "cuda":
        block_m, block_n, block_d, warps = 128, 128, 32, 8
    else:
        block_m, block_n, block_d, warps = 64, 64, 64, 4
    return (max(MIN_BLOCK, min(block_m, next_pow2(n_rows))), max(MIN_BLOCK, min(block_n, next_pow2(n_codes))),
            max(MIN_BLOCK, min(block_d, next_pow2(dim))), warps)


def _check(x: torch.Tensor, codes: torch.Tensor, input_precision: str) -> None:
    check_float(x, "nearest_code input")
    check_float(codes, "nearest_code codebook")
    if codes.dim() != 2 or x.shape[-1] != codes.shape[-1]:
        raise ValueError(f"nearest_code needs x (..., D) and codes (K, D), got {tuple(x.shape)} and "
                         f"{tuple(codes.shape)}")
    if input_precision not in INPUT_PRECISIONS:
        raise ValueError(f"input_precision must be one of {INPUT_PRECISIONS}, got {input_precision!r}")


# A torch custom op (see kernels/rmsnorm.py for why). bench.roofline reads `input_precision` to cost
# the matmul at the tf32 or fp32 peak.
@torch.library.custom_op("ctclip_kernels::nearest_code", mutates_args=())
def nearest_code(x: torch.Tensor, codes: torch.Tensor, input_precision: str = "tf32") -> torch.Tensor:
    """int64 index (x's leading shape) of the row of `codes` with the largest inner product with each
    row of x; the lowest index on ties. No gradient: an argmax is piecewise constant."""
    _check(x, codes, input_precision)
    dim = x.shape[-1]
    rows = as_rows(x, dim)
    codes = codes.contiguous()
    n_rows, n_codes = rows.shape[0], codes.shape[0]
    index = torch.zeros(n_rows, dtype=torch.int64, device=x.device)
    if n_rows and n_codes:
        block_m, block_n, block_d, warps = _blocks(n_rows, n_codes, dim, x.device)
        _nearest_code_kernel[(triton.cdiv(n_rows, block_m),)](
            rows, codes, index, rows.stride(0), n_rows, n_codes, dim,
            CODE_TILES=triton.cdiv(n_codes, block_n), DIM_TILES=triton.cdiv(dim, block_d), BLOCK_M=block_m,
            BLOCK_N=block_n, BLOCK_D=block_d, INPUT_PRECISION=input_precision, num_warps=warps)
    return index.view(x.shape[:-1])


@nearest_code.register_fake
def _(x: torch.Tensor, codes: torch.Tensor, input_precision: str = "tf32") -> torch.Tensor:
    _check(x, codes, input_precision)
    return x.new_empty(x.shape[:-1], dtype=torch.int64)


@register_flop_formula(torch.ops.ctclip_kernels.nearest_code)
def _nearest_code_flops(x_shape, codes_shape, *args, **kwargs) -> int:
    """The matmul's multiply-adds, as FlopCounterMode counts `x @ codes.t()` for the PyTorch VQs, so
    FLOPs and MFU stay comparable across vq_impl."""
    rows = 1
    for size in x_shape[:-1]:
        rows *= size
    return 2 * rows * codes_shape[0] * codes_shape[1]
