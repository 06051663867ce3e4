"""What a CUDA build would run, where the CPU build's fake step (bench.estimate) runs something else.

`cuda_dispatch()` is what a step runs under: CUDA's autocast policy (bench.cuda_autocast) and its fused
rms_norm (`fused_rms_norm`). The rest is set on the model: `choose_attention_as_on_cuda` (SDPA's kernel
choice, bench.cuda_sdpa), `fuse_attention_dropout`, `dropout_as_on_cuda`, and `use_attention_backend`
for the backends only CUDA has; and on the optimizer: `foreach_as_on_cuda`. Choices made by an active
Python mode would be lost where autograd recomputes a checkpointed layer (torch function modes are not
active there); a module's forward is called again, so choices set on modules hold.

Fake tensors are CPU tensors, so left alone SDPA chooses among the CPU build's kernels, and one choice
differs from a GPU's in a way that matters at paper size: attention with dropout. CUDA's flash and
memory-efficient kernels apply dropout inside the kernel (a Philox seed and offset are all they keep),
so BERT's training attention (dropout 0.1, a padding mask) runs fused in bf16 there. The CPU flash
kernel refuses dropout, so the CPU build falls back to the math path, which also upcasts bf16 to fp32:
a materialised (B, heads, N, N) fp32 score matrix, its softmax, a dropout mask and the dropped
probabilities, all saved for backward. At paper size, batch 4, that is about 1.8 GiB of predicted peak
and 5.6 ms of the roofline step that no GPU step contains.

`fuse_attention_dropout` sets the attention-probability dropout of the text tower's self-attention
layers to 0 in a model built for estimation, so SDPA is called with dropout_p=0 and bench.cuda_sdpa can
run whichever fused kernel CUDA would pick (memory-efficient for BERT's masked attention; flash, which
on CPU refuses dropout, where there is no mask); their inputs, outputs, saved tensors (output and
log-sum-exp) and FLOP formulas are those of the kernels with dropout, which adds no memory traffic on
a GPU. It changes the module, not a dispatch mode, so a checkpointed layer's recomputation inside
backward makes the same choice as its forward. CT-CLIP's own attention has no dropout.

The other dropouts (BERT's hidden states and embeddings) differ too: `F.dropout` is one
`native_dropout` kernel on CUDA, which saves a bool mask, but a composite on CPU tensors (a mask in the
input's dtype from `bernoulli_`, a `div_` and a `mul`, three passes). `dropout_as_on_cuda` has every
`nn.Dropout` call `native_dropout`, as the CUDA build's `dropout` does for 0 < p < 1.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from bench.cuda_autocast import cuda_autocast_policy
from bench.cuda_sdpa import CudaSdpaMode
from models import Variant
from models.attention import Attention
from models.attention_backends import ATTENTION


def fuse_attention_dropout(model: nn.Module) -> int:
    """Set every transformers BERT self-attention's probability dropout to 0; returns how many were > 0."""
    from transformers.models.bert.modeling_bert import BertSelfAttention

    changed = 0
    for module in model.modules():
        if isinstance(module, BertSelfAttention) and module.dropout.p > 0:
            module.dropout.p = 0.0
            changed += 1
    return changed


def dropout_as_on_cuda(model: nn.Module) -> int:
    """Have every nn.Dropout with 0 < p < 1 run as the CUDA build runs `F.dropout`: one native_dropout
    (a bool mask); returns how many modules were changed (a second call changes none)."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout) and 0 < module.p < 1 and "forward" not in vars(module):
            module.forward = functools.partial(_native_dropout, module)
            changed += 1
    return changed


def _native_dropout(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    if not module.training or x.numel() == 0:
        return x
    return torch.native_dropout(x, module.p, True)[0]


@contextmanager
def fused_rms_norm() -> Iterator[None]:
    """Within this block, the CPU build runs `rms_norm` as the CUDA build does: one `_fused_rms_norm`.

    Since torch 2.8 `rms_norm` calls `aten::_fused_rms_norm` on every device but MPS. The CUDA build has
    kernels for it and its backward, so autograd records one node that saves the input, the weight and
    the fp32 rstd (rows x 1). The CPU build has neither kernel, so the op decomposes above autograd and
    the graph saves an fp32 copy of the input, its square, the normalised product and more: about 4x
    the input in bf16 per norm, 1.6 GiB of the paper-size modern step that no GPU step holds.
    Registering CPU kernels for the two ops (here: their composite math, below autograd) turns on the
    generated autograd node, which is the same code in both builds. Nothing changes if this build
    already has a CPU kernel; the registration is removed on exit.
    """
    if torch._C._dispatch_has_kernel_for_dispatch_key("aten::_fused_rms_norm", "CPU"):
        yield
        return
    library = torch.library.Library("aten", "IMPL")
    try:
        library.impl("_fused_rms_norm", _fused_rms_norm_cpu, "CPU")
        library.impl("_fused_rms_norm_backward", _fused_rms_norm_backward_cpu, "CPU")
        yield
    finally:
        library._destroy()


def _fused_rms_norm_cpu(input: torch.Tensor, normalized_shape: list[int], weight: "torch.Tensor | None",
                        eps: "float | None") -> tuple[torch.Tensor, torch.Tensor]:
    # torch's own composite kernel; called below autograd, so it records and saves nothing.
    return torch.ops.aten._fused_rms_norm.default.decompose(input, normalized_shape, weight, eps)


def _fused_rms_norm_backward_cpu(grad_out: torch.Tensor, input: torch.Tensor, normalized_shape: list[int],
                                 rstd: torch.Tensor, weight: "torch.Tensor | None", output_mask: list[bool]
                                 ) -> tuple["torch.Tensor | None", "torch.Tensor | None"]:
    # y = x * rstd * w with rstd = (mean(x^2) + eps)^-1/2 over the normalised dims, in fp32:
    #   dx = rstd * (g*w - x_hat * mean(g*w * x_hat)),   dw = sum over the other dims of g * x_hat.
    reduced = tuple(range(input.dim() - len(normalized_shape), input.dim()))
    x_hat = input.float() * rstd
    grad_x_hat = grad_out.float() * weight.float() if weight is not None else grad_out.float()
    grad_input = grad_weight = None
    if output_mask[0]:
        projection = (grad_x_hat * x_hat).mean(dim=reduced, keepdim=True)
        grad_input = ((grad_x_hat - x_hat * projection) * rstd).to(input.dtype)
    if output_mask[1] and weight is not None:
        outer = tuple(range(input.dim() - len(normalized_shape)))
        grad_weight = (grad_out.float() * x_hat).sum(dim=outer).to(weight.dtype)
    return grad_input, grad_weight


@contextmanager
def cuda_dispatch() -> Iterator[None]:
    """Within this block, CPU tensors are cast and their rms_norm run as on the CUDA build."""
    with cuda_autocast_policy(), fused_rms_norm():
        yield


# Attention backends only the CUDA build has, and the backend whose code path (F.sdpa) they share: a
# fake step builds the stand-in and swaps the backend in (bench.cuda_sdpa picks the kernel).
CUDA_ONLY_ATTENTION = {"sdpa_efficient": "sdpa"}


def buildable_on_cpu(variant: Variant) -> Variant:
    """`variant` with a CUDA-only attention backend replaced by its CPU-buildable stand-in."""
    return variant.replace(attention=CUDA_ONLY_ATTENTION.get(variant.attention, variant.attention))


def set_up_as_on_cuda(model: nn.Module, variant: Variant) -> None:
    """Make a model built from `buildable_on_cpu(variant)` make `variant`'s choices as on the CUDA build:
    its attention backend, SDPA's kernel choice, BERT's fused dropout attention, native dropout."""
    use_attention_backend(model, variant.attention)
    model.variant = variant
    choose_attention_as_on_cuda(model)
    fuse_attention_dropout(model)
    dropout_as_on_cuda(model)


def use_attention_backend(model: nn.Module, backend: str) -> int:
    """Point every CT-ViT attention layer at `backend`'s function; returns how many were changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, Attention) and module.backend != backend:
            module.backend, module._attend = backend, ATTENTION.get(backend).impl
            changed += 1
    return changed


def choose_attention_as_on_cuda(model: nn.Module) -> int:
    """Run every attention layer's forward (CT-CLIP's and BERT's) under bench.cuda_sdpa's mode, so SDPA
    takes the kernel the CUDA build would, in forward and in a checkpointed layer's recomputation;
    returns how many layers were wrapped (a second call wraps none)."""
    from transformers.models.bert.modeling_bert import BertSelfAttention

    wrapped = 0
    for module in model.modules():
        if isinstance(module, (Attention, BertSelfAttention)) and "forward" not in vars(module):
            module.forward = _under_cuda_sdpa(module.forward)
            wrapped += 1
    return wrapped


def _under_cuda_sdpa(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with CudaSdpaMode():
            return forward(*args, **kwargs)
    return wrapped


def foreach_as_on_cuda(optimizer: torch.optim.Optimizer) -> int:
    """Give every parameter group left to torch's default the multi-tensor (foreach) path, which torch
    picks for CUDA parameters; for CPU ones it picks a per-parameter loop (4,880 ops in the modern
    paper-size step against 2,216). Returns how many groups were set."""
    changed = 0
    for group in optimizer.param_groups:
        if "foreach" in group and group["foreach"] is None and not group.get("fused"):
            group["foreach"] = True
            changed += 1
    return changed
