"""The PEG's causal depthwise 3x3x3 convolution on the token stream, forward and backward, in Triton.

CT-CLIP's position-encoding generator (models/peg.py) views the (tokens, C) stream as a (B, C, T, H, W)
grid, pads it (two slabs before on the causal axis T, one on each side of H and W) and runs a depthwise
Conv3d (one 3x3x3 filter and a bias per channel). With `o = (kt - 2, kh - 1, kw - 1)` the offset of tap
k = (kt, kh, kw) and x taken as 0 outside the grid:

    out[b, i, c]  = bias[c] + sum_k w[c, k] * x[b, i + o(k), c]
    dx[b, j, c]   = sum_k w[c, k] * dout[b, j - o(k), c]            (dout taken as 0 outside the grid)
    dw[c, k]      = sum_{b, i} dout[b, i, c] * x[b, i + o(k), c],    dbias[c] = sum_{b, i} dout[b, i, c]

On a GPU the eager path is five or more passes over the stream per direction: the pad writes a
padded fp32 copy, autocast casts it to bf16, the convolution reads it through a channels-first
permutation of a channels-last tensor, and PyTorch has no cuDNN kernel for 5-D depthwise convolution,
so it runs its own `conv_depthwise3d`, whose backward is known to be slow (pytorch/pytorch#37406).
Here the kernels read the stream where it lies ((B, T, H, W, C) with C unit-stride; any strides for the
other four, so the temporal stage's corrected layout is a view too): the forward reads x once and writes
the output in the compute dtype, and, under autocast, the bf16 copy of x that the backward needs (the
unfused path saves the padded bf16 copy instead); the backward reads dout and x once each and writes
dx plus per-tile partial sums of dw and dbias, reduced by one fixed-shape `sum` (deterministic).

Rounding follows the unfused path under autocast: x, w and bias rounded to the autocast dtype before
the products (which are exact in fp32 for 16-bit inputs), fp32 accumulation, the output in the autocast
dtype; in backward dx and dw rounded to it before they are upcast to the fp32 stream and parameters.
Only the order of the fp32 sums differs.

Prior art: PyTorch's conv_depthwise3d (DepthwiseConv3d.cu) and the channels-last depthwise kernels of
causal-conv1d; the code here is written afresh.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from kernels._launch import check_float, interpreting, next_pow2, output_buffer_like
from kernels.rmsnorm import SUM_ROUNDING, rounded

# Whether the kernels below were defined for the interpreter (read by kernels.supports).
INTERPRETED = interpreting()
TAPS = 27
# An output the caller did not ask for (custom ops cannot return None).
_NOTHING = (0,)


@triton.jit
def _grid_position(p, size0, size1, size2):
    # Flat position -> (batch, causal index, row, column), row-major over (B, G0, G1, G2).
    i2 = p % size2
    q = p // size2
    i1 = q % size1
    q = q // size1
    return q // size0, q % size0, i1, i2


@triton.jit
def _input_at(x_base, branch_base, offset_x, offset_branch, mask, ADD_BRANCH: tl.constexpr,
              SUM_ROUNDING: tl.constexpr):
    # The convolution's input at some positions: x, or (kernels/peg_add_conv.py) x + branch rounded to
    # the stream's dtype as the unfused add stores it.
    x = tl.load(x_base + offset_x, mask=mask, other=0.0).to(tl.float32)
    if ADD_BRANCH:
        x = rounded(x + tl.load(branch_base + offset_branch, mask=mask, other=0.0).to(tl.float32), SUM_ROUNDING)
    return x


@triton.jit
def _peg_fwd_kernel(X, W, BIAS, OUT, X_COPY, BRANCH, SUM, n_positions, channels, size0, size1, size2,
                    sx_b, sx_0, sx_1, sx_2, so_b, so_0, so_1, so_2, sbr_b, sbr_0, sbr_1, sbr_2,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ROUNDING: tl.constexpr,
                    WRITE_X_COPY: tl.constexpr, ADD_BRANCH: tl.constexpr, SUM_ROUNDING: tl.constexpr):
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < n_positions
    c_ok = c < channels
    b, i0, i1, i2 = _grid_position(p, size0, size1, size2)
    x_base = X + b[:, None] * sx_b + c[None, :]
    branch_base = BRANCH + b[:, None] * sbr_b + c[None, :]
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for k0 in range(3):  # a loop, not unrolled: a third of the code for the compiler
        j0 = i0 + (k0 - 2)  # causal: j0 <= i0 < size0
        for k1 in tl.static_range(3):
            j1 = i1 + (k1 - 1)
            for k2 in tl.static_range(3):
                j2 = i2 + (k2 - 1)
                ok = p_ok & (j0 >= 0) & (j1 >= 0) & (j1 < size1) & (j2 >= 0) & (j2 < size2)
                x = _input_at(x_base, branch_base, (j0 * sx_0 + j1 * sx_1 + j2 * sx_2)[:, None],
                              (j0 * sbr_0 + j1 * sbr_1 + j2 * sbr_2)[:, None], ok[:, None] & c_ok[None, :],
                              ADD_BRANCH, SUM_ROUNDING)
                w = tl.load(W + c * 27 + (k0 * 9 + k1 * 3 + k2), mask=c_ok, other=0.0).to(tl.float32)
                acc += rounded(x, ROUNDING) * rounded(w, ROUNDING)[None, :]
    acc += rounded(tl.load(BIAS + c, mask=c_ok, other=0.0).to(tl.float32), ROUNDING)[None, :]
    mask = p_ok[:, None] & c_ok[None, :]
    out_offsets = (b * so_b + i0 * so_0 + i1 * so_1 + i2 * so_2)[:, None] + c[None, :]
    tl.store(OUT + out_offsets, acc.to(OUT.dtype.element_ty), mask=mask)
    if WRITE_X_COPY or ADD_BRANCH:
        x = _input_at(x_base, branch_base, (i0 * sx_0 + i1 * sx_1 + i2 * sx_2)[:, None],
                      (i0 * sbr_0 + i1 * sbr_1 + i2 * sbr_2)[:, None], mask, ADD_BRANCH, SUM_ROUNDING)
        if ADD_BRANCH:  # the new residual stream, laid out as the output
            tl.store(SUM + out_offsets, x.to(SUM.dtype.element_ty), mask=mask)
        if WRITE_X_COPY:  # x in the compute dtype, laid out as the output, for the backward
            tl.store(X_COPY + out_offsets, rounded(x, ROUNDING).to(X_COPY.dtype.element_ty), mask=mask)


@triton.jit
def _peg_bwd_kernel(DOUT, X, W, DX, PARTIAL, D_SUM, D_BRANCH, n_positions, channels, size0, size1, size2,
                    sd_b, sd_0, sd_1, sd_2, sx_b, sx_0, sx_1, sx_2, sdx_b, sdx_0, sdx_1, sdx_2,
                    sds_b, sds_0, sds_1, sds_2, sdb_b, sdb_0, sdb_1, sdb_2,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, X_ROUNDING: tl.constexpr,
                    ROUNDING: tl.constexpr, ADD_D_SUM: tl.constexpr, WRITE_D_BRANCH: tl.constexpr):
    tile = tl.program_id(0)
    p = tile.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < n_positions
    c_ok = c < channels
    b, i0, i1, i2 = _grid_position(p, size0, size1, size2)
    d_base = DOUT + b * sd_b
    x_base = X + b * sx_b
    # This tile's positions as outputs: their gradient, for dw and dbias.
    dout = tl.load(d_base[:, None] + (i0 * sd_0 + i1 * sd_1 + i2 * sd_2)[:, None] + c[None, :],
                   mask=p_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    # One row of partial sums per tap (and one for the bias) for this tile: PARTIAL is (tiles, 28, C).
    partial = PARTIAL + tile.to(tl.int64) * 28 * channels + c
    dx = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for k0 in range(3):  # a loop, not unrolled: a third of the code for the compiler
        for k1 in tl.static_range(3):
            for k2 in tl.static_range(3):
                w = tl.load(W + c * 27 + (k0 * 9 + k1 * 3 + k2), mask=c_ok, other=0.0).to(tl.float32)
                w = rounded(w, ROUNDING)
                # dx at this tile's positions j gathers dout from the outputs i = j - o(k) that read j.
                a0, a1, a2 = i0 - (k0 - 2), i1 - (k1 - 1), i2 - (k2 - 1)
                ok = p_ok & (a0 < size0) & (a1 >= 0) & (a1 < size1) & (a2 >= 0) & (a2 < size2)
                g = tl.load(d_base[:, None] + (a0 * sd_0 + a1 * sd_1 + a2 * sd_2)[:, None] + c[None, :],
                            mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
                dx += g * w[None, :]
                # dw: this tile's outputs i times the inputs i + o(k) they read.
                j0, j1, j2 = i0 + (k0 - 2), i1 + (k1 - 1), i2 + (k2 - 1)
                ok = p_ok & (j0 >= 0) & (j1 >= 0) & (j1 < size1) & (j2 >= 0) & (j2 < size2)
                x = tl.load(x_base[:, None] + (j0 * sx_0 + j1 * sx_1 + j2 * sx_2)[:, None] + c[None, :],
                            mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
                tl.store(partial + (k0 * 9 + k1 * 3 + k2) * channels,
                         tl.sum(dout * rounded(x, X_ROUNDING), axis=0), mask=c_ok)
    tl.store(partial + 27 * channels, tl.sum(dout, axis=0), mask=c_ok)
    mask = p_ok[:, None] & c_ok[None, :]
    dx = rounded(dx, ROUNDING)
    # The fused add's backward (kernels/peg_add_conv.py): the sum's other consumers' gradient joins the
    # convolution's, and the branch receives the total in its own dtype.
    if ADD_D_SUM:
        dx += tl.load(D_SUM + (b * sds_b + i0 * sds_0 + i1 * sds_1 + i2 * sds_2)[:, None] + c[None, :], mask=mask,
                      other=0.0).to(tl.float32)
    dx_offsets = (b * sdx_b + i0 * sdx_0 + i1 * sdx_1 + i2 * sdx_2)[:, None] + c[None, :]
    tl.store(DX + dx_offsets, dx.to(DX.dtype.element_ty), mask=mask)
    if WRITE_D_BRANCH:
        tl.store(D_BRANCH + (b * sdb_b + i0 * sdb_0 + i1 * sdb_1 + i2 * sdb_2)[:, None] + c[None, :],
                 dx.to(D_BRANCH.dtype.element_ty), mask=mask)


def _blocks(n_positions: int, channels: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C): 64 channels (128 bytes of bf16) by 64 positions on a GPU; in the interpreter,
    where each program instance costs about a millisecond, as few instances as the shapes allow."""
    block_c = min(64, next_pow2(channels))
    block_p = 64 if device.type == "cuda" else 256
    return min(block_p, next_pow2(max(n_positions, 1))), block_c


def _grid_strides(t: torch.Tensor) -> list[int]:
    return [t.stride(0), t.stride(1), t.stride(2), t.stride(3)]


def channels_unit_stride(t: torch.Tensor) -> torch.Tensor:
    # The kernels index channels as unit-stride; anything else (a transposed gradient) is copied once.
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def check_peg_arguments(x: torch.Tensor, weight: torch.Tensor, bias: "torch.Tensor | None" = None) -> None:
    check_float(x, "PEG convolution input")
    if x.dim() != 5:
        raise ValueError(f"PEG convolution needs a (B, T, H, W, C) grid, got {tuple(x.shape)}")
    channels = x.shape[-1]
    if weight.shape != (channels, TAPS) or (bias is not None and bias.shape != (channels,)):
        raise ValueError(f"PEG convolution needs weight ({channels}, {TAPS}) and bias ({channels},), got "
                         f"{tuple(weight.shape)} and {None if bias is None else tuple(bias.shape)}")
    check_float(weight, "PEG convolution weight")
    if bias is not None:
        check_float(bias, "PEG convolution bias")


def launch_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
                   copy: "torch.Tensor | None", compute_dtype: torch.dtype, branch: "torch.Tensor | None" = None,
                   total: "torch.Tensor | None" = None, sum_dtype: torch.dtype = torch.float32) -> None:
    """Fill out (and copy, x in `compute_dtype`, if given) with the convolution of x's grid, inputs
    rounded to `compute_dtype`; with `branch`, of x + branch rounded to `sum_dtype`, which `total`
    receives. out, copy and total are laid out alike (any grid strides; channels unit-stride, as x and
    branch must be). Dtypes are passed, not read from the buffers: the interpreter's bf16 results are
    written in fp32 (kernels._launch.output_buffer)."""
    n_positions, channels = x.numel() // max(x.shape[-1], 1), x.shape[-1]
    if not (n_positions and channels):
        return
    block_p, block_c = _blocks(n_positions, channels, x.device)
    # Absent tensors are never read or written (their flags are off); any pointer stands in for them.
    _peg_fwd_kernel[(triton.cdiv(n_positions, block_p), triton.cdiv(channels, block_c))](
        x, weight.contiguous(), bias, out, out if copy is None else copy, x if branch is None else branch,
        out if total is None else total, n_positions, channels, *x.shape[1:4], *_grid_strides(x),
        *_grid_strides(out), *_grid_strides(x if branch is None else branch), BLOCK_P=block_p,
        BLOCK_C=block_c, ROUNDING=SUM_ROUNDING[compute_dtype], WRITE_X_COPY=copy is not None,
        ADD_BRANCH=branch is not None, SUM_ROUNDING=SUM_ROUNDING[sum_dtype], num_warps=4)


def launch_backward(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dx: torch.Tensor,
                    x_rounding_dtype: torch.dtype, compute_dtype: torch.dtype,
                    d_sum: "torch.Tensor | None" = None, d_branch: "torch.Tensor | None" = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill dx (the input's gradient, plus `d_sum` when given; written again into `d_branch` when given)
    and return dw (C, 27) and dbias (C,) in fp32, rounded to `compute_dtype`."""
    n_positions, channels = x.numel() // max(x.shape[-1], 1), x.shape[-1]
    if not (n_positions and channels):
        return weight.new_zeros(weight.shape, dtype=torch.float32), weight.new_zeros(channels, dtype=torch.float32)
    block_p, block_c = _blocks(n_positions, channels, x.device)
    tiles = triton.cdiv(n_positions, block_p)
    partial = torch.empty((tiles, TAPS + 1, channels), dtype=torch.float32, device=x.device)
    _peg_bwd_kernel[(tiles, triton.cdiv(channels, block_c))](
        dout, x, weight.contiguous(), dx, partial, dx if d_sum is None else d_sum,
        dx if d_branch is None else d_branch, n_positions, channels, *x.shape[1:4], *_grid_strides(dout),
        *_grid_strides(x), *_grid_strides(dx), *_grid_strides(dx if d_sum is None else d_sum),
        *_grid_strides(dx if d_branch is None else d_branch), BLOCK_P=block_p, BLOCK_C=block_c,
        X_ROUNDING=SUM_ROUNDING[x_rounding_dtype], ROUNDING=SUM_ROUNDING[compute_dtype],
        ADD_D_SUM=d_sum is not None, WRITE_D_BRANCH=d_branch is not None, num_warps=8)
    # Second stage of the reduction: a fixed-shape sum, so the result is bitwise reproducible. The
    # parameters' gradients leave the convolution in its dtype, as the Conv3d path's do.
    sums = partial.sum(0).to(compute_dtype).float()
    return sums[:TAPS].t().contiguous(), sums[TAPS].clone()


# Each launch is a torch custom op (see kernels/rmsnorm.py for why).
@torch.library.custom_op("ctclip_kernels::peg_conv_forward", mutates_args=())
def peg_conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out_dtype: torch.dtype,
                     write_x_copy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, x_copy): the convolution of the (B, T, H, W, C) grid x with weight (C, 27) and bias in
    `out_dtype`, all three rounded to it before the products; x_copy is that rounded x (for the
    backward) when `write_x_copy`, else empty."""
    check_peg_arguments(x, weight, bias)
    x = channels_unit_stride(x)
    # In x's memory order: the corrected temporal layout's grid is a permuted view of the tokens, and its
    # output then rearranges back to tokens as a view.
    out = output_buffer_like(x, out_dtype, INTERPRETED)
    copy = output_buffer_like(x, out_dtype, INTERPRETED) if write_x_copy else None
    launch_forward(x, weight, bias, out, copy, out_dtype)
    copy = copy if write_x_copy else x.new_empty(_NOTHING, dtype=out_dtype)
    return out.to(out_dtype), copy.to(out_dtype)


@peg_conv_forward.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out_dtype: torch.dtype,
      write_x_copy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    check_peg_arguments(x, weight, bias)
    x = channels_unit_stride(x)  # as the real op lays its outputs out: torch.compile trusts these strides
    copy = torch.empty_like(x, dtype=out_dtype) if write_x_copy else x.new_empty(_NOTHING, dtype=out_dtype)
    return torch.empty_like(x, dtype=out_dtype), copy


@torch.library.custom_op("ctclip_kernels::peg_conv_backward", mutates_args=())
def peg_conv_backward(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                      x_rounding_dtype: torch.dtype, dx_dtype: torch.dtype, compute_dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx in `dx_dtype`, dw (C, 27) and dbias (C,) in fp32) from dout and the saved x. x is rounded to
    `x_rounding_dtype` (float32: not at all; the forward's copy is rounded already), w, dx, dw and dbias
    to `compute_dtype`, as the Conv3d path's casts round them.

    Every rounding happens here, inside the op, rather than as casts around it: torch.compile would
    remove a cast to bf16 and back as a no-op (unless told to emulate it), and the compiled model would
    then compute something else than the eager one."""
    check_peg_arguments(x, weight)
    dout, x = channels_unit_stride(dout), channels_unit_stride(x)
    dx = output_buffer_like(x, dx_dtype, INTERPRETED)
    dw, dbias = launch_backward(dout, x, weight, dx, x_rounding_dtype, compute_dtype)
    return dx.to(dx_dtype), dw, dbias


@peg_conv_backward.register_fake
def _(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, x_rounding_dtype: torch.dtype,
      dx_dtype: torch.dtype, compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.empty_like(channels_unit_stride(x), dtype=dx_dtype), torch.empty_like(weight, dtype=torch.float32),
            weight.new_empty(x.shape[-1], dtype=torch.float32))

def conv_flops(x_shape) -> int:
    """As FlopCounterMode counts the depthwise Conv3d (2 * outputs * taps per channel), so FLOPs and
    MFU stay comparable across peg_impl."""
    positions = 1
    for size in x_shape:
        positions *= size
    return 2 * TAPS * positions


@register_flop_formula(torch.ops.ctclip_kernels.peg_conv_forward)
def _peg_forward_flops(x_shape, *args, **kwargs) -> int:
    return conv_flops(x_shape)


@register_flop_formula(torch.ops.ctclip_kernels.peg_conv_backward)
def _peg_backward_flops(dout_shape, *args, **kwargs) -> int:
    # The input's and the weight's gradients, each a convolution's worth, as counted for Conv3d.
    return 2 * conv_flops(dout_shape)


class TritonPEGConvFunction(torch.autograd.Function):
    """Autograd wrapper: saves x (or, under autocast, its copy in the compute dtype) and w as (C, 27)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                compute_dtype: torch.dtype) -> torch.Tensor:
        w = weight.reshape(x.shape[-1], TAPS)  # a view of the Conv3d's (C, 1, 3, 3, 3) parameter
        write_copy = compute_dtype != x.dtype
        out, copy = peg_conv_forward(x, w, bias, compute_dtype, write_copy)
        ctx.save_for_backward(copy if write_copy else x, w)
        ctx.x_dtype, ctx.compute_dtype = x.dtype, compute_dtype
        ctx.x_rounding = torch.float32 if write_copy else compute_dtype
        ctx.weight_shape, ctx.weight_dtype, ctx.bias_dtype = weight.shape, weight.dtype, bias.dtype
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        saved_x, w = ctx.saved_tensors
        dx, dw, dbias = peg_conv_backward(dout, saved_x, w, ctx.x_rounding, ctx.x_dtype, ctx.compute_dtype)
        dw = dw.to(ctx.weight_dtype).reshape(ctx.weight_shape)
        dbias = dbias.to(ctx.bias_dtype)
        wants = ctx.needs_input_grad
        return (dx if wants[0] else None, dw if wants[1] else None, dbias if wants[2] else None, None)


def triton_peg_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The causal depthwise convolution of the (B, T, H, W, C) grid x with a Conv3d's (C, 1, 3, 3, 3)
    weight and (C,) bias, in autocast's dtype when autocast is on for x's device, else x's."""
    device = x.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return TritonPEGConvFunction.apply(x, weight, bias, compute_dtype)

