"""One CT-ViT stage: `depth` residual layers of PEG -> self-attention -> gated FF, then an output norm."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, noop_context_fn

from models.attention import Attention
from models.mlp import FeedForward
from models.norms import fuses_residual_add, make_norm
from models.peg import PEG, Grid
from models.position import SpatialPosition


def maybe_checkpointed(enabled: bool, module: nn.Module, *args, context_fn=noop_context_fn):
    """`module(*args)`, recomputed in backward instead of kept for it when `enabled` and training with
    gradients on. Non-reentrant checkpointing also handles inputs captured by the call that need grad
    (the position bias). `context_fn` is torch.utils.checkpoint's (a forward and a recomputation
    context per call): the holders' `checkpoint_context_fn`, which bench.recompute sets to count the
    recomputation's FLOPs and leaves as the no-op otherwise."""
    if enabled and module.training and torch.is_grad_enabled():
        return checkpoint(module, *args, **checkpoint_options(context_fn))
    return module(*args)


def checkpoint_options(context_fn=noop_context_fn) -> dict:
    """torch.utils.checkpoint's keyword arguments for every checkpointed region of the model: non-reentrant,
    and `context_fn` only when set. torch.compile treats any explicit context_fn, the no-op included, as a
    selective-checkpointing policy, and plain checkpointing as recompute-everything."""
    options = {"use_reentrant": False}
    if context_fn is not noop_context_fn:
        options["context_fn"] = context_fn
    return options


class Layer(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, ff_inner: int, variant, stage: str) -> None:
        super().__init__()
        self.peg = PEG(dim, stage, variant.peg_layout, variant.peg_impl)
        self.attn = Attention(dim, heads, dim_head, variant.norm, variant.attention, variant.qk_norm)
        self.ff = FeedForward(dim, ff_inner, variant.norm, variant.mlp)
        self.fused_add_norm = fuses_residual_add(self.attn.norm) and fuses_residual_add(self.ff.norm)

    def forward(self, x: torch.Tensor, grid: Grid, position: "SpatialPosition | None") -> torch.Tensor:
        if self.fused_add_norm:
            return self._forward_fused_add_norm(x, grid, position)
        x = self.peg(x, grid) + x
        x = self.attn(x, position) + x
        return self.ff(x) + x

    def _forward_fused_add_norm(self, x: torch.Tensor, grid: Grid,
                                position: "SpatialPosition | None") -> torch.Tensor:
        # The same computation with each add that precedes a norm taken into that norm's kernel, which
        # also writes the stream in the matmul dtype for K/V (kernels/add_rmsnorm.py). The last add feeds
        # the next layer's PEG convolution, not a norm, and stays as it is.
        x, q_input, kv_input = self.attn.norm.add_and_norm(self.peg(x, grid), x, sum_copy=True)
        x, ff_input, _ = self.ff.norm.add_and_norm(self.attn.attend(q_input, kv_input, position), x)
        return self.ff.transform(ff_input) + x


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_inner: int, variant,
                 stage: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Layer(dim, heads, dim_head, ff_inner, variant, stage)
                                    for _ in range(depth))
        self.norm_out = make_norm(variant.norm, dim, "out")
        self.checkpointing = variant.checkpointing
        self.checkpoint_context_fn = noop_context_fn

    def forward(self, x: torch.Tensor, grid: Grid, position: "SpatialPosition | None" = None) -> torch.Tensor:
        for layer in self.layers:
            x = maybe_checkpointed(self.checkpointing, layer, x, grid, position,
                                   context_fn=self.checkpoint_context_fn)
        return self.norm_out(x)
