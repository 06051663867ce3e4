"""python -m kernels.bench_vq: time the VQ's nearest-code search at the model's shapes, four ways.

    triton_tf32  kernels.vq_nearest with tf32 tensor-core products: what vq_impl=triton runs
    triton_ieee  the same kernel with exact fp32 products
    torch_fp32   what vq_impl=chunked runs: (8,192-token slice @ codes^T).argmax, slice by slice, in fp32
                 (upstream's precision; autocast is off in the VQ)
    torch_tf32   the same with torch's TF32 matmuls (set_float32_matmul_precision("high"), restored after)

Shapes: 13,824 tokens per volume x batch against the 8,192 x 512 codebook. Tokens and codes are random
unit vectors: their cosines cluster near 0 with small top-2 gaps, a harder case for tf32 than trained
codes. Each provider reports the median time, the TFLOP/s of the 2 * tokens * codes * dim matmul, and its
agreement with the fp64 argmax: the share of tokens given the fp64-best code and the largest score
shortfall of a picked code (0 when every pick is a best code).

This is a separate module from kernels.bench because the search is a compute-bound GEMM with an argmax
epilogue, measured against the matmul rate, where kernels.bench's kernels are measured against copy
bandwidth. On a machine without a CUDA GPU it prints that it cannot time GPU kernels and exits 0.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from kernels.bench import Timer, failure, time_summary
from kernels.bench_cli import gpu_bench_main, write_rows

PROVIDERS = ("triton_tf32", "triton_ieee", "torch_fp32", "torch_tf32")
CODEBOOK_SIZE = 8192
CODE_DIM = 512
SLICE_TOKENS = 8192  # models.vq.CHUNK_TOKENS (kernels/ does not import models/)


@contextmanager
def _float32_matmul_precision(precision: str) -> Iterator[None]:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def torch_nearest(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """vq_impl=chunked's search: the argmax of each slice's scores, slices concatenated."""
    return torch.cat([(part @ codes.t()).argmax(dim=-1) for part in x.split(SLICE_TOKENS)])


def search_fn(provider: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if provider.startswith("triton_"):
        from kernels.vq_nearest import nearest_code

        precision = provider.removeprefix("triton_")
        return lambda x, codes: nearest_code(x, codes, precision)
    if provider in ("torch_fp32", "torch_tf32"):
        return torch_nearest
    raise ValueError(f"unknown provider {provider!r}; valid: {', '.join(PROVIDERS)}")


def fp64_scores_of(x: torch.Tensor, codes: torch.Tensor,
                   index: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """(best fp64 score per token, fp64 score of the picked code), slice by slice to bound memory."""
    best, picked = [], []
    for part, part_index in zip(x.split(SLICE_TOKENS), index.split(SLICE_TOKENS), strict=True):
        scores = part.double() @ codes.double().t()
        best.append(scores.max(dim=1).values)
        picked.append(scores.gather(1, part_index[:, None]).squeeze(1))
    return torch.cat(best), torch.cat(picked)


def measure(provider: str, x: torch.Tensor, codes: torch.Tensor, timer: Timer) -> dict:
    tokens, dim = x.shape
    row = {"provider": provider, "tokens": tokens, "codes": codes.shape[0], "dim": dim}
    precision = "high" if provider == "torch_tf32" else "highest"
    try:
        search = search_fn(provider)
        with _float32_matmul_precision(precision):
            index = search(x, codes)  # also the first (compiling) call
            samples = timer(lambda: search(x, codes), [])
    except Exception as err:  # noqa: BLE001 - one provider failing must not lose the others
        return {**row, **failure(err)}
    best, picked = fp64_scores_of(x, codes, index)
    times = time_summary(samples)
    return {**row, "status": "ok", **times,
            "tflops": 2 * tokens * codes.shape[0] * dim / (times["ms_p50"] * 1e-3) / 1e12,
            "same_as_fp64": (picked == best).float().mean().item(),
            "max_shortfall": (best - picked).max().item()}


def inputs(tokens: int, n_codes: int, dim: int, device: torch.device) -> "tuple[torch.Tensor, torch.Tensor]":
    gen = torch.Generator(device=device).manual_seed(0)
    x = F.normalize(torch.randn(tokens, dim, generator=gen, device=device), dim=-1)
    codes = F.normalize(torch.randn(n_codes, dim, generator=gen, device=device), dim=-1)
    return x, codes


def run(tokens: int, n_codes: int, dim: int, providers: "tuple[str, ...]", timer: Timer, device: torch.device,
        log: Callable[[str], None] = print) -> list[dict]:
    x, codes = inputs(tokens, n_codes, dim, device)
    rows = []
    for provider in providers:
        rows.append(measure(provider, x, codes, timer))
        log(_summary(rows[-1]))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _summary(row: dict) -> str:
    shape = f"{row['tokens']}x{row['codes']}x{row['dim']}"
    if row["status"] != "ok":
        return f"vq search {shape} {row['provider']:11s} {row['status']}: {row['note']}"
    return (f"vq search {shape} {row['provider']:11s} {row['ms_p50']:.3f} ms {row['tflops']:.1f} TFLOP/s, "
            f"{row['same_as_fp64']:.2%} fp64-best, shortfall {row['max_shortfall']:.1e}")


def table(rows: list[dict]) -> str:
    lines = ["| provider | tokens x codes x dim | median ms | TFLOP/s | same code as fp64 "
             "| largest shortfall |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        shape = f"{row['tokens']} x {row['codes']} x {row['dim']}"
        if row["status"] != "ok":
            lines.append(f"| {row['provider']} | {shape} | {row['status']} | | | {row.get('note', '')} |")
            continue
        lines.append(f"| {row['provider']} | {shape} | {row['ms_p50']:.3f} | {row['tflops']:.1f} | "
                     f"{row['same_as_fp64']:.2%} | {row['max_shortfall']:.1e} |")
    return "\n".join(lines)


def write(rows: list[dict], env: dict, out: Path) -> Path:
    return write_rows(rows, env, out, "vq_search", table)


def main(argv: "list[str] | None" = None) -> int:
    return gpu_bench_main(argv, "python -m kernels.bench_vq", __doc__, PROVIDERS,
                          lambda provider: provider.startswith("triton_"),
                          lambda rows, providers, timer, device: run(rows, CODEBOOK_SIZE, CODE_DIM, providers,
                                                                     timer, device),
                          write, table)


if __name__ == "__main__":
    sys.exit(main())
