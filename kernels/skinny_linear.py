"""CT-CLIP's latent projections for a batch of a few rows, reading the fp32 master weight in place.

The image projection maps the pooled tokens (B x 294,912 at paper size) to the 512-d latent with a
151 M-parameter Linear (no bias); B is the batch, a handful of rows. Every product with so few rows is
a stream over the weight: 2 B N K FLOPs for 4 N K bytes. Under autocast PyTorch first casts the fp32
weight to bf16 (reads 604 MB, writes 302 MB), multiplies with the copy and keeps it for backward
(0.28 GiB); backward reads the copy again for dx and writes the weight gradient in bf16, which the cast's
backward turns into fp32 (302 MB read, 604 MB written): about 2.7 GB of traffic and two weight-sized
transients. Here, with `round` the rounding to the operand dtype (autocast's: bf16 or fp16; none in fp32):

    forward   y  = round(x) @ round(W)^T              split over K, partial sums reduced by one `sum`
    backward  dx = round(round(dy) @ round(W))        in x's dtype
              dW = round(round(dy)^T @ round(x))      written once, in W's dtype
                                                      (one kernel, launched once for each)

The rounding is done in registers, exactly as autocast's casts round (round to nearest even; bf16 by
integer arithmetic, since the interpreter's own conversion truncates), and each product accumulates in
fp32 as cuBLAS does, so results equal autocast's up to the order of the fp32 sums; each output is
rounded to the operand dtype once, where autocast's matmul would store it. Traffic: the weight read
twice and its gradient written once (1.8 GB at paper size, batch 4); nothing weight-sized is kept or
allocated besides the gradient itself. fp32 operands multiply in IEEE fp32 (`input_precision="ieee"`),
as torch's default matmul precision does.

Trip counts are constexprs (the interpreter with numpy >= 2.4 cannot loop to a runtime bound); a model
has two projection shapes, so a few compilations. tl.dot needs every block dimension >= 16, so the
batch rows are one masked block of 16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from kernels._launch import check_float, input_precision, interpreting, next_pow2, output_buffer
from kernels.rmsnorm import SUM_ROUNDING, rounded

# Whether the kernels below were defined for the interpreter (read by kernels.supports).
INTERPRETED = interpreting()
OPERAND_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# An output the caller did not ask for (custom ops cannot return None).
_NOTHING = (0,)
MIN_BLOCK = 16  # tl.dot's smallest block dimension


@triton.jit
def _operand_tile(PTR, i, j, stride_i, stride_j, i_ok, j_ok, ROUNDING: tl.constexpr, HALF_DOT: tl.constexpr):
    # The tile PTR[i, j] (masked lanes 0) as a tl.dot operand: rounded in fp32 as autocast's cast rounds,
    # then (HALF_DOT) converted, exactly, to the operand dtype for the tensor cores. The interpreter's
    # tl.dot mis-multiplies bf16 operands, so there the rounded values stay fp32: a product of two
    # half-precision values is exact in fp32 either way.
    offsets = i[:, None].to(tl.int64) * stride_i + j[None, :].to(tl.int64) * stride_j
    x = tl.load(PTR + offsets, mask=i_ok[:, None] & j_ok[None, :], other=0.0).to(tl.float32)
    x = rounded(x, ROUNDING)
    if HALF_DOT:
        if ROUNDING == 1:
            x = x.to(tl.bfloat16)
        elif ROUNDING == 2:
            x = x.to(tl.float16)
    return x


@triton.jit
def _forward_kernel(X, W, PARTIAL, n_rows, n_out, n_in, stride_x, stride_w, K_TILES: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    ROUNDING: tl.constexpr, INPUT_PRECISION: tl.constexpr, HALF_DOT: tl.constexpr):
    # Program (m, n, split) sums K_TILES tiles of the reduction for one (BLOCK_M, BLOCK_N) output tile.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(2)
    row_ok = rows < n_rows
    out_ok = outs < n_out
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for tile in range(0, K_TILES):
        k = (split * K_TILES + tile).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = k < n_in
        x = _operand_tile(X, rows, k, stride_x, 1, row_ok, k_ok, ROUNDING, HALF_DOT)
        # The weight tile as laid out (outputs x inputs, inputs contiguous), transposed in registers.
        w = _operand_tile(W, outs, k, stride_w, 1, out_ok, k_ok, ROUNDING, HALF_DOT)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=INPUT_PRECISION)
    offsets = (split * n_rows + rows[:, None]).to(tl.int64) * n_out + outs[None, :]
    tl.store(PARTIAL + offsets, acc, mask=row_ok[:, None] & out_ok[None, :])


@triton.jit
def _gradient_kernel(A, B, OUT, n_p, n_r, n_in, stride_a_p, stride_a_r, stride_b, R_TILES: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                     ROUNDING: tl.constexpr, INPUT_PRECISION: tl.constexpr, HALF_DOT: tl.constexpr):
    # out[p, k] = sum_r A[p, r] B[r, k] over all of r, rounded once and written once. Both gradients:
    #   dx = dy @ W      p: batch rows, r: outputs (A = dy); each program reads its slab of W once
    #   dW = dy^T @ x    p: outputs, r: batch rows (A = dy read transposed, straight from its layout)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    k = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    p_ok = p < n_p
    k_ok = k < n_in
    acc = tl.zeros([BLOCK_P, BLOCK_K], dtype=tl.float32)
    for tile in range(0, R_TILES):
        r = tile * BLOCK_R + tl.arange(0, BLOCK_R)
        r_ok = r < n_r
        a = _operand_tile(A, p, r, stride_a_p, stride_a_r, p_ok, r_ok, ROUNDING, HALF_DOT)
        b = _operand_tile(B, r, k, stride_b, 1, r_ok, k_ok, ROUNDING, HALF_DOT)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    out = rounded(acc, ROUNDING).to(OUT.dtype.element_ty)
    tl.store(OUT + p[:, None].to(tl.int64) * n_in + k[None, :], out, mask=p_ok[:, None] & k_ok[None, :])


def _blocks(device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps). On a GPU a 64 x 128 fp32 weight tile (32 KB) per step of the
    loop, as many bytes in flight as a streaming kernel wants; in the interpreter, where every program
    instance costs about a millisecond, larger tiles and fewer instances."""
    return (64, 128, 4) if device.type == "cuda" else (64, 256, 4)


def target_programs(device: torch.device) -> int:
    """Programs the forward aims for: about four per SM on a GPU, a handful in the interpreter."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def split_k(k_tiles: int, output_tiles: int, programs: int) -> tuple[int, int]:
    """(K tiles per program, programs along K) so that the forward's grid has about `programs` programs
    (the output has only a few tiles). The tiles per program are a constexpr: one value per weight
    shape and GPU."""
    per_program = triton.cdiv(k_tiles, max(1, programs // max(1, output_tiles)))
    return per_program, triton.cdiv(k_tiles, per_program)


def _check(x: torch.Tensor, weight: torch.Tensor, operand_dtype: torch.dtype) -> None:
    check_float(x, "skinny linear input")
    check_float(weight, "skinny linear weight")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"skinny linear needs x (B, K) and weight (N, K), got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if operand_dtype not in OPERAND_DTYPES:
        raise ValueError(f"operand dtype must be one of {OPERAND_DTYPES}, got {operand_dtype}")


def _unit_stride_rows(t: torch.Tensor) -> torch.Tensor:
    # The kernels take a row stride; only a column stride other than 1 (a transpose) costs a copy.
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _launch_config(device: torch.device, n_out: int, operand_dtype: torch.dtype
                   ) -> tuple[int, int, int, dict]:
    """(block of batch rows, block of outputs, block of inputs, the constexprs and warps every kernel
    here takes) for an output of width n_out."""
    block_n, block_k, warps = _blocks(device)
    return (MIN_BLOCK, max(MIN_BLOCK, min(block_n, next_pow2(n_out))), block_k,
            dict(ROUNDING=SUM_ROUNDING[operand_dtype], INPUT_PRECISION=input_precision(operand_dtype),
                 HALF_DOT=not INTERPRETED, num_warps=warps))


# Each launch is a torch custom op (see kernels/rmsnorm.py for why). bench.roofline costs the matmul at
# the peak of `operand_dtype`.
@torch.library.custom_op("ctclip_kernels::skinny_linear_forward", mutates_args=())
def skinny_linear_forward(x: torch.Tensor, weight: torch.Tensor, operand_dtype: torch.dtype) -> torch.Tensor:
    """(B, N) in `operand_dtype`: x (B, K) @ weight (N, K)^T with both operands rounded to it."""
    _check(x, weight, operand_dtype)
    x, weight = _unit_stride_rows(x), _unit_stride_rows(weight)
    (n_rows, n_in), n_out = x.shape, weight.shape[0]
    if not (n_rows and n_out and n_in):
        return x.new_zeros((n_rows, n_out), dtype=operand_dtype)
    block_m, block_n, block_k, flags = _launch_config(x.device, n_out, operand_dtype)
    grid_m, grid_n = triton.cdiv(n_rows, block_m), triton.cdiv(n_out, block_n)
    k_tiles, splits = split_k(triton.cdiv(n_in, block_k), grid_m * grid_n, target_programs(x.device))
    partial = torch.empty((splits, n_rows, n_out), dtype=torch.float32, device=x.device)
    _forward_kernel[(grid_m, grid_n, splits)](x, weight, partial, n_rows, n_out, n_in, x.stride(0),
                                              weight.stride(0), K_TILES=k_tiles, BLOCK_M=block_m,
                                              BLOCK_N=block_n, BLOCK_K=block_k, **flags)
    # Second stage of the split-K reduction: a fixed-shape sum (bitwise reproducible), rounded once.
    return partial.sum(0).to(operand_dtype)


@skinny_linear_forward.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, operand_dtype: torch.dtype) -> torch.Tensor:
    _check(x, weight, operand_dtype)
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=operand_dtype)


@torch.library.custom_op("ctclip_kernels::skinny_linear_backward", mutates_args=())
def skinny_linear_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                           operand_dtype: torch.dtype, want_dx: bool, want_dweight: bool
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx in x's dtype, dweight in weight's dtype), each empty unless asked for, both rounded to
    `operand_dtype` as autocast's bf16 matmuls store them before their casts' backward."""
    _check(x, weight, operand_dtype)
    dy, x, weight = _unit_stride_rows(dy), _unit_stride_rows(x), _unit_stride_rows(weight)
    (n_rows, n_in), n_out = x.shape, weight.shape[0]
    block_m, block_n, block_k, flags = _launch_config(x.device, n_out, operand_dtype)

    def gradient(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, n_p: int, n_r: int, a_strides: tuple,
                 block_p: int, block_r: int) -> None:
        if out.numel():
            _gradient_kernel[(triton.cdiv(n_p, block_p), triton.cdiv(n_in, block_k))](
                a, b, out, n_p, n_r, n_in, *a_strides, b.stride(0), R_TILES=max(1, triton.cdiv(n_r, block_r)),
                BLOCK_P=block_p, BLOCK_R=block_r, BLOCK_K=block_k, **flags)

    dx, dweight = x.new_empty(_NOTHING), weight.new_empty(_NOTHING)
    if want_dx:  # dy (rows, outputs) @ W (outputs, inputs)
        dx = output_buffer(tuple(x.shape), x.dtype, x.device, INTERPRETED)
        gradient(dy, weight, dx, n_rows, n_out, (dy.stride(0), 1), block_m, block_n)
    if want_dweight:  # dy^T (outputs, rows) @ x (rows, inputs)
        dweight = output_buffer(tuple(weight.shape), weight.dtype, weight.device, INTERPRETED)
        gradient(dy, x, dweight, n_out, n_rows, (1, dy.stride(0)), block_n, block_m)
    return dx.to(x.dtype), dweight.to(weight.dtype)


@skinny_linear_backward.register_fake
def _(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, operand_dtype: torch.dtype, want_dx: bool,
      want_dweight: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return (x.new_empty(x.shape if want_dx else _NOTHING),
            weight.new_empty(weight.shape if want_dweight else _NOTHING))


@register_flop_formula(torch.ops.ctclip_kernels.skinny_linear_forward)
def _forward_flops(x_shape, weight_shape, *args, **kwargs) -> int:
    """As FlopCounterMode counts the Linear's mm, so FLOPs and MFU stay comparable across projections."""
    return 2 * x_shape[0] * x_shape[1] * weight_shape[0]


@register_flop_formula(torch.ops.ctclip_kernels.skinny_linear_backward)
def _backward_flops(dy_shape, x_shape, weight_shape, operand_dtype, want_dx, want_dweight, *args,
                    **kwargs) -> int:
    return (int(want_dx) + int(want_dweight)) * 2 * x_shape[0] * x_shape[1] * weight_shape[0]


class TritonSkinnyLinearFunction(torch.autograd.Function):
    """Autograd wrapper: saves x and the weight themselves (a parameter; no copy)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, operand_dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.operand_dtype = operand_dtype
        return skinny_linear_forward(x, weight, operand_dtype)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight = ctx.saved_tensors
        wants = ctx.needs_input_grad
        dx, dweight = skinny_linear_backward(dy, x, weight, ctx.operand_dtype, wants[0], wants[1])
        return dx if wants[0] else None, dweight if wants[1] else None, None


def triton_skinny_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, weight)` (no bias) for x (..., K) with few rows: in autocast's dtype when autocast
    is on for x's device, as autocast's Linear computes it, else in the promoted dtype of x and weight."""
    device = x.device.type
    operand_dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                     else torch.promote_types(x.dtype, weight.dtype))
    rows = x.reshape(-1, x.shape[-1])
    y = TritonSkinnyLinearFunction.apply(rows, weight, operand_dtype)
    return y.view(*x.shape[:-1], weight.shape[0])
