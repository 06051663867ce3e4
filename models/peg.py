"""PEG: CT-CLIP's position-encoding generator, a depthwise 3x3x3 convolution over the token grid.

Padding is zero on rows and columns and causal on the depth ("frame") axis: two slabs before, none
after, as upstream sets `peg_causal=True` for both stages.

The temporal-stage layout quirk. Upstream restores the 5-D grid with a raw `reshape(b, t, h, w, d)`.
In the spatial stage tokens are laid out (b, t, h, w) and that is right. In the temporal stage they are
laid out (b, h, w, t), so the same reshape makes the convolution's depth axis the real image rows, its
row axis the real columns and its column axis the real depth (the causal padding lands on image rows).
`peg_layout="upstream"` reproduces that exactly (the faithful choice, needed to use upstream weights);
`"corrected"` rearranges to the true (t, h, w) grid.

The peg_impl axis: how the convolution runs. `conv3d` is upstream's: the channels-first view padded
(an fp32 copy of the stream), then `nn.Conv3d`, whose depthwise 5-D case has no cuDNN kernel on CUDA.
`triton` computes the same on the (B, T, H, W, C) grid view in place, one kernel each way
(kernels/peg_conv.py), with the same `conv` parameters, so state dicts interchange.

`PEG.add_and_convolve(branch, x, grid)` is the layer's residual add followed by the PEG, for layers
that leave their last add to the next layer (models/transformer.py): `conv3d` adds, then convolves;
`triton` does both in the PEG's kernels (kernels/peg_add_conv.py), the same numbers in fewer passes.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.norms import _kernels_reason
from models.registry import Registry

Grid = tuple[int, int, int, int]  # (batch, depth, height, width) of the token grid
# (grid (B, T, H, W, C) view, the Conv3d holding the parameters) -> the convolved grid, same layout.
PEG_IMPLS: Registry[Callable[[torch.Tensor, nn.Conv3d], torch.Tensor]] = Registry("peg_impl")
# The same axis with the residual add before the PEG: (x grid, branch grid, conv) -> (x + branch, its PEG).
AddThenConvolve = Callable[[torch.Tensor, torch.Tensor, nn.Conv3d], tuple[torch.Tensor, torch.Tensor]]
PEG_ADD_IMPLS: Registry[AddThenConvolve] = Registry("peg_impl (with the residual add)")


@PEG_IMPLS.register("conv3d")
def conv3d(grid: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """CT-CLIP's: zero padding (two slabs before on the causal axis) of the channels-first view, then the
    depthwise nn.Conv3d."""
    g = rearrange(grid, "b t h w d -> b d t h w")
    g = F.pad(g, (1, 1, 1, 1, 2, 0))  # (w, h, causal t)
    return rearrange(conv(g), "b d t h w -> b t h w d")


@PEG_IMPLS.register("triton", supports=_kernels_reason)
def triton(grid: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """The same convolution in one Triton kernel each way, on the grid where it lies (kernels/peg_conv.py)."""
    from kernels.peg_conv import triton_peg_conv

    return triton_peg_conv(grid, conv.weight, conv.bias)


@PEG_ADD_IMPLS.register("conv3d")
def add_then_conv3d(grid: torch.Tensor, branch: torch.Tensor, conv: nn.Conv3d
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    total = grid + branch
    return total, conv3d(total, conv)


@PEG_ADD_IMPLS.register("triton", supports=_kernels_reason)
def triton_add(grid: torch.Tensor, branch: torch.Tensor, conv: nn.Conv3d) -> tuple[torch.Tensor, torch.Tensor]:
    """The add in the PEG's Triton kernels: they write the sum and convolve it, and sum its gradients."""
    from kernels.peg_add_conv import triton_peg_add_conv

    return triton_peg_add_conv(grid, branch, conv.weight, conv.bias)


class PEG(nn.Module):
    def __init__(self, dim: int, stage: str, layout: str, impl: str = "conv3d") -> None:
        super().__init__()
        if stage not in ("spatial", "temporal") or layout not in ("upstream", "corrected"):
            raise ValueError(f"bad PEG stage/layout {stage!r}/{layout!r}")
        self.stage = stage
        self.layout = layout
        self._convolve = PEG_IMPLS.get(impl).impl
        self._add_and_convolve = PEG_ADD_IMPLS.get(impl).impl
        self.conv = nn.Conv3d(dim, dim, kernel_size=3, groups=dim)

    def _to_grid(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        b, t, h, w = grid
        if self.stage == "spatial" or self.layout == "upstream":
            return x.reshape(b, t, h, w, -1)
        return rearrange(x, "(b h w) t d -> b t h w d", b=b, h=h, w=w)

    def _from_grid(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.stage == "spatial" or self.layout == "upstream":
            return x.reshape(like.shape)
        return rearrange(x, "b t h w d -> (b h w) t d")

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        return self._from_grid(self._convolve(self._to_grid(x, grid), self.conv), x)

    def add_and_convolve(self, branch: torch.Tensor, x: torch.Tensor, grid: Grid
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + branch, the PEG of that sum), both laid out as x."""
        total, out = self._add_and_convolve(self._to_grid(x, grid), self._to_grid(branch, grid), self.conv)
        return self._from_grid(total, x), self._from_grid(out, x)
