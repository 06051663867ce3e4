"""CT-CLIP's gated feed-forward with the gate computed in the epilogues of its matmuls, in Triton.

The feed-forward after its norm is  gu = x @ W_in^T  ([rows, 2F]),  h = gate(gu)  ([rows, F]),
out = h @ W_out^T, with gate SwiGLU or GEGLU on the halves of gu (kernels/swiglu.py states the math).
Unfused, the gate is a pass of its own each way: the forward writes gu (2F wide) and reads it back to
write h; the backward writes dh = dout @ W_out and reads it back with gu to write dgu. Here

    forward   one kernel: both halves of gu for a tile of rows and columns of F (two accumulators),
              stored, then h from them in registers, stored        (saves reading gu once)
    backward  one kernel: dh for a tile in registers, then dgu from dh and the saved gu, stored
                                                                    (saves writing and reading dh)

and the other three products stay cuBLAS matmuls: out = h @ W_out^T, dW_out = dout^T @ h,
dx = dgu @ W_in, dW_in = dgu^T @ x. At CT-CLIP's paper size (55,296 rows, F = 1365) that is 604 MB less
traffic per layer per step. What is saved for backward, and when it is freed, is as in the unfused
layer (x, gu, h and the operand copies of the weights), so peak memory does not change.

Under activation checkpointing the down projection's matmul runs again in the backward, where the
unfused layer's does not: checkpoint's early stop ends a recomputation once the last tensor to be saved
has been packed, and an autograd.Function packs what it saves only after its forward has run.

The numerics are the unfused layer's under autocast: operands in the operand dtype (bf16 or fp16,
or fp32 without autocast), products accumulated in fp32, gu and dh rounded to the operand dtype as the
matmuls would store them before the gate reads them, the gate in fp32 on those rounded values, h and
dgu rounded once. Only the order of the fp32 sums differs from cuBLAS.

Trip counts over the reduction are constexprs (the interpreter with numpy >= 2.4 cannot loop to a
runtime bound); a model has one or two (dim, F) pairs. Block sizes are fixed, not autotuned: 128 rows x
64 columns of F (of each half, forward), 64-wide reduction steps, 8 warps, 3 stages. With the alignment
real launches have (16-byte-aligned operands, a reduction stride of 512), ptxas fits them in registers
on sm_90 without spilling (196 and 198 registers for SwiGLU; GEGLU's backward spills 44 bytes), where
128 x 128 tiles spill about 1 KB per thread in both kernels (tests/kernels/test_compile_for_gpu.py).
The operands are block pointers: a base, a shape and offsets in scalar registers, with the borders
zero-filled. tl.dot needs every block dimension >= 16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from kernels._launch import as_rows, check_float, input_precision, interpreting, next_pow2, output_buffer
from kernels.rmsnorm import SUM_ROUNDING, rounded
from kernels.swiglu import ACTIVATIONS, gate_backward, gate_forward

# Whether the kernels below were defined for the interpreter (read by kernels.supports).
INTERPRETED = interpreting()
MIN_BLOCK = 16  # tl.dot's smallest block dimension


@triton.jit
def _block(PTR, n_rows, n_cols, stride, row, col, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # The [BLOCK_R, BLOCK_C] block at (row, col) of a row-major [n_rows, n_cols] matrix with unit column
    # stride. A block pointer is a base, a shape and offsets: a few scalar registers, where a tensor of
    # 64-bit pointers would take two registers per element and spill.
    return tl.make_block_ptr(PTR, shape=(n_rows, n_cols), strides=(stride, 1), offsets=(row, col),
                             block_shape=(BLOCK_R, BLOCK_C), order=(1, 0))


@triton.jit
def _dot_operand(block, HALF_DOT: tl.constexpr):
    # A block, zero outside the matrix, already in the operand dtype. The interpreter's tl.dot
    # mis-multiplies bf16 operands, so there they go in as fp32 (each product is exact in fp32 anyway).
    tile = tl.load(block, boundary_check=(0, 1), padding_option="zero")
    if not HALF_DOT:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _gated_up_kernel(X, W1, W2, GU, H, n_rows, n_cols, n_in, stride_x, stride_w, stride_gu, stride_h,
                     K_TILES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, GEGLU: tl.constexpr, ROUNDING: tl.constexpr,
                     INPUT_PRECISION: tl.constexpr, HALF_DOT: tl.constexpr):
    # Program (n, m): columns n of both halves for rows m. Column tiles vary fastest, so the programs
    # running together share their rows of X (read from L2, not DRAM), and all of W stays in L2.
    row, col = tl.program_id(1) * BLOCK_M, tl.program_id(0) * BLOCK_N
    x_block = _block(X, n_rows, n_in, stride_x, row, 0, BLOCK_M, BLOCK_K)
    # W1, W2: the halves of W [2F, K] as nn.Linear lays it out (output column c is row c), transposed in
    # registers. Two pointers from the host, since n_cols may be specialised to a constexpr 1.
    w1_block = _block(W1, n_cols, n_in, stride_w, col, 0, BLOCK_N, BLOCK_K)
    w2_block = _block(W2, n_cols, n_in, stride_w, col, 0, BLOCK_N, BLOCK_K)
    acc1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for _ in range(0, K_TILES):
        x = _dot_operand(x_block, HALF_DOT)
        acc1 = tl.dot(x, tl.trans(_dot_operand(w1_block, HALF_DOT)), acc1, input_precision=INPUT_PRECISION)
        acc2 = tl.dot(x, tl.trans(_dot_operand(w2_block, HALF_DOT)), acc2, input_precision=INPUT_PRECISION)
        x_block = tl.advance(x_block, (0, BLOCK_K))
        w1_block = tl.advance(w1_block, (0, BLOCK_K))
        w2_block = tl.advance(w2_block, (0, BLOCK_K))
    # gu as the unfused matmul would store it, and the gate computed from exactly those values.
    x1 = rounded(acc1, ROUNDING)
    x2 = rounded(acc2, ROUNDING)
    tl.store(_block(GU, n_rows, n_cols, stride_gu, row, col, BLOCK_M, BLOCK_N), x1.to(GU.dtype.element_ty),
             boundary_check=(0, 1))
    tl.store(_block(GU + n_cols, n_rows, n_cols, stride_gu, row, col, BLOCK_M, BLOCK_N),
             x2.to(GU.dtype.element_ty), boundary_check=(0, 1))
    h = gate_forward(x1, x2, GEGLU)
    tl.store(_block(H, n_rows, n_cols, stride_h, row, col, BLOCK_M, BLOCK_N), h.to(H.dtype.element_ty),
             boundary_check=(0, 1))


@triton.jit
def _gated_down_grad_kernel(DOUT, W, GU, DGU, n_rows, n_cols, n_out, stride_dout, stride_w, stride_gu,
                            stride_dgu, K_TILES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, GEGLU: tl.constexpr, ROUNDING: tl.constexpr,
                            INPUT_PRECISION: tl.constexpr, HALF_DOT: tl.constexpr):
    # dh[rows, cols] = dout[rows, :] @ W_out[:, cols] (W_out is [dim, F], F contiguous), then dgu.
    row, col = tl.program_id(1) * BLOCK_M, tl.program_id(0) * BLOCK_N
    dout_block = _block(DOUT, n_rows, n_out, stride_dout, row, 0, BLOCK_M, BLOCK_K)
    w_block = _block(W, n_out, n_cols, stride_w, 0, col, BLOCK_K, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for _ in range(0, K_TILES):
        acc = tl.dot(_dot_operand(dout_block, HALF_DOT), _dot_operand(w_block, HALF_DOT), acc,
                     input_precision=INPUT_PRECISION)
        dout_block = tl.advance(dout_block, (0, BLOCK_K))
        w_block = tl.advance(w_block, (BLOCK_K, 0))
    dh = rounded(acc, ROUNDING)  # as the unfused matmul would store dh
    x1 = tl.load(_block(GU, n_rows, n_cols, stride_gu, row, col, BLOCK_M, BLOCK_N), boundary_check=(0, 1),
                 padding_option="zero").to(tl.float32)
    x2 = tl.load(_block(GU + n_cols, n_rows, n_cols, stride_gu, row, col, BLOCK_M, BLOCK_N),
                 boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    dx1, dx2 = gate_backward(dh, x1, x2, GEGLU)
    tl.store(_block(DGU, n_rows, n_cols, stride_dgu, row, col, BLOCK_M, BLOCK_N), dx1.to(DGU.dtype.element_ty),
             boundary_check=(0, 1))
    tl.store(_block(DGU + n_cols, n_rows, n_cols, stride_dgu, row, col, BLOCK_M, BLOCK_N),
             dx2.to(DGU.dtype.element_ty), boundary_check=(0, 1))


def blocks(n_rows: int, n_cols: int, n_reduce: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): the module docstring's tiles on a GPU, shrunk to the
    problem (never below tl.dot's 16); in the interpreter, where each program instance costs about a
    millisecond, 64-row tiles whatever the device would take."""
    block_m = 128 if device.type == "cuda" else 64
    fit = lambda block, n: max(MIN_BLOCK, min(block, next_pow2(n)))  # noqa: E731
    return fit(block_m, n_rows), fit(64, n_cols), fit(64, n_reduce), 8


def _flags(operand_dtype: torch.dtype, activation: str) -> dict:
    return dict(GEGLU=activation == "geglu", ROUNDING=SUM_ROUNDING[operand_dtype],
                INPUT_PRECISION=input_precision(operand_dtype), HALF_DOT=not INTERPRETED)


def _check(x: torch.Tensor, weight: torch.Tensor, activation: str, what: str) -> None:
    check_float(x, f"gated linear {what}")
    if weight.dtype != x.dtype:
        raise TypeError(f"gated linear operands must share a dtype, got {x.dtype} and {weight.dtype}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"gated linear needs 2-D operands, got {tuple(x.shape)} and {tuple(weight.shape)}")


# Each launch is a torch custom op (see kernels/rmsnorm.py for why). bench.roofline costs the matmul at
# the peak of `operand_dtype`.
@torch.library.custom_op("ctclip_kernels::gated_up_forward", mutates_args=())
def gated_up_forward(x: torch.Tensor, weight: torch.Tensor, activation: str, operand_dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(gu = x @ weight^T [rows, 2F], h = gate(gu) [rows, F]) for x [rows, K] and weight [2F, K], both in
    `operand_dtype` (the argument states it for the roofline)."""
    _check(x, weight, activation, "input")
    if x.shape[1] != weight.shape[1] or weight.shape[0] % 2:
        raise ValueError(f"gated linear needs x (N, K) and weight (2F, K), got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    x, weight = as_rows(x, x.shape[1]), as_rows(weight, weight.shape[1])
    (n_rows, n_in), n_cols = x.shape, weight.shape[0] // 2
    gu = output_buffer((n_rows, 2 * n_cols), x.dtype, x.device, INTERPRETED)
    h = output_buffer((n_rows, n_cols), x.dtype, x.device, INTERPRETED)
    if n_rows and n_cols:
        block_m, block_n, block_k, warps = blocks(n_rows, n_cols, n_in, x.device)
        _gated_up_kernel[(triton.cdiv(n_cols, block_n), triton.cdiv(n_rows, block_m))](
            x, weight, weight[n_cols:], gu, h, n_rows, n_cols, n_in, x.stride(0), weight.stride(0), gu.stride(0),
            h.stride(0),
            K_TILES=triton.cdiv(n_in, block_k), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
            num_warps=warps, num_stages=3, **_flags(operand_dtype, activation))
    return gu.to(x.dtype), h.to(x.dtype)


@gated_up_forward.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, activation: str, operand_dtype: torch.dtype
      ) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, weight, activation, "input")
    return x.new_empty((x.shape[0], weight.shape[0])), x.new_empty((x.shape[0], weight.shape[0] // 2))


@torch.library.custom_op("ctclip_kernels::gated_down_grad", mutates_args=())
def gated_down_grad(dout: torch.Tensor, weight: torch.Tensor, gu: torch.Tensor, activation: str,
                    operand_dtype: torch.dtype) -> torch.Tensor:
    """dgu [rows, 2F] from dout [rows, D], the down projection's weight [D, F] and the saved gu."""
    _check(dout, weight, activation, "output gradient")
    if gu.shape != (dout.shape[0], 2 * weight.shape[1]) or dout.shape[1] != weight.shape[0]:
        raise ValueError(f"gated linear backward needs dout (N, D), weight (D, F) and gu (N, 2F), got "
                         f"{tuple(dout.shape)}, {tuple(weight.shape)} and {tuple(gu.shape)}")
    dout, weight, gu = as_rows(dout, dout.shape[1]), as_rows(weight, weight.shape[1]), as_rows(gu, gu.shape[1])
    (n_rows, n_out), n_cols = dout.shape, weight.shape[1]
    dgu = output_buffer((n_rows, 2 * n_cols), gu.dtype, gu.device, INTERPRETED)
    if n_rows and n_cols:
        block_m, block_n, block_k, warps = blocks(n_rows, n_cols, n_out, dout.device)
        _gated_down_grad_kernel[(triton.cdiv(n_cols, block_n), triton.cdiv(n_rows, block_m))](
            dout, weight, gu, dgu, n_rows, n_cols, n_out, dout.stride(0), weight.stride(0), gu.stride(0),
            dgu.stride(0), K_TILES=triton.cdiv(n_out, block_k), BLOCK_M=block_m, BLOCK_N=block_n,
            BLOCK_K=block_k, num_warps=warps, num_stages=3, **_flags(operand_dtype, activation))
    return dgu.to(gu.dtype)


@gated_down_grad.register_fake
def _(dout: torch.Tensor, weight: torch.Tensor, gu: torch.Tensor, activation: str,
      operand_dtype: torch.dtype) -> torch.Tensor:
    return gu.new_empty(gu.shape)


@register_flop_formula(torch.ops.ctclip_kernels.gated_up_forward)
def _up_flops(x_shape, weight_shape, *args, **kwargs) -> int:
    """The projection's matmul, as FlopCounterMode counts the unfused Linear (the gate is not a FLOP
    there either), so MFU stays comparable across the `mlp` switch."""
    return 2 * x_shape[0] * x_shape[1] * weight_shape[0]


@register_flop_formula(torch.ops.ctclip_kernels.gated_down_grad)
def _down_grad_flops(dout_shape, weight_shape, *args, **kwargs) -> int:
    return 2 * dout_shape[0] * dout_shape[1] * weight_shape[1]


class GatedUpFunction(torch.autograd.Function):
    """x [rows, dim] -> (gu, h): the up projection and the gate. h is not differentiable here: its
    gradient never exists, because GatedDownFunction differentiates the gate in its own kernel and hands
    this node the gradient of gu."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_in: torch.Tensor, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
        gu, h = gated_up_forward(x, w_in, activation, x.dtype)
        ctx.save_for_backward(x, w_in)
        ctx.mark_non_differentiable(h)
        ctx.set_materialize_grads(False)  # else autograd writes a [rows, F] tensor of zeros for d_h
        return gu, h

    @staticmethod
    def backward(ctx, d_gu: "torch.Tensor | None", d_h: None):
        x, w_in = ctx.saved_tensors
        if d_gu is None:  # gu unused (h alone can be consumed, without a gradient)
            return None, None, None
        wants_x, wants_w_in = ctx.needs_input_grad[:2]
        return (torch.mm(d_gu, w_in) if wants_x else None, torch.mm(d_gu.t(), x) if wants_w_in else None, None)


class GatedDownFunction(torch.autograd.Function):
    """(h, gu) -> out = h @ w_out^T, whose backward returns the gradient of gu (through the gate) and
    none for h. Two nodes rather than one so that gu and h are freed, as in the unfused layer, before the
    up projection's gradients are computed: the peak is the unfused layer's."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, gu: torch.Tensor, w_out: torch.Tensor, activation: str) -> torch.Tensor:
        ctx.save_for_backward(h, gu, w_out)
        ctx.activation = activation
        return torch.mm(h, w_out.t())

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        h, gu, w_out = ctx.saved_tensors
        dout = dout.to(h.dtype)
        d_gu = gated_down_grad(dout, w_out, gu, ctx.activation, h.dtype)
        return None, d_gu, torch.mm(dout.t(), h) if ctx.needs_input_grad[2] else None, None


def triton_gated_mlp(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, activation: str) -> torch.Tensor:
    """`F.linear(gate(F.linear(x, w_in)), w_out)` for x [..., dim], w_in [2F, dim], w_out [dim, F] (no
    biases), `gate` one of ACTIVATIONS: in autocast's dtype when autocast is on for x's device, as the
    unfused layer computes it under autocast, else in the promoted dtype of x and the weights."""
    device = x.device.type
    operand_dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                     else torch.promote_types(x.dtype, w_in.dtype))
    rows = x.reshape(-1, x.shape[-1]).to(operand_dtype)
    gu, h = GatedUpFunction.apply(rows, w_in.to(operand_dtype), activation)
    out = GatedDownFunction.apply(h, gu, w_out.to(operand_dtype), activation)
    return out.view(*x.shape[:-1], w_out.shape[0])
