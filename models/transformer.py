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
from models.residual import RESIDUALS


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

    def forward(self, x: torch.Tensor, grid: Grid, position: "SpatialPosition | None",
                branch: "torch.Tensor | None" = None):
        """The layer's output x; for layers that fuse the residual adds (`fused_add_norm`), the pair
        (x, branch) whose sum is that output, and `branch` is the previous such layer's."""
        if self.fused_add_norm:
            return self._forward_fused_add_norm(x, grid, position, branch)
        if branch is not None:
            raise ValueError("only layers that fuse the residual adds take the previous layer's branch")
        x = self.peg(x, grid) + x
        x = self.attn(x, position) + x
        return self.ff(x) + x

    def _forward_fused_add_norm(self, x: torch.Tensor, grid: Grid, position: "SpatialPosition | None",
                                branch: "torch.Tensor | None") -> tuple[torch.Tensor, torch.Tensor]:
        # The same computation with each add taken into the kernel of what reads the sum next: the
        # previous layer's last add into this PEG (kernels/peg_add_conv.py), the two adds that precede a
        # norm into that norm, which also writes the stream in the matmul dtype for K/V
        # (kernels/add_rmsnorm.py). This layer's last add is left to the next layer's PEG, or to the stage.
        if branch is None:
            peg_out = self.peg(x, grid)
        else:
            x, peg_out = self.peg.add_and_convolve(branch, x, grid)
        x, q_input, kv_input = self.attn.norm.add_and_norm(peg_out, x, sum_copy=True)
        x, ff_input, _ = self.ff.norm.add_and_norm(self.attn.attend(q_input, kv_input, position), x)
        return x, self.ff.transform(ff_input)


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_inner: int, variant,
                 stage: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Layer(dim, heads, dim_head, ff_inner, variant, stage)
                                    for _ in range(depth))
        self.norm_out = make_norm(variant.norm, dim, "out")
        self.stream_dtype = RESIDUALS.get(variant.residual).impl
        self.checkpointing = variant.checkpointing
        self.checkpoint_context_fn = noop_context_fn

    def forward(self, x: torch.Tensor, grid: Grid, position: "SpatialPosition | None" = None) -> torch.Tensor:
        x = self.stream_dtype(x)
        if not all(layer.fused_add_norm for layer in self.layers):
            for layer in self.layers:
                x = maybe_checkpointed(self.checkpointing, layer, x, grid, position,
                                       context_fn=self.checkpoint_context_fn)
            return self.norm_out(x)
        # Each layer hands its last residual add to the next layer's PEG, and the last layer's goes into
        # the output norm, which keeps the stream's dtype. Checkpointed, a layer keeps its inputs for the
        # recomputation: the stream alone costs less than the stream and the branch (0.3 GiB at paper
        # size), so there the add runs between the layers.
        branch = None
        for layer in self.layers:
            x, branch = maybe_checkpointed(self.checkpointing, layer, x, grid, position, branch,
                                           context_fn=self.checkpoint_context_fn)
            if self.checkpointing:
                x, branch = x + branch, None
        if branch is None:
            return self.norm_out(x)
        if fuses_residual_add(self.norm_out):
            return self.norm_out.add_and_norm(branch, x, out_dtype=torch.promote_types(x.dtype, branch.dtype))[1]
        return self.norm_out(x + branch)
