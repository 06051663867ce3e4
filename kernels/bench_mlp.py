"""python -m kernels.bench_mlp: time CT-CLIP's gated feed-forward after its norm at the model's shapes.

    gemm      kernels.gated_linear: the gate in the epilogues of Triton matmuls (mlp=swiglu_gemm)
    separate  cuBLAS matmuls with the gate as a Triton kernel of its own between them (mlp=swiglu_triton)
    eager     cuBLAS matmuls with chunk, SiLU and multiply in PyTorch (mlp=swiglu)

as the model runs them: fp32 master weights under bf16 autocast, on the paper's 13,824 tokens x batch
rows of width 512 with F = 1365. Each provider is timed forward and forward + backward (triton's
do_bench, L2 flushed before every sample) and reports the median, the TFLOP/s of its three (forward) or
nine (forward + backward) matmuls, and its largest error against an fp32 evaluation of the same
layer relative to that output's largest magnitude (output and input gradient).

This is its own module because the fused layer is a pair of GEMMs, measured against the matmul rate:
what the epilogue buys is the time the `separate` provider spends outside its matmuls. On a machine
without a CUDA GPU it prints that it cannot time GPU kernels and exits 0.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from kernels.bench import FF_INNER, RMSNORM_WIDTH, Timer, eager_module, failure, time_summary
from kernels.bench_cli import gpu_bench_main, write_rows

PROVIDERS = ("gemm", "separate", "eager")
MODES = ("fwd", "full")


Layer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def layer_fn(provider: str) -> Layer:
    """(x, w_in, w_out) -> out, as the `mlp` switch's value runs the layer after its norm."""
    if provider == "gemm":
        from kernels.gated_linear import triton_gated_mlp

        return lambda x, w_in, w_out: triton_gated_mlp(x, w_in, w_out, "swiglu")
    if provider == "separate":
        from kernels.swiglu import triton_swiglu as gate
    elif provider == "eager":
        gate = eager_module("swiglu", FF_INNER)  # kernels.bench's PyTorch SwiGLU, as mlp=swiglu runs it
    else:
        raise ValueError(f"unknown provider {provider!r}; valid: {', '.join(PROVIDERS)}")
    return lambda x, w_in, w_out: F.linear(gate(F.linear(x, w_in)), w_out)


def inputs(rows: int, dim: int, inner: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The norm's bf16 output (which needs a gradient), fp32 weights at nn.Linear's init scale, and an
    output gradient."""
    gen = torch.Generator(device=device).manual_seed(0)
    uniform = lambda *shape, fan_in: (torch.rand(*shape, generator=gen, device=device) * 2 - 1) / fan_in ** 0.5  # noqa: E731
    return {"x": torch.randn(rows, dim, generator=gen, device=device).bfloat16().requires_grad_(True),
            "w_in": uniform(2 * inner, dim, fan_in=dim).requires_grad_(True),
            "w_out": uniform(dim, inner, fan_in=inner).requires_grad_(True),
            "dout": torch.randn(rows, dim, generator=gen, device=device).bfloat16()}


def _outputs(fn: Layer, t: dict[str, torch.Tensor], autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = t["x"].detach().float().requires_grad_(True) if not autocast else t["x"].detach().requires_grad_(True)
    w_in, w_out = t["w_in"].detach(), t["w_out"].detach()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = fn(x, w_in, w_out)
    out.backward(t["dout"].to(out.dtype))
    return out.detach().float(), x.grad.float()


def fp32_reference(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, dx) of the eager layer in fp32, without autocast: what every provider is compared with."""
    return _outputs(layer_fn("eager"), t, autocast=False)


def relative_errors(fn: Layer, t: dict[str, torch.Tensor],
                    reference: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Largest |provider - fp32| over the fp32 result's largest magnitude, for the output and dx."""
    measured = _outputs(fn, t, autocast=True)
    return {f"{name}_rel_err": ((m - r).abs().max() / r.abs().max()).item()
            for name, m, r in zip(("out", "dx"), measured, reference, strict=True)}


def measure(provider: str, t: dict[str, torch.Tensor], timer: Timer,
            reference: tuple[torch.Tensor, torch.Tensor]) -> list[dict]:
    rows, dim = t["x"].shape
    inner = t["w_out"].shape[1]
    base = {"provider": provider, "rows": rows, "dim": dim, "inner": inner}
    try:
        fn = layer_fn(provider)
        errors = relative_errors(fn, t, reference)  # also the first (compiling) calls

        def forward() -> torch.Tensor:
            with torch.autocast(t["x"].device.type, dtype=torch.bfloat16):
                return fn(t["x"], t["w_in"], t["w_out"])

        passes = {"fwd": lambda: forward(), "full": lambda: forward().backward(t["dout"])}
        samples = {mode: timer(passes[mode], [t["x"], t["w_in"], t["w_out"]]) for mode in MODES}
    except Exception as err:  # noqa: BLE001 - one provider failing must not lose the others
        return [{**base, "mode": mode, **failure(err)} for mode in MODES]
    matmul_flops = 2 * rows * dim * 3 * inner  # up (2F wide) and down (F deep) projections, forward
    result = []
    for mode in MODES:
        times = time_summary(samples[mode])
        flops = matmul_flops * (3 if mode == "full" else 1)
        result.append({**base, "mode": mode, "status": "ok", **times, **errors,
                       "tflops": flops / (times["ms_p50"] * 1e-3) / 1e12})
    return result


def run(rows: int, dim: int, inner: int, providers: "tuple[str, ...]", timer: Timer, device: torch.device,
        log: Callable[[str], None] = print) -> list[dict]:
    t = inputs(rows, dim, inner, device)
    reference = fp32_reference(t)
    results = []
    for provider in providers:
        results += measure(provider, t, timer, reference)
        for row in results[-len(MODES):]:
            log(_summary(row))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def _summary(row: dict) -> str:
    shape = f"{row['rows']}x{row['dim']} F={row['inner']}"
    if row["status"] != "ok":
        return f"gated mlp {shape} {row['provider']:8s} {row['mode']:4s} {row['status']}: {row['note']}"
    return (f"gated mlp {shape} {row['provider']:8s} {row['mode']:4s} {row['ms_p50']:.3f} ms "
            f"{row['tflops']:.1f} TFLOP/s, rel. err out {row['out_rel_err']:.1e} dx {row['dx_rel_err']:.1e}")


def table(rows: list[dict]) -> str:
    lines = ["| provider | pass | rows x dim, F | median ms | matmul TFLOP/s | rel. error out | rel. error dx |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        head = f"| {row['provider']} | {row['mode']} | {row['rows']} x {row['dim']}, {row['inner']} |"
        if row["status"] != "ok":
            lines.append(f"{head} {row['status']} | | | {row.get('note', '')} |")
            continue
        lines.append(f"{head} {row['ms_p50']:.3f} | {row['tflops']:.1f} | {row['out_rel_err']:.1e} | "
                     f"{row['dx_rel_err']:.1e} |")
    return "\n".join(lines)


def write(rows: list[dict], env: dict, out: Path) -> Path:
    return write_rows(rows, env, out, "gated_mlp", table)


def main(argv: "list[str] | None" = None) -> int:
    return gpu_bench_main(argv, "python -m kernels.bench_mlp", __doc__, PROVIDERS,
                          lambda provider: provider != "eager",
                          lambda rows, providers, timer, device: run(rows, RMSNORM_WIDTH, FF_INNER, providers,
                                                                     timer, device),
                          write, table)


if __name__ == "__main__":
    sys.exit(main())
