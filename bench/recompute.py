"""The FLOPs activation checkpointing recomputes, counted on the real step so MFU can leave them out.

MFU counts the model's FLOPs: those of one forward and one backward pass, whatever the implementation
recomputes (PaLM, appendix B; "hardware FLOPs utilization", HFU, counts the recomputation too). A
FlopCounterMode around a checkpointed step counts every executed op, so the forward that checkpointing
reruns inside backward lands in the backward's count. torch.utils.checkpoint takes a `context_fn`
returning (forward context, recomputation context) per checkpointed call; `counting_recomputation`
hands every checkpointed region of a CT-CLIP model one whose recomputation context is a FlopCounterMode
of its own, nested inside whatever counter is active, and leaves the no-op context function in place
afterwards. model FLOPs = executed FLOPs - recomputed FLOPs, exactly: the same ops a model without
checkpointing runs (tested).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterator

from torch import nn
from torch.utils.checkpoint import noop_context_fn
from torch.utils.flop_counter import FlopCounterMode

from bench.flops import counter
from models.build import enable_text_checkpointing


@dataclass
class RecomputedFlops:
    """One FlopCounterMode per recomputed region, made when the region runs forward."""

    counters: list[FlopCounterMode] = field(default_factory=list)

    def context_fn(self) -> tuple[nullcontext, FlopCounterMode]:
        recomputation = counter()
        self.counters.append(recomputation)
        return nullcontext(), recomputation

    @property
    def flops(self) -> float:
        return float(sum(c.get_total_flops() for c in self.counters))


@contextmanager
def counting_recomputation(model: nn.Module) -> Iterator[RecomputedFlops]:
    """Within this block, every checkpointed region of `model` (the modules with a
    `checkpoint_context_fn`, and a checkpointed transformers text tower) counts its recomputation."""
    recomputed = RecomputedFlops()
    holders = [m for m in model.modules() if hasattr(m, "checkpoint_context_fn")]
    variant = getattr(model, "variant", None)
    text = getattr(model, "text_encoder", None) if variant is not None and variant.checkpointing else None
    for holder in holders:
        holder.checkpoint_context_fn = recomputed.context_fn
    if text is not None:
        enable_text_checkpointing(text, recomputed.context_fn)
    try:
        yield recomputed
    finally:
        for holder in holders:
            holder.checkpoint_context_fn = noop_context_fn
        if text is not None:
            enable_text_checkpointing(text)
