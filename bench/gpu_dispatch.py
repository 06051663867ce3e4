"""The kernel a CUDA build would pick, where the CPU build's fake step (bench.estimate) picks another.

Fake tensors are CPU tensors, so SDPA chooses among the CPU build's kernels. One choice differs from a
GPU's in a way that matters at paper size: attention with dropout. CUDA's flash and memory-efficient
kernels apply dropout inside the kernel (a Philox seed and offset are all they keep), so BERT's training
attention (dropout 0.1, a padding mask) runs fused in bf16 there. The CPU flash kernel refuses dropout,
so the CPU build falls back to the math path, which also upcasts bf16 to fp32: a materialised
(B, heads, N, N) fp32 score matrix, its softmax, a dropout mask and the dropped probabilities, all saved
for backward. At paper size, batch 4, that is about 1.8 GiB of predicted peak and 5.7 ms of the
roofline step that no GPU step contains.

`fuse_attention_dropout` sets the attention-probability dropout of the text tower's self-attention
layers to 0 in a model built for estimation: transformers then calls SDPA with dropout_p=0, the CPU
flash kernel takes it, and its inputs, outputs, saved tensors (output and logsumexp) and FLOP formula
are those of CUDA's fused kernels; on a GPU the dropout itself adds no memory traffic. It changes the
module, not a dispatch mode, so a checkpointed layer's recomputation inside backward makes the same
choice as its forward. CT-CLIP's own attention has no dropout.
"""

from __future__ import annotations

from torch import nn


def fuse_attention_dropout(model: nn.Module) -> int:
    """Set every transformers BERT self-attention's probability dropout to 0; returns how many were > 0."""
    from transformers.models.bert.modeling_bert import BertSelfAttention

    changed = 0
    for module in model.modules():
        if isinstance(module, BertSelfAttention) and module.dropout.p > 0:
            module.dropout.p = 0.0
            changed += 1
    return changed
