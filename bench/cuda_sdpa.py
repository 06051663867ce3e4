"""The SDPA kernel the CUDA build picks, applied to the fake CPU step (bench.estimate).

`F.scaled_dot_product_attention` chooses its kernel by device inside C++ (a dispatch stub, not an op),
so a fake step on CPU tensors gets the CPU build's choice: CPU flash, which takes any additive mask, or
math. A CUDA build on an sm80+ GPU walks `torch._C._get_sdp_priority_order()` (flash, memory-efficient,
math, cuDNN by default) and takes the first kernel whose constraints hold: flash takes no mask, so
attention with a learned bias (CT-CLIP's `sdpa` with cpb) runs the memory-efficient kernel, which saves
only the output and its log-sum-exp where math saves the (B, H, N, N) probabilities, and
`sdpa_efficient` runs where the CPU build has no such kernel at all.

`CudaSdpaMode` intercepts the Python call (bench.gpu_dispatch runs each attention layer under it) and
runs what the CUDA build would: the memory-efficient op itself (its fake implementation is
device-agnostic, and autograd records its backward), or the CPU's flash and math kernels for those
choices (the same saved tensors and FLOP formulas as CUDA's). The constraints follow `sdp_utils.cpp`
for dense 4-D inputs on sm80+. cuDNN's depend on the runtime cuDNN version, so a walk that reaches an
enabled cuDNN raises rather than guess. The order is this build's default; recent CUDA builds move
cuDNN first on sm90/sm100 when their cuDNN is newer than 9.15, which a CPU build cannot see (where it
happens, the GPU check's estimate-against-measured rows show the difference).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

HALF = (torch.float16, torch.bfloat16)


class NoCudaKernel(RuntimeError):
    """CUDA's SDPA would find no kernel for these inputs: the variant cannot run on a GPU as configured."""


class NotEmulated(NotImplementedError):
    """A choice this module cannot make for a CPU build (cuDNN's constraints, grouped-query attention)."""


# The CUDA composite pads a memory-efficient mask whose strides are not multiples of this (elements).
MEM_EFFICIENT_MASK_ALIGNMENT = 16
# The global flags `sdpa_kernel` sets, one per backend the CUDA build can choose.
_ENABLED = {SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled,
            SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled,
            SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled,
            SDPBackend.CUDNN_ATTENTION: torch.backends.cuda.cudnn_sdp_enabled}


def _enabled_in_priority_order() -> list[SDPBackend]:
    return [b for b in map(SDPBackend, torch._C._get_sdp_priority_order()) if b in _ENABLED and _ENABLED[b]()]


def _dense_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool,
              ignore_singleton_stride: bool) -> bool:
    # check_tensor_shapes, check_nonzero_sequence_lengths_dense, check_last_dim_stride_equals_1_dense,
    # check_batch_size_and_num_heads_dense
    if not (q.dim() == k.dim() == v.dim() == 4):
        return False
    if min(q.shape[2], k.shape[2], v.shape[2]) == 0:
        return False
    for t in (q, k, v):
        if t.stride(-1) != 1 and not (ignore_singleton_stride and t.shape[-1] == 1):
            return False
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        return False
    heads_q, heads_k, heads_v = q.shape[1], k.shape[1], v.shape[1]
    if heads_k != heads_v:
        return False
    return heads_q == heads_k or (enable_gqa and heads_q % heads_k == 0)


def can_use_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: "torch.Tensor | None",
                  is_causal: bool, enable_gqa: bool) -> bool:
    head = q.shape[-1]
    return (attn_mask is None and head == k.shape[-1] == v.shape[-1] and head <= 256
            and q.dtype in HALF and q.dtype == k.dtype == v.dtype
            and not (is_causal and q.shape[2] != k.shape[2])
            and _dense_ok(q, k, v, enable_gqa, ignore_singleton_stride=True))


def can_use_mem_efficient(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool) -> bool:
    # sm80+: tensor cores for every dtype, so GEMM alignment is 128 bits (8 halves, 4 floats).
    if q.dtype not in (*HALF, torch.float32) or not (q.dtype == k.dtype == v.dtype):
        return False
    alignment = 8 if q.dtype in HALF else 4
    head_q, head_v = q.shape[-1], v.shape[-1]
    if head_q != k.shape[-1] or head_q % alignment or head_v % alignment or not head_q or not head_v:
        return False
    # check_data_ptr_alignment_mem_efficient: the caching allocator aligns storages to 256 bytes, so
    # only the storage offset decides.
    if any(t.storage_offset() % alignment for t in (q, k, v)):
        return False
    return _dense_ok(q, k, v, enable_gqa, ignore_singleton_stride=False)


def cuda_sdp_choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    attn_mask: "torch.Tensor | None" = None, is_causal: bool = False,
                    enable_gqa: bool = False) -> SDPBackend:
    """The backend `select_sdp_backend` returns for these inputs on an sm80+ GPU, under the current
    priority order and `sdpa_kernel` flags; raises where it would find none. (Dropout only matters to
    cuDNN, which is not emulated.)"""
    enabled = _enabled_in_priority_order()
    for backend in enabled:
        if backend == SDPBackend.FLASH_ATTENTION and can_use_flash(q, k, v, attn_mask, is_causal, enable_gqa):
            return backend
        if backend == SDPBackend.EFFICIENT_ATTENTION and can_use_mem_efficient(q, k, v, enable_gqa):
            return backend
        if backend == SDPBackend.MATH:
            return backend
        if backend == SDPBackend.CUDNN_ATTENTION:
            raise NotEmulated("cuDNN SDPA's constraints depend on the runtime cuDNN version, which a CPU "
                              "build cannot know; bench.cuda_sdpa does not emulate them")
    names = [b.name for b in enabled]
    raise NoCudaKernel(f"No available kernel: CUDA's SDPA takes none of {names} for {q.dtype} q/k/v "
                       f"of head size {q.shape[-1]}{' with a mask' if attn_mask is not None else ''}")


def _mem_efficient_mask(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    # The CUDA composite's preprocess_mask: boolean masks become additive, the mask is broadcast to
    # (B, H, Nq, Nk), and one whose strides are not multiples of 16 is padded and sliced back.
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    aligned = mask.stride(-1) == 1 and all(s % MEM_EFFICIENT_MASK_ALIGNMENT == 0 for s in mask.stride()[:-1])
    if aligned:
        return mask
    last = mask.shape[-1]
    pad = MEM_EFFICIENT_MASK_ALIGNMENT - last % MEM_EFFICIENT_MASK_ALIGNMENT
    return F.pad(mask, (0, pad))[..., :last]


def _sdpa_args(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attn_mask: "torch.Tensor | None" = None, dropout_p: float = 0.0, is_causal: bool = False,
               scale: "float | None" = None, enable_gqa: bool = False) -> dict[str, Any]:
    return dict(query=query, key=key, value=value, attn_mask=attn_mask, dropout_p=dropout_p,
                is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


class CudaSdpaMode(TorchFunctionMode):
    """Within this mode, `F.scaled_dot_product_attention` runs the kernel a CUDA build would choose."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        a = _sdpa_args(*args, **kwargs)
        q, k, v, mask = a["query"], a["key"], a["value"], a["attn_mask"]
        backend = cuda_sdp_choice(q, k, v, mask, a["is_causal"], a["enable_gqa"])
        if backend == SDPBackend.EFFICIENT_ATTENTION:
            if q.shape[1] != k.shape[1]:
                raise NotEmulated("bench.cuda_sdpa does not emulate grouped-query attention")
            bias = None if mask is None else _mem_efficient_mask(mask, q, k)
            compute_log_sumexp = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
            return torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, bias, compute_log_sumexp, a["dropout_p"], a["is_causal"], scale=a["scale"])[0]
        # Flash and math: the CPU build's kernels save the same tensors (output and log-sum-exp, or the
        # upcast probabilities) and count the same FLOPs.
        with sdpa_kernel([backend]):
            return func(*args, **kwargs)
