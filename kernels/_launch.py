"""Launch helpers shared by the kernel families: row views, block sizes, warps, program counts."""

from __future__ import annotations

import os

import torch
import triton


def interpreting() -> bool:
    """Whether `@triton.jit` functions defined now run in the Triton interpreter (TRITON_INTERPRET)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "runtime"):
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes", "y")


# One tile holds about this many elements: enough bytes in flight per program on a GPU, few program
# instances in the interpreter (each instance costs ~1 ms there).
TILE_ELEMENTS = 4096
# A row must fit one tile: wider rows would need a two-pass reduction that the model never uses.
MAX_ROW_WIDTH = 65536


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def num_warps(tile_elements: int) -> int:
    # ~16 fp32 values per thread per live tensor keeps registers low without starving the memory system.
    return max(4, min(16, tile_elements // 512))


def input_precision(operand_dtype: torch.dtype) -> str:
    """tl.dot's input_precision for the matmul kernels. Only fp32 operands are affected: IEEE products, as
    torch's default matmul precision ("highest"); bf16 and fp16 products are exact in the fp32 accumulator
    whatever this says."""
    return "ieee" if operand_dtype == torch.float32 else "tf32"


def rows_per_tile(block_n: int, n_rows: int) -> int:
    return max(1, min(TILE_ELEMENTS // block_n, next_pow2(max(n_rows, 1))))


def persistent_programs(device: torch.device, n_tiles: int) -> int:
    """Programs for a grid-stride loop: a few per SM on a GPU, a handful in the interpreter."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        # 8 per SM keeps enough loads in flight; the extra dw partials (8 x SMs x width fp32) are noise.
        return max(1, min(n_tiles, 8 * sms))
    return max(1, min(n_tiles, 4))


def persistent_tiling(device: torch.device, n_tiles: int) -> tuple[int, int]:
    """(tiles per program, programs) for a grid-stride backward over `n_tiles` row tiles. The tiles per
    program are rounded to a power of two: the kernels take them as a constexpr trip count (the
    interpreter cannot loop to a runtime bound), so a handful of variants compile at most."""
    tiles_per_program = next_pow2(triton.cdiv(n_tiles, persistent_programs(device, n_tiles)))
    return tiles_per_program, triton.cdiv(n_tiles, tiles_per_program)


def as_rows(x: torch.Tensor, width: int) -> torch.Tensor:
    """`x` as a [rows, width] tensor whose last dimension is unit-stride (a view when possible).

    Row strides are passed to the kernels, so only a non-unit column stride (e.g. a slice with a step,
    a transpose, or the stride-0 gradient of `y.sum()`) costs a copy. Kernels only read through these
    views, and always write fresh contiguous outputs.
    """
    rows = x.reshape(-1, width)
    if width > 1 and rows.stride(-1) != 1:
        rows = rows.contiguous()
    return rows


def check_float(x: torch.Tensor, what: str) -> None:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{what} must be float32, float16 or bfloat16, got {x.dtype}")


def check_branch(branch: torch.Tensor, residual: torch.Tensor, what: str) -> None:
    """A residual add's branch: a float tensor of the residual's shape (the fused-add kernels' check)."""
    check_float(branch, what)
    if branch.shape != residual.shape:
        raise ValueError(f"branch {tuple(branch.shape)} and residual {tuple(residual.shape)} differ in shape")


def output_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                  interpreted: bool) -> torch.Tensor:
    """Where a kernel writes a result of `dtype`; pass it through `.to(dtype)` afterwards.

    The interpreter converts fp32 to bf16 by truncation, where a GPU rounds to nearest even, so there
    bf16 results are written in fp32 and rounded by torch: the numerics then match the GPU's.
    """
    return torch.empty(shape, dtype=_written_dtype(dtype, interpreted), device=device)


def output_buffer_like(x: torch.Tensor, dtype: torch.dtype, interpreted: bool) -> torch.Tensor:
    """`output_buffer` shaped like x, and laid out as x where x is dense (torch.empty_like keeps a
    permuted view's memory order), else contiguous."""
    return torch.empty_like(x, dtype=_written_dtype(dtype, interpreted))


def _written_dtype(dtype: torch.dtype, interpreted: bool) -> torch.dtype:
    return torch.float32 if interpreted and dtype == torch.bfloat16 else dtype
