"""The `attention` axis: which kernel computes softmax(scale * q k^T + bias) v.

Every backend receives the same inputs: q, k, v of shape (B, H, N, D) with q and k already
L2-normalised and multiplied by CT-CLIP's learnable per-dimension scales, an optional bias
(H, N, N) and the fixed logit scale 8. So switching the backend changes the kernel only, never the
model: QK-norm, the scale of 8 and (where the kernel can take it) the position bias are kept.
(The seed project's "flash" path silently dropped QK-norm, the scale and the bias.)
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from models.registry import Registry

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]
ATTENTION: Registry[AttentionFn] = Registry("attention")

_LEARNED_BIAS = ("cpb", "cpb_table")


def _has_learned_bias(variant) -> bool:
    return variant.position in _LEARNED_BIAS


def _needs_cuda(name: str) -> Callable[[object, torch.device], "str | None"]:
    def check(variant, device: torch.device) -> "str | None":
        if device.type != "cuda":
            return f"{name} runs on CUDA GPUs only (device is {device.type})"
        return None

    return check


def _chain(*checks: Callable[[object, torch.device], "str | None"]) -> Callable[[object, torch.device], "str | None"]:
    def check(variant, device: torch.device) -> "str | None":
        for c in checks:
            reason = c(variant, device)
            if reason:
                return reason
        return None

    return check


def _no_learned_bias(name: str) -> Callable[[object, torch.device], "str | None"]:
    def check(variant, device: torch.device) -> "str | None":
        if _has_learned_bias(variant):
            return (f"{name} takes no additive attention bias, and position={variant.position} is a learned "
                    f"bias (use position=none or rope)")
        return None

    return check


def _half_precision_on_cuda(name: str) -> Callable[[object, torch.device], "str | None"]:
    def check(variant, device: torch.device) -> "str | None":
        if device.type == "cuda" and variant.precision == "fp32":
            return f"{name} computes in fp16/bf16 only (precision=fp32)"
        return None

    return check


def _package(module: str, pip_name: str) -> Callable[[object, torch.device], "str | None"]:
    def check(variant, device: torch.device) -> "str | None":
        if importlib.util.find_spec(module) is None:
            return f"the {pip_name} package is not installed (pip install {pip_name})"
        return None

    return check


def _same_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # Under autocast q and k come out of the fp32 QK scales in fp32 while v is half precision; fused
    # kernels want one dtype, and the math path casts to v's dtype at its first matmul anyway.
    return q.to(v.dtype), k.to(v.dtype), v


@ATTENTION.register("math")
def math_attention(q, k, v, bias, scale):
    """CT-CLIP's own explicit softmax: materialises the (B, H, N, N) logits and probabilities."""
    sim = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if bias is not None:
        sim = sim + bias
    # Casting the probabilities to v's dtype is what autocast does at this einsum upstream.
    return torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1).to(v.dtype), v)


def _sdpa(q, k, v, bias, scale, backends: "list[SDPBackend] | None" = None):
    q, k, v = _same_dtype(q, k, v)
    mask = None if bias is None else bias.to(v.dtype).unsqueeze(0)
    if backends is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    with sdpa_kernel(backends):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


@ATTENTION.register("sdpa")
def sdpa(q, k, v, bias, scale):
    """torch SDPA, letting PyTorch pick the kernel (with a learned bias that is math or mem-efficient)."""
    return _sdpa(q, k, v, bias, scale)


@ATTENTION.register("sdpa_flash", supports=_chain(_no_learned_bias("the flash SDPA kernel"),
                                                   _half_precision_on_cuda("the flash SDPA kernel")))
def sdpa_flash(q, k, v, bias, scale):
    """torch SDPA pinned to FlashAttention (CUDA) or PyTorch's CPU flash kernel."""
    return _sdpa(q, k, v, bias, scale, [SDPBackend.FLASH_ATTENTION])


@ATTENTION.register("sdpa_efficient", supports=_needs_cuda("the memory-efficient SDPA kernel"))
def sdpa_efficient(q, k, v, bias, scale):
    """torch SDPA pinned to the memory-efficient (xformers-derived) kernel, which back-propagates into a bias."""
    return _sdpa(q, k, v, bias, scale, [SDPBackend.EFFICIENT_ATTENTION])


# cuDNN's attention op is not differentiable in its bias (torch 2.11 refuses one that requires grad) and
# has only fp16/bf16 kernels: with either, the pinned call would fail with "No available kernel".
@ATTENTION.register("sdpa_cudnn", supports=_chain(_needs_cuda("the cuDNN SDPA kernel"),
                                                   _no_learned_bias("the cuDNN SDPA kernel"),
                                                   _half_precision_on_cuda("the cuDNN SDPA kernel")))
def sdpa_cudnn(q, k, v, bias, scale):
    """torch SDPA pinned to cuDNN attention."""
    return _sdpa(q, k, v, bias, scale, [SDPBackend.CUDNN_ATTENTION])


def _flex_supports(variant, device: torch.device) -> "str | None":
    if device.type != "cuda":
        return f"FlexAttention has no backward pass on {device.type} in torch {torch.__version__}"
    return None


@functools.cache
def _compiled_flex_attention():
    # Eager flex materialises the scores; compiled (once per process) it is one fused kernel.
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@ATTENTION.register("flex", supports=_flex_supports)
def flex(q, k, v, bias, scale):
    """FlexAttention; the bias enters as a score_mod that indexes the (H, N, N) tensor."""
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = _same_dtype(q, k, v)
    score_mod = None
    if bias is not None:
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[h, q_idx, kv_idx]
    if q.device.type == "cuda":
        return _compiled_flex_attention()(q, k, v, score_mod=score_mod, scale=scale)
    return flex_attention(q, k, v, score_mod=score_mod, scale=scale)


@ATTENTION.register("flash_attn", supports=_chain(_needs_cuda("flash-attn"), _package("flash_attn", "flash-attn"),
                                                   _no_learned_bias("flash-attn"),
                                                   _half_precision_on_cuda("flash-attn")))
def flash_attn(q, k, v, bias, scale):
    """The flash-attn package (FlashAttention-2), layout (B, N, H, D)."""
    from flash_attn import flash_attn_func

    q, k, v = _same_dtype(q, k, v)
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale)
    return out.transpose(1, 2)


@ATTENTION.register("xformers", supports=_chain(_needs_cuda("xformers"), _package("xformers", "xformers"),
                                                 _half_precision_on_cuda("xformers' CUTLASS kernel")))
def xformers(q, k, v, bias, scale):
    """xformers memory_efficient_attention; a bias must be a full (B, H, N, N) tensor to get its gradient."""
    import xformers.ops as xops

    q, k, v = _same_dtype(q, k, v)
    attn_bias = None
    if bias is not None:
        attn_bias = bias.to(v.dtype).unsqueeze(0).expand(q.shape[0], -1, -1, -1).contiguous()
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=attn_bias, scale=scale
    )
    return out.transpose(1, 2)
