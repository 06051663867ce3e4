"""Fused per-head QK L2-norm, learnable scale and optional rotary embedding, forward and backward, in Triton.

Replaces CT-CLIP's attention prologue (models/attention.py, models/position.py's apply_rotary):

    q = F.normalize(q, dim=-1) * q_scale;  q = apply_rotary(q, (cos, sin))   (the same for k)

For each vector x = t[b, h, n, :] of length D, with all arithmetic in fp32 whatever the input dtype:

    r = 1 / max(||x||_2, eps)                          (F.normalize's x / max(norm, eps))
    y = x * r * scale
    out = y * cos[n] + rotate_half(y) * sin[n],  rotate_half(y) = cat(-y[D/2:], y[:D/2])   (with rope)
    out = y                                                                             (without)

The forward saves r per row (fp32). With R the rotate_half map (R^T = -R) and dout the incoming gradient:

    dy = dout * cos - rotate_half(dout * sin)          (dy = dout without rope)
    xhat = x * r,  g = dy * scale
    dx = r * (g - xhat * sum_d(g * xhat))              when ||x|| >= eps
    dx = r * g                                         when ||x|| < eps: max() clamps the norm, so its
                                                       gradient stops there, as in PyTorch's autograd
    dscale = sum over rows of dy * xhat

dscale is reduced in two deterministic stages as in kernels/rmsnorm.py: per-program fp32 partials, then
one `sum` over the programs. cos and sin are constants (no gradient).

Layout. t is (B, H, N, D) with any strides: in the model it is the rearranged view of a (B, N, H*D)
projection, unit-stride along D with h and n interleaved. The kernels take the three outer strides, so
only a non-unit stride along D costs a copy, and write the output (and dt) with t's outer dimensions in
t's memory order: q stays (B, N, H, D) in memory, so SDPA's output, which takes q's layout, is a free
view for the model's `b h n d -> b n (h d)`, as with the eager expression. Each row is handled as its
two halves, [0, ceil(D/2)) and [ceil(D/2), D), each a power-of-two BLOCK_H wide with masking:
rotate_half then pairs lane i of one half with lane i of the other, with no gather. Odd D is fine
without rope (the second half is one narrower).

Output dtype. The output is a fresh (B, H, N, D) tensor in t's dtype, whereas PyTorch's
expression promotes to fp32 (scale is an fp32 parameter). Under autocast the attention kernels cast q and
k to the autocast dtype anyway, so writing t's dtype loses nothing and halves the writes.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import nn

from kernels._launch import (check_float, interpreting, next_pow2, num_warps, output_buffer,
                             persistent_tiling, rows_per_tile)

# Whether the kernels below were defined for the interpreter (read by kernels.supports).
INTERPRETED = interpreting()
# A head wider than this would want a different tiling; CT-CLIP's are 32 (paper) and 16 (tiny model).
MAX_HEAD_DIM = 256


@triton.jit
def _strided_rows(rows, n_heads, n_seq, stride_b, stride_h, stride_n):
    """Element offset of each row (b, h, n) of a strided (B, H, N, D) tensor, and its n."""
    n = rows % n_seq
    bh = rows // n_seq
    return (bh // n_heads) * stride_b + (bh % n_heads) * stride_h + n * stride_n, n


@triton.jit
def _load_halves(first, half, m1, m2):
    """A tile's two half-rows from `first` (pointers to each row's element 0), upcast to fp32: the
    interpreter multiplies bf16 by bf16 wrongly, and fp32 is the accuracy the kernels promise."""
    x1 = tl.load(first, mask=m1, other=0.0).to(tl.float32)
    x2 = tl.load(first + half, mask=m2, other=0.0).to(tl.float32)
    return x1, x2


@triton.jit
def _load_rope(COS, SIN, n, cols, half, n_cols, m1, m2):
    """cos and sin of each row's position n, as half-rows; the (N, D) tables are contiguous, so row n
    serves every (b, h)."""
    table = n[:, None] * n_cols + cols[None, :]
    c1, c2 = _load_halves(COS + table, half, m1, m2)
    sn1, sn2 = _load_halves(SIN + table, half, m1, m2)
    return c1, c2, sn1, sn2


@triton.jit
def _qk_norm_rope_fwd_kernel(T, SCALE, COS, SIN, OUT, R, stride_b, stride_h, stride_n,
                             so_b, so_h, so_n, n_rows, n_heads, n_seq, n_cols, eps,
                             BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, ROPE: tl.constexpr):
    # int64 row indices: offsets overflow int32 beyond 2^31 elements.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_H)
    half = (n_cols + 1) // 2
    row_ok = rows < n_rows
    ok1 = cols < half
    ok2 = cols < n_cols - half
    m1 = row_ok[:, None] & ok1[None, :]
    m2 = row_ok[:, None] & ok2[None, :]
    offset, n = _strided_rows(rows, n_heads, n_seq, stride_b, stride_h, stride_n)
    x1, x2 = _load_halves(T + offset[:, None] + cols[None, :], half, m1, m2)
    # IEEE-rounded sqrt and division (Triton's defaults are approximate): per row, so free, and they keep
    # fp32 results within an ulp or two of F.normalize's.
    norm = tl.sqrt_rn(tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1))
    # Compiled, tl.maximum ignores a NaN by default; F.normalize's clamp keeps it, and so must we.
    r = tl.div_rn(1.0, tl.maximum(norm, eps, propagate_nan=tl.PropagateNan.ALL))
    s1, s2 = _load_halves(SCALE + cols, half, ok1, ok2)
    y1 = x1 * r[:, None] * s1[None, :]
    y2 = x2 * r[:, None] * s2[None, :]
    if ROPE:
        c1, c2, sn1, sn2 = _load_rope(COS, SIN, n, cols, half, n_cols, m1, m2)
        o1 = y1 * c1 - y2 * sn1
        o2 = y2 * c2 + y1 * sn2
    else:
        o1 = y1
        o2 = y2
    out_offset, _ = _strided_rows(rows, n_heads, n_seq, so_b, so_h, so_n)
    out = OUT + out_offset[:, None] + cols[None, :]
    tl.store(out, o1.to(OUT.dtype.element_ty), mask=m1)
    tl.store(out + half, o2.to(OUT.dtype.element_ty), mask=m2)
    tl.store(R + rows, r, mask=row_ok)


@triton.jit
def _qk_norm_rope_bwd_kernel(DOUT, T, SCALE, R, COS, SIN, DT, DSCALE_PARTIAL,
                             sd_b, sd_h, sd_n, st_b, st_h, st_n, so_b, so_h, so_n, n_rows, n_heads, n_seq,
                             n_cols, eps,
                             TILES_PER_PROGRAM: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_H: tl.constexpr, ROPE: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)
    half = (n_cols + 1) // 2
    ok1 = cols < half
    ok2 = cols < n_cols - half
    s1, s2 = _load_halves(SCALE + cols, half, ok1, ok2)
    # Per-element accumulators, reduced over rows once at the end rather than once per tile.
    acc1 = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)
    # A contiguous run of row tiles per program, tiles past the end fully masked; the trip count is a
    # constexpr because the interpreter (with numpy >= 2.4) cannot loop to a runtime bound.
    first_tile = pid.to(tl.int64) * TILES_PER_PROGRAM
    for tile in range(0, TILES_PER_PROGRAM):
        rows = (first_tile + tile) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        m1 = row_ok[:, None] & ok1[None, :]
        m2 = row_ok[:, None] & ok2[None, :]
        t_off, n = _strided_rows(rows, n_heads, n_seq, st_b, st_h, st_n)
        d_off, _ = _strided_rows(rows, n_heads, n_seq, sd_b, sd_h, sd_n)
        x1, x2 = _load_halves(T + t_off[:, None] + cols[None, :], half, m1, m2)
        d1, d2 = _load_halves(DOUT + d_off[:, None] + cols[None, :], half, m1, m2)
        r = tl.load(R + rows, mask=row_ok, other=0.0)
        if ROPE:
            c1, c2, sn1, sn2 = _load_rope(COS, SIN, n, cols, half, n_cols, m1, m2)
            # The transposed rotation: R^T = -R.
            dy1 = d1 * c1 + d2 * sn2
            dy2 = d2 * c2 - d1 * sn1
        else:
            dy1 = d1
            dy2 = d2
        xh1 = x1 * r[:, None]
        xh2 = x2 * r[:, None]
        acc1 += dy1 * xh1
        acc2 += dy2 * xh2
        g1 = dy1 * s1[None, :]
        g2 = dy2 * s2[None, :]
        dot = tl.sum(g1 * xh1, axis=1) + tl.sum(g2 * xh2, axis=1)
        # Recomputed exactly as in the forward (same rounding), so the clamp decision matches it: where
        # max() chose eps, the norm gets no gradient and only r * g remains, as in PyTorch's autograd.
        norm = tl.sqrt_rn(tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1))
        dot = tl.where(norm >= eps, dot, 0.0)
        dx1 = r[:, None] * (g1 - xh1 * dot[:, None])
        dx2 = r[:, None] * (g2 - xh2 * dot[:, None])
        dx_first = DT + _strided_rows(rows, n_heads, n_seq, so_b, so_h, so_n)[0][:, None] + cols[None, :]
        tl.store(dx_first, dx1.to(DT.dtype.element_ty), mask=m1)
        tl.store(dx_first + half, dx2.to(DT.dtype.element_ty), mask=m2)
    partial = DSCALE_PARTIAL + pid * n_cols
    tl.store(partial + cols, tl.sum(acc1, axis=0), mask=ok1)
    tl.store(partial + half + cols, tl.sum(acc2, axis=0), mask=ok2)


def _blocks(n_rows: int, n_cols: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_H): rows per tile and the power-of-two width of each half-row block."""
    block_h = next_pow2((n_cols + 1) // 2)
    return rows_per_tile(2 * block_h, n_rows), block_h


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    """t itself when its last dimension is unit-stride (the kernels take the outer strides), else a copy."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _check_forward(t: torch.Tensor, scale: torch.Tensor, cos: Optional[torch.Tensor],
                   sin: Optional[torch.Tensor]) -> None:
    check_float(t, "QK-norm input")
    if t.dim() != 4:
        raise ValueError(f"QK-norm input must be (B, H, N, D), got shape {tuple(t.shape)}")
    n_seq, dim = t.shape[2], t.shape[3]
    if dim > MAX_HEAD_DIM:
        raise ValueError(f"QK-norm handles heads up to {MAX_HEAD_DIM} wide, got {dim}")
    if scale.shape != (dim,):
        raise ValueError(f"QK-norm scale has shape {tuple(scale.shape)}, expected ({dim},)")
    if (cos is None) != (sin is None):
        raise ValueError("rope needs both cos and sin")
    if cos is not None and sin is not None:
        if dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension, got {dim}")
        if cos.shape != (n_seq, dim) or sin.shape != (n_seq, dim):
            raise ValueError(f"rope cos/sin must be ({n_seq}, {dim}), got {tuple(cos.shape)} and "
                             f"{tuple(sin.shape)}")
        check_float(cos, "rope cos")
        check_float(sin, "rope sin")


def _outer_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _empty_like_layout(t: torch.Tensor, dtype: torch.dtype, interpreted: bool = INTERPRETED) -> torch.Tensor:
    """A fresh (B, H, N, D) tensor whose outer dimensions lie in memory in the order t's do, D last.

    The model's q and k are (B, H, N, D) views of a (B, N, H*D) projection: written back in that
    order, SDPA's output (which follows q's layout on both builds) is a free view for the
    `b h n d -> b n (h d)` rearrange before the output projection, not a copy. In the interpreter a
    bf16 result is written in fp32 and rounded by torch (output_buffer), in the same layout; fake
    implementations pass `interpreted=False` for the dtype the op returns.
    """
    order = sorted(range(3), key=lambda d: -t.stride(d))  # outermost first; ties keep (B, H, N) order
    shape = [t.shape[d] for d in order] + [t.shape[3]]
    buffer = output_buffer(tuple(shape), dtype, t.device, interpreted)
    return buffer.permute(*[order.index(d) for d in range(3)], 3)


# Each launch is a torch custom op (see kernels/rmsnorm.py for why).
@torch.library.custom_op("ctclip_kernels::qk_norm_rope_forward", mutates_args=())
def qk_norm_rope_forward(t: torch.Tensor, scale: torch.Tensor, cos: Optional[torch.Tensor],
                         sin: Optional[torch.Tensor], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """out (t's shape, dtype and layout: _empty_like_layout) and the per-row fp32 r = 1/max(||x||, eps),
    shape [B*H*N], rows in (B, H, N) order."""
    _check_forward(t, scale, cos, sin)
    t = _unit_last(t)
    batch, heads, n_seq, dim = t.shape
    n_rows = batch * heads * n_seq
    out = _empty_like_layout(t, t.dtype)
    r = torch.empty(n_rows, dtype=torch.float32, device=t.device)
    if n_rows and dim:
        rope = cos is not None and sin is not None
        # Without rope the table pointers are never read: any tensor will do.
        cos_arg, sin_arg = (cos.contiguous(), sin.contiguous()) if rope else (r, r)
        block_m, block_h = _blocks(n_rows, dim)
        _qk_norm_rope_fwd_kernel[(triton.cdiv(n_rows, block_m),)](
            t, scale.contiguous(), cos_arg, sin_arg, out, r, *_outer_strides(t), *_outer_strides(out),
            n_rows, heads, n_seq, dim, float(eps),
            BLOCK_M=block_m, BLOCK_H=block_h, ROPE=rope, num_warps=num_warps(block_m * 2 * block_h))
    return out.to(t.dtype), r


@qk_norm_rope_forward.register_fake
def _(t: torch.Tensor, scale: torch.Tensor, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor],
      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check_forward(t, scale, cos, sin)
    out = _empty_like_layout(_unit_last(t), t.dtype, interpreted=False)
    return out, t.new_empty(t.shape[0] * t.shape[1] * t.shape[2], dtype=torch.float32)


@torch.library.custom_op("ctclip_kernels::qk_norm_rope_backward", mutates_args=())
def qk_norm_rope_backward(dout: torch.Tensor, t: torch.Tensor, scale: torch.Tensor, r: torch.Tensor,
                          cos: Optional[torch.Tensor], sin: Optional[torch.Tensor],
                          eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(dt in t's shape, dtype and layout, dscale in scale's dtype) from the forward's saved r."""
    t = _unit_last(t)
    dout = _unit_last(dout)
    batch, heads, n_seq, dim = t.shape
    n_rows = batch * heads * n_seq
    dt = _empty_like_layout(t, t.dtype)
    if not (n_rows and dim):
        return dt.to(t.dtype), torch.zeros_like(scale)
    rope = cos is not None and sin is not None
    cos_arg, sin_arg = (cos.contiguous(), sin.contiguous()) if rope else (r, r)
    block_m, block_h = _blocks(n_rows, dim)
    n_tiles = triton.cdiv(n_rows, block_m)
    tiles_per_program, programs = persistent_tiling(t.device, n_tiles)
    partial = torch.empty((programs, dim), dtype=torch.float32, device=t.device)
    _qk_norm_rope_bwd_kernel[(programs,)](
        dout, t, scale.contiguous(), r, cos_arg, sin_arg, dt, partial,
        *_outer_strides(dout), *_outer_strides(t), *_outer_strides(dt), n_rows, heads, n_seq, dim, float(eps),
        TILES_PER_PROGRAM=tiles_per_program, BLOCK_M=block_m, BLOCK_H=block_h, ROPE=rope,
        num_warps=num_warps(block_m * 2 * block_h))
    # Second stage of the dscale reduction: a fixed-shape sum, so the result is bitwise reproducible.
    return dt.to(t.dtype), partial.sum(0).to(scale.dtype)


@qk_norm_rope_backward.register_fake
def _(dout: torch.Tensor, t: torch.Tensor, scale: torch.Tensor, r: torch.Tensor,
      cos: Optional[torch.Tensor], sin: Optional[torch.Tensor],
      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _empty_like_layout(_unit_last(t), t.dtype, interpreted=False), torch.empty_like(scale)


class TritonQKNormRopeFunction(torch.autograd.Function):
    """Autograd wrapper: saves t (unit-stride view), scale and the fp32 per-row r; cos/sin get no gradient."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, scale: torch.Tensor, cos: Optional[torch.Tensor],
                sin: Optional[torch.Tensor], eps: float) -> torch.Tensor:
        # The view the kernel reads, saved as is: the model's rearranged q/k are never copied.
        t_view = _unit_last(t)
        out, r = qk_norm_rope_forward(t_view, scale, cos, sin, eps)
        ctx.save_for_backward(t_view, scale, r, cos, sin)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        t_view, scale, r, cos, sin = ctx.saved_tensors
        dt, dscale = qk_norm_rope_backward(dout, t_view, scale, r, cos, sin, ctx.eps)
        return (dt if ctx.needs_input_grad[0] else None, dscale if ctx.needs_input_grad[1] else None,
                None, None, None)


def triton_qk_norm_rope(t: torch.Tensor, scale: torch.Tensor,
                        rope: "tuple[torch.Tensor, torch.Tensor] | None" = None,
                        eps: float = 1e-12) -> torch.Tensor:
    """F.normalize(t, dim=-1) * scale, then apply_rotary(., rope) if given; differentiable in t and scale.

    t is (B, H, N, D) with any strides; rope is (cos, sin), each (N, D). Returns a fresh tensor in t's
    dtype and layout (see the module docstring).
    """
    cos, sin = rope if rope is not None else (None, None)
    return TritonQKNormRopeFunction.apply(t, scale, cos, sin, eps)


class TritonQKNormRope(nn.Module):
    """Fused `apply_rotary(F.normalize(t, dim=-1) * scale, rope)` for one of q or k.

    Owns the per-dimension `scale` (ones at init, like CT-CLIP's q_scale / k_scale). The output has t's
    dtype; arithmetic is fp32 inside the kernel for every input dtype.
    """

    def __init__(self, dim_head: int, eps: float = 1e-12, device: "torch.device | str | None" = None,
                 dtype: "torch.dtype | None" = None) -> None:
        super().__init__()
        if dim_head > MAX_HEAD_DIM:
            raise ValueError(f"TritonQKNormRope handles heads up to {MAX_HEAD_DIM} wide, got {dim_head}")
        self.dim_head = dim_head
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim_head, device=device, dtype=dtype))

    def forward(self, t: torch.Tensor,
                rope: "tuple[torch.Tensor, torch.Tensor] | None" = None) -> torch.Tensor:
        if t.shape[-1] != self.dim_head:
            raise ValueError(f"TritonQKNormRope({self.dim_head}) got input of shape {tuple(t.shape)}")
        return triton_qk_norm_rope(t, self.scale, rope, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim_head}, eps={self.eps}"
