"""CT-ViT's patch embedding input: the volume cut into patches and LayerNorm'd in one Triton pass each way.

Upstream's `to_patch_emb` starts with `Rearrange("b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)")` and
`nn.LayerNorm(c * pt * p * p)`. Row r = (b, t, h, w) of the patch matrix gathers the volume's voxels
x[b, c, t*pt + i, h*p + j, w*p + k] in (c, i, j, k) order; its address is the sum of a part that depends
only on the row and one that depends only on the column, so the kernels read the volume where it lies:

    mean = sum(x) / N,   rstd = 1 / sqrt(sum((x - mean)^2) / N + eps),   xhat = (x - mean) * rstd
    y = xhat * gamma + beta                                   (written in the compute dtype)
    dgamma = sum_rows dy * xhat,   dbeta = sum_rows dy
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma   (only if the volume needs it)

At paper size (4 x 1 x 240 x 480 x 480 fp32, rows of 4,000 voxels) upstream's path is five passes over
a 0.88 GB tensor in each step: the rearrange's copy, the norm, autocast's bf16 cast for the projection,
and in backward the cast of the bf16 gradient back to fp32 and the norm's backward; it also keeps the
fp32 patch copy and its bf16 cast for backward. Here the forward reads the volume once and writes the
normalised patches once, in the dtype the projection consumes (bf16 under autocast: the same rounding
as autocast's cast of the fp32 norm), and saves only the per-row mean and rstd (the volume is the batch,
resident anyway); the backward reads the bf16 gradient and the volume once and writes the parameters'
per-program partial sums, reduced by one fixed-shape `sum` (deterministic), and dx only when asked.
All arithmetic is fp32; only the order of the fp32 sums differs from PyTorch's LayerNorm.

Prior art: the Triton layer-norm tutorial and Liger-Kernel's layer_norm; the code here is written afresh.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._launch import (MAX_ROW_WIDTH, as_rows, check_float, interpreting, next_pow2, num_warps,
                             output_buffer, persistent_tiling, rows_per_tile)

# Whether the kernels below were defined for the interpreter (read by kernels.supports).
INTERPRETED = interpreting()
# An output the caller did not ask for (custom ops cannot return None).
_NOTHING = (0,)


@triton.jit
def _row_offsets(rows, grid_t, grid_h, grid_w, pt, p, s_b, s_d, s_h, s_w):
    # Row (b, t, h, w), row-major over the token grid -> the address of its patch's first voxel.
    iw = rows % grid_w
    q = rows // grid_w
    ih = q % grid_h
    q = q // grid_h
    it = q % grid_t
    b = q // grid_t
    return b * s_b + it * pt * s_d + ih * p * s_h + iw * p * s_w


@triton.jit
def _col_offsets(cols, pt, p, s_c, s_d, s_h, s_w):
    # Column (c, i, j, k) of a patch, k fastest as the rearrange orders it -> its offset in the patch.
    k = cols % p
    q = cols // p
    j = q % p
    q = q // p
    return (q // pt) * s_c + (q % pt) * s_d + j * s_h + k * s_w


@triton.jit
def _patch_ln_fwd_kernel(X, W, B, Y, MEAN, RSTD, n_rows, n_cols, grid_t, grid_h, grid_w, pt, p,
                         sx_b, sx_c, sx_d, sx_h, sx_w, eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    offsets = (_row_offsets(rows, grid_t, grid_h, grid_w, pt, p, sx_b, sx_d, sx_h, sx_w)[:, None]
               + _col_offsets(cols, pt, p, sx_c, sx_d, sx_h, sx_w)[None, :])
    x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
    # Two passes over the row in registers (mean, then the centred squares), as LayerNorm's
    # reference does; IEEE-rounded division and sqrt keep fp32 results within an ulp or two of torch's.
    mean = tl.div_rn(tl.sum(x, axis=1), n_cols * 1.0)
    centred = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.div_rn(tl.sum(centred * centred, axis=1), n_cols * 1.0)
    rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = centred * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + rows[:, None] * n_cols + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _patch_ln_bwd_kernel(DY, X, W, MEAN, RSTD, DX, PARTIAL, stride_dy, n_rows, n_cols, grid_t, grid_h,
                         grid_w, pt, p, sx_b, sx_c, sx_d, sx_h, sx_w, sdx_b, sdx_c, sdx_d, sdx_h, sdx_w,
                         TILES_PER_PROGRAM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         WRITE_DX: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    x_cols = _col_offsets(cols, pt, p, sx_c, sx_d, sx_h, sx_w)
    dx_cols = _col_offsets(cols, pt, p, sdx_c, sdx_d, sdx_h, sdx_w)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    # Per-element accumulators, reduced over rows once at the end rather than once per tile.
    dw_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # A contiguous run of row tiles per program (a constexpr trip count: see kernels/rmsnorm.py).
    first_tile = pid.to(tl.int64) * TILES_PER_PROGRAM
    for tile in range(0, TILES_PER_PROGRAM):
        rows = (first_tile + tile) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        x_rows = _row_offsets(rows, grid_t, grid_h, grid_w, pt, p, sx_b, sx_d, sx_h, sx_w)
        x = tl.load(X + x_rows[:, None] + x_cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        dw_acc += dy * xhat
        db_acc += dy
        if WRITE_DX:
            g = dy * w[None, :]
            mean_g = tl.div_rn(tl.sum(g, axis=1), n_cols * 1.0)
            mean_gx = tl.div_rn(tl.sum(g * xhat, axis=1), n_cols * 1.0)
            dx = rstd[:, None] * (g - mean_g[:, None] - xhat * mean_gx[:, None])
            dx_rows = _row_offsets(rows, grid_t, grid_h, grid_w, pt, p, sdx_b, sdx_d, sdx_h, sdx_w)
            tl.store(DX + dx_rows[:, None] + dx_cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(PARTIAL + pid * 2 * n_cols + cols, tl.sum(dw_acc, axis=0), mask=col_ok)
    tl.store(PARTIAL + (pid * 2 + 1) * n_cols + cols, tl.sum(db_acc, axis=0), mask=col_ok)


def patch_grid(volume_shape, temporal_patch: int, patch: int) -> tuple[int, int, int, int, int]:
    """(B, t, h, w, N): the token grid and the patch width of a (B, C, D, H, W) volume."""
    batch, channels, depth, height, width = volume_shape
    return (batch, depth // temporal_patch, height // patch, width // patch,
            channels * temporal_patch * patch * patch)


def _check(volume: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, temporal_patch: int,
           patch: int) -> None:
    check_float(volume, "patch-norm volume")
    if volume.dim() != 5:
        raise ValueError(f"patch norm needs a (B, C, D, H, W) volume, got {tuple(volume.shape)}")
    _, _, depth, height, width = volume.shape
    if temporal_patch < 1 or patch < 1 or depth % temporal_patch or height % patch or width % patch:
        raise ValueError(f"volume {tuple(volume.shape)} does not divide into {temporal_patch}x{patch}x{patch} "
                         "patches")
    n_cols = patch_grid(volume.shape, temporal_patch, patch)[-1]
    if n_cols > MAX_ROW_WIDTH:
        raise ValueError(f"patch norm handles patches up to {MAX_ROW_WIDTH} voxels, got {n_cols}")
    if weight.shape != (n_cols,) or bias.shape != (n_cols,):
        raise ValueError(f"patch norm needs weight and bias ({n_cols},), got {tuple(weight.shape)} and "
                         f"{tuple(bias.shape)}")
    check_float(weight, "patch-norm weight")
    check_float(bias, "patch-norm bias")


def _strides(t: torch.Tensor) -> list[int]:
    # A dimension of size 1 is never stepped through, so its stride (possibly arbitrary) is irrelevant.
    return [t.stride(i) for i in range(5)]


# Each launch is a torch custom op (see kernels/rmsnorm.py for why).
@torch.library.custom_op("ctclip_kernels::patch_layer_norm_forward", mutates_args=())
def patch_layer_norm_forward(volume: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             temporal_patch: int, patch: int, eps: float, out_dtype: torch.dtype
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(patches (B, t, h, w, N) in `out_dtype`, mean and rstd (B*t*h*w,) in fp32): upstream's rearrange
    and LayerNorm of the (B, C, D, H, W) volume, rounded once to `out_dtype`."""
    _check(volume, weight, bias, temporal_patch, patch)
    grid = patch_grid(volume.shape, temporal_patch, patch)
    n_cols = grid[-1]
    n_rows = grid[0] * grid[1] * grid[2] * grid[3]
    y = output_buffer(grid, out_dtype, volume.device, INTERPRETED)
    mean = torch.empty(n_rows, dtype=torch.float32, device=volume.device)
    rstd = torch.empty_like(mean)
    if n_rows:
        block_n = next_pow2(n_cols)
        block_m = rows_per_tile(block_n, n_rows)
        _patch_ln_fwd_kernel[(triton.cdiv(n_rows, block_m),)](
            volume, weight.contiguous(), bias.contiguous(), y, mean, rstd, n_rows, n_cols, *grid[1:4],
            temporal_patch, patch, *_strides(volume), float(eps), BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=num_warps(block_m * block_n))
    return y.to(out_dtype), mean, rstd


@patch_layer_norm_forward.register_fake
def _(volume: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, temporal_patch: int, patch: int,
      eps: float, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(volume, weight, bias, temporal_patch, patch)
    grid = patch_grid(volume.shape, temporal_patch, patch)
    n_rows = grid[0] * grid[1] * grid[2] * grid[3]
    return (volume.new_empty(grid, dtype=out_dtype), volume.new_empty(n_rows, dtype=torch.float32),
            volume.new_empty(n_rows, dtype=torch.float32))


@torch.library.custom_op("ctclip_kernels::patch_layer_norm_backward", mutates_args=())
def patch_layer_norm_backward(dy: torch.Tensor, volume: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                              rstd: torch.Tensor, temporal_patch: int, patch: int, want_dx: bool
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dvolume in the volume's dtype, or empty unless `want_dx`; dweight and dbias in fp32) from the
    patches' gradient dy (any float dtype) and the forward's mean and rstd."""
    grid = patch_grid(volume.shape, temporal_patch, patch)
    n_cols = grid[-1]
    dy2 = as_rows(dy, n_cols)
    n_rows = dy2.shape[0]
    dx = (output_buffer(volume.shape, volume.dtype, volume.device, INTERPRETED) if want_dx
          else volume.new_empty(_NOTHING))
    if not n_rows:
        zeros = weight.new_zeros(n_cols, dtype=torch.float32)
        return dx.zero_().to(volume.dtype), zeros, zeros.clone()
    block_n = next_pow2(n_cols)
    block_m = rows_per_tile(block_n, n_rows)
    n_tiles = triton.cdiv(n_rows, block_m)
    tiles_per_program, programs = persistent_tiling(volume.device, n_tiles)
    partial = torch.empty((programs, 2, n_cols), dtype=torch.float32, device=volume.device)
    _patch_ln_bwd_kernel[(programs,)](
        dy2, volume, weight.contiguous(), mean, rstd, dx, partial, dy2.stride(0), n_rows, n_cols, *grid[1:4],
        temporal_patch, patch, *_strides(volume), *(_strides(dx) if want_dx else [0] * 5),
        TILES_PER_PROGRAM=tiles_per_program, BLOCK_M=block_m, BLOCK_N=block_n, WRITE_DX=want_dx,
        num_warps=num_warps(block_m * block_n))
    # Second stage of the reduction: a fixed-shape sum, so the result is bitwise reproducible.
    sums = partial.sum(0)
    return dx.to(volume.dtype), sums[0].clone(), sums[1].clone()


@patch_layer_norm_backward.register_fake
def _(dy: torch.Tensor, volume: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
      temporal_patch: int, patch: int, want_dx: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n_cols = weight.shape[0]
    dx = volume.new_empty(volume.shape if want_dx else _NOTHING)
    return dx, weight.new_empty(n_cols, dtype=torch.float32), weight.new_empty(n_cols, dtype=torch.float32)


class TritonPatchLayerNormFunction(torch.autograd.Function):
    """Autograd wrapper: saves the volume (the batch itself, no copy), the parameters and the row
    statistics."""

    @staticmethod
    def forward(ctx, volume: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, temporal_patch: int,
                patch: int, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
        y, mean, rstd = patch_layer_norm_forward(volume, weight, bias, temporal_patch, patch, eps, out_dtype)
        ctx.save_for_backward(volume, weight, mean, rstd)
        ctx.patching = (temporal_patch, patch)
        ctx.dtypes = (weight.dtype, bias.dtype)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        volume, weight, mean, rstd = ctx.saved_tensors
        wants = ctx.needs_input_grad
        dx, dweight, dbias = patch_layer_norm_backward(dy, volume, weight, mean, rstd, *ctx.patching, wants[0])
        return (dx if wants[0] else None, dweight.to(ctx.dtypes[0]) if wants[1] else None,
                dbias.to(ctx.dtypes[1]) if wants[2] else None, None, None, None, None)


def triton_patch_layer_norm(volume: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            temporal_patch: int, patch: int, eps: float = 1e-5) -> torch.Tensor:
    """The (B, C, D, H, W) volume as LayerNorm'd patches (B, t, h, w, C*pt*p*p), in autocast's dtype when
    autocast is on for the volume's device (the dtype the projection then reads), else the volume's."""
    device = volume.device.type
    out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else volume.dtype
    return TritonPatchLayerNormFunction.apply(volume, weight, bias, temporal_patch, patch, eps, out_dtype)
