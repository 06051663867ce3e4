"""Fused gated activations on one [..., 2F] projection output, forward and backward, in Triton.

The input x is the single Linear(dim, 2F) output; the first half is x1 = x[..., :F], the second
x2 = x[..., F:]. Both kernels read the halves in place (no chunk copies), keep nothing but x for the
backward, and never write the activation: arithmetic is fp32 whatever the input dtype.

SwiGLU (gate in the first half):  out = silu(x1) * x2,  silu(a) = a * s,  s = sigmoid(a)
    dx1 = dout * x2 * s * (1 + x1 * (1 - s))
    dx2 = dout * silu(x1)

GEGLU (CT-CLIP's: value first, gate second, exact-erf GELU, not the tanh approximation):
    out = x1 * gelu(x2),  gelu(g) = g * Phi(g),  Phi(g) = (1 + erf(g / sqrt(2))) / 2
    dx1 = dout * gelu(x2)
    dx2 = dout * x1 * (Phi(x2) + x2 * phi(x2)),  phi(g) = exp(-g^2 / 2) / sqrt(2 pi)

Tiles are [BLOCK_M rows, BLOCK_N columns of F]; F may be any size (masking), e.g. 1365 or 85.

References: Liger-Kernel's swiglu/geglu (recompute the activation in the backward rather than save it);
the code here is written afresh, and unlike Liger's GEGLU it uses the exact erf GELU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn

from kernels._launch import (TILE_ELEMENTS, as_rows, check_float, interpreting, next_pow2, num_warps,
                             output_buffer)

# Whether the kernels below were defined for the interpreter (read by kernels.supports).
INTERPRETED = interpreting()
ACTIVATIONS = ("swiglu", "geglu")


@triton.jit
def gate_forward(x1, x2, GEGLU: tl.constexpr):
    # The activation of the module docstring on fp32 halves (shared with kernels/gated_linear.py).
    if GEGLU:  # 0.7071... = 1/sqrt(2)
        out = x1 * (x2 * 0.5 * (1.0 + tl.erf(x2 * 0.7071067811865476)))
    else:
        out = x1 / (1.0 + tl.exp(-x1)) * x2
    return out


@triton.jit
def gate_backward(dout, x1, x2, GEGLU: tl.constexpr):
    # (dx1, dx2) of the module docstring, recomputing the activation from the fp32 halves.
    if GEGLU:  # 0.3989... = 1/sqrt(2 pi)
        cdf = 0.5 * (1.0 + tl.erf(x2 * 0.7071067811865476))
        pdf = tl.exp(-0.5 * x2 * x2) * 0.3989422804014327
        dx1 = dout * (x2 * cdf)
        dx2 = dout * x1 * (cdf + x2 * pdf)
    else:
        s = 1.0 / (1.0 + tl.exp(-x1))
        dx1 = dout * x2 * s * (1.0 + x1 * (1.0 - s))
        dx2 = dout * (x1 * s)
    return dx1, dx2


@triton.jit
def _gated_fwd_kernel(X, OUT, stride_x, stride_out, n_rows, n_cols,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GEGLU: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    first = X + rows[:, None] * stride_x + cols[None, :]
    # Upcast on load: the interpreter multiplies bf16 by bf16 wrongly, and fp32 is the accuracy we promise.
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + n_cols, mask=mask, other=0.0).to(tl.float32)
    out = gate_forward(x1, x2, GEGLU)
    tl.store(OUT + rows[:, None] * stride_out + cols[None, :], out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _gated_bwd_kernel(DOUT, X, DX, stride_dout, stride_x, stride_dx, n_rows, n_cols,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GEGLU: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    first = X + rows[:, None] * stride_x + cols[None, :]
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + n_cols, mask=mask, other=0.0).to(tl.float32)
    dout = tl.load(DOUT + rows[:, None] * stride_dout + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dx1, dx2 = gate_backward(dout, x1, x2, GEGLU)
    grad_first = DX + rows[:, None] * stride_dx + cols[None, :]
    tl.store(grad_first, dx1.to(DX.dtype.element_ty), mask=mask)
    tl.store(grad_first + n_cols, dx2.to(DX.dtype.element_ty), mask=mask)


def _blocks(n_rows: int, n_cols: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): the widest column block (<= 1024) that pads F by at most 1/8.

    Padding wastes lanes, not bandwidth, but a 1024 block on F = 1365 would idle a third of them;
    F = 1365 gets 128 (3% padding), F = 85 gets 32.
    """
    block_n = min(next_pow2(n_cols), 1024)
    while block_n > 32 and triton.cdiv(n_cols, block_n) * block_n - n_cols > n_cols / 8:
        block_n //= 2
    block_m = max(1, min(TILE_ELEMENTS // block_n, next_pow2(max(n_rows, 1))))
    return block_m, block_n


def _split_width(x: torch.Tensor) -> int:
    if x.shape[-1] % 2:
        raise ValueError(f"gated activation needs an even last dimension [..., 2F], got {tuple(x.shape)}")
    return x.shape[-1] // 2


# Each launch is a torch custom op (see kernels/rmsnorm.py for why).
@torch.library.custom_op("ctclip_kernels::gated_forward", mutates_args=())
def gated_forward(x: torch.Tensor, activation: str) -> torch.Tensor:
    """out[..., F] from x[..., 2F]; `activation` is "swiglu" or "geglu" (see module docstring)."""
    check_float(x, f"{activation} input")
    n_cols = _split_width(x)
    x2 = as_rows(x, 2 * n_cols)
    n_rows = x2.shape[0]
    out = output_buffer((n_rows, n_cols), x.dtype, x.device, INTERPRETED)
    if n_rows and n_cols:
        block_m, block_n = _blocks(n_rows, n_cols)
        grid = (triton.cdiv(n_rows, block_m), triton.cdiv(n_cols, block_n))
        _gated_fwd_kernel[grid](x2, out, x2.stride(0), out.stride(0), n_rows, n_cols,
                                BLOCK_M=block_m, BLOCK_N=block_n, GEGLU=activation == "geglu",
                                num_warps=num_warps(block_m * block_n))
    return out.to(x.dtype).view(*x.shape[:-1], n_cols)


@gated_forward.register_fake
def _(x: torch.Tensor, activation: str) -> torch.Tensor:
    check_float(x, f"{activation} input")
    return x.new_empty(*x.shape[:-1], _split_width(x))


@torch.library.custom_op("ctclip_kernels::gated_backward", mutates_args=())
def gated_backward(dout: torch.Tensor, x: torch.Tensor, activation: str) -> torch.Tensor:
    """dx[..., 2F] (x's dtype) from dout[..., F] and the saved input x."""
    n_cols = _split_width(x)
    x2 = as_rows(x, 2 * n_cols)
    dout2 = as_rows(dout, n_cols)
    n_rows = x2.shape[0]
    dx = output_buffer((n_rows, 2 * n_cols), x.dtype, x.device, INTERPRETED)
    if n_rows and n_cols:
        block_m, block_n = _blocks(n_rows, n_cols)
        grid = (triton.cdiv(n_rows, block_m), triton.cdiv(n_cols, block_n))
        _gated_bwd_kernel[grid](dout2, x2, dx, dout2.stride(0), x2.stride(0), dx.stride(0), n_rows, n_cols,
                                BLOCK_M=block_m, BLOCK_N=block_n, GEGLU=activation == "geglu",
                                num_warps=num_warps(block_m * block_n))
    return dx.to(x.dtype).view(x.shape)


@gated_backward.register_fake
def _(dout: torch.Tensor, x: torch.Tensor, activation: str) -> torch.Tensor:
    return x.new_empty(x.shape)


class TritonGatedFunction(torch.autograd.Function):
    """Autograd wrapper: saves only the [..., 2F] input; the backward recomputes the activation."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, activation: str) -> torch.Tensor:
        # Save the unit-stride row view the kernel reads, so the backward never copies x a second time.
        x_rows = as_rows(x, x.shape[-1])
        out = gated_forward(x_rows, activation)
        ctx.save_for_backward(x_rows)
        ctx.activation = activation
        ctx.x_shape = x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        (x_rows,) = ctx.saved_tensors
        return gated_backward(dout, x_rows, ctx.activation).view(ctx.x_shape), None


def triton_swiglu(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :F]) * x[..., F:] for x of shape [..., 2F]; differentiable."""
    return TritonGatedFunction.apply(x, "swiglu")


def triton_geglu(x: torch.Tensor) -> torch.Tensor:
    """x[..., :F] * gelu(x[..., F:]) (exact erf GELU) for x of shape [..., 2F]; differentiable."""
    return TritonGatedFunction.apply(x, "geglu")


class TritonSwiGLU(nn.Module):
    """Fused `a, b = x.chunk(2, -1); silu(a) * b`: [..., 2F] -> [..., F], no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TritonGatedFunction.apply(x, "swiglu")


class TritonGEGLU(nn.Module):
    """Fused CT-CLIP GEGLU `value, gate = x.chunk(2, -1); value * F.gelu(gate)` (exact erf GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TritonGatedFunction.apply(x, "geglu")
