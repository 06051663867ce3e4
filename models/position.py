"""The `position` axis: how the spatial stage learns where a token sits in its 2-D slab.

- `cpb` (CT-CLIP): SwinV2's continuous position bias. For every (query, key) pair of the h x w slab the
  offset (dh, dw) goes through sign(x)*log(1+|x|) and an MLP 2 -> dim -> dim -> heads, giving an
  additive bias (heads, N, N), N = h*w, recomputed every forward and shared by all spatial layers.
  At paper size that is an MLP over 576*576 = 331,776 pairs with a 512-wide hidden layer.
- `cpb_table`: the same MLP with the same weights, evaluated once per unique offset ((2h-1)(2w-1) = 2,209
  at paper size) and gathered into (heads, N, N). Identical math, ~150x fewer MLP FLOPs.
- `rope`: axial 2-D rotary embedding on q and k (half of each head's dims rotate with the row, half with
  the column). No parameters, no bias, so fused kernels can run it.
- `none`: no spatial position signal beyond the PEG convolutions (what the seed project actually ran).

The temporal stage never gets a position signal, as in CT-CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from models.registry import Registry


@dataclass
class SpatialPosition:
    """What the spatial attention layers receive: an additive bias, a rotary table, or neither."""

    bias: "torch.Tensor | None" = None  # (heads, N, N), in the dtype autocast gives the MLP
    rope: "tuple[torch.Tensor, torch.Tensor] | None" = None  # cos, sin: (N, dim_head)


PositionFactory = Callable[[int, int, int], nn.Module]
POSITIONS: Registry[PositionFactory] = Registry("position")


def _log_distance(offsets: torch.Tensor) -> torch.Tensor:
    return torch.sign(offsets) * torch.log(offsets.abs() + 1)


class ContinuousPositionBias(nn.Module):
    """CT-CLIP's CPB; `gather_table=True` evaluates the MLP on unique offsets only (`cpb_table`)."""

    def __init__(self, dim: int, heads: int, gather_table: bool = False) -> None:
        super().__init__()
        self.gather_table = gather_table
        # Same layout as upstream (`net.0.0`, `net.1.0`, `net.2`) so checkpoints map one to one.
        self.net = nn.ModuleList([
            nn.Sequential(nn.Linear(2, dim), nn.LeakyReLU(0.1)),
            nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)),
            nn.Linear(dim, heads),
        ])

    def _mlp(self, offsets: torch.Tensor) -> torch.Tensor:
        # Upstream feeds the MLP fp32 offsets and lets autocast (if any) choose the matmul dtype.
        x = _log_distance(offsets.to(self.net[-1].weight.dtype))
        for layer in self.net:
            x = layer(x)
        return x

    def forward(self, h: int, w: int, device: torch.device) -> SpatialPosition:
        if self.gather_table:
            dh = torch.arange(-(h - 1), h, device=device)
            dw = torch.arange(-(w - 1), w, device=device)
            table_in = torch.stack(torch.meshgrid(dh, dw, indexing="ij"), dim=-1).reshape(-1, 2)
            table = self._mlp(table_in)  # ((2h-1)(2w-1), heads)
            rows = torch.arange(h, device=device).repeat_interleave(w)
            cols = torch.arange(w, device=device).repeat(h)
            index = (rows[:, None] - rows[None, :] + h - 1) * (2 * w - 1) + (cols[:, None] - cols[None, :] + w - 1)
            bias = table[index]  # (N, N, heads)
        else:
            grid = torch.stack(torch.meshgrid(
                torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
            ), dim=-1).reshape(-1, 2)
            bias = self._mlp(grid[:, None, :] - grid[None, :, :])  # (N, N, heads)
        return SpatialPosition(bias=bias.permute(2, 0, 1))


class AxialRotary(nn.Module):
    """2-D RoPE: the first half of each head's dims rotates with the row index, the second with the column."""

    def __init__(self, dim_head: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim_head % 4:
            raise ValueError(f"axial RoPE needs dim_head divisible by 4, got {dim_head}")
        quarter = dim_head // 4
        inv_freq = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float32) / quarter)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, h: int, w: int, device: torch.device) -> SpatialPosition:
        rows = torch.arange(h, device=device, dtype=torch.float32).repeat_interleave(w)
        cols = torch.arange(w, device=device, dtype=torch.float32).repeat(h)
        inv_freq = self.inv_freq.to(device)
        angles = torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)  # (N, dim_head/2)
        angles = torch.cat([angles, angles], dim=-1)  # rotate-half pairing: i with i + dim_head/2
        return SpatialPosition(rope=(angles.cos(), angles.sin()))


def apply_rotary(t: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate (B, H, N, D) queries or keys; the norm of each vector is unchanged."""
    cos, sin = (r.to(t.dtype) for r in rope)
    first, second = t.chunk(2, dim=-1)
    return t * cos + torch.cat([-second, first], dim=-1) * sin


class NoPosition(nn.Module):
    def forward(self, h: int, w: int, device: torch.device) -> SpatialPosition:
        return SpatialPosition()


@POSITIONS.register("cpb")
def cpb(dim: int, heads: int, dim_head: int) -> nn.Module:
    """CT-CLIP's continuous position bias over all N x N pairs."""
    return ContinuousPositionBias(dim, heads)


@POSITIONS.register("cpb_table")
def cpb_table(dim: int, heads: int, dim_head: int) -> nn.Module:
    """The same bias from unique offsets, gathered."""
    return ContinuousPositionBias(dim, heads, gather_table=True)


@POSITIONS.register("rope")
def rope(dim: int, heads: int, dim_head: int) -> nn.Module:
    """Axial 2-D rotary embedding on the spatial blocks."""
    return AxialRotary(dim_head)


@POSITIONS.register("none")
def none(dim: int, heads: int, dim_head: int) -> nn.Module:
    """No spatial position signal beyond the PEGs."""
    return NoPosition()
