"""`python -m bench.gpu_probe`: the child process of bench.gpu_check that may touch the GPU outside cells.

bench.gpu_check's own process never creates a CUDA context (it would sit in NVML's device-used figure
of every cell it measures), so everything else that needs the device runs here, in one process:

    env       environment, device, clocks and git (bench.environment)
    micro     device copy bandwidth (a big tensor copied; bytes read + written over the median time)
              and the dense bf16 matmul rate (8192^3), each beside the datasheet peak where known
    supports  models.supports() of every planned cell on this device, so gpu_check records unsupported
              cells without spawning a process for each
    kernels   kernels.bench_vq's nearest-code search (four providers), kernels.bench_mlp's gated
              feed-forward (the gate in the matmul epilogues, as its own kernel, eager), then
              kernels.bench's measuring loop at the model's shapes, one (case, provider) at a time until
              --kernels-deadline (a time.time() value), rewriting its files after each

On a CPU (gpu_check --dry-run) the same steps run with small tensors, a perf_counter timer and the
Triton kernels in the interpreter (TRITON_INTERPRET=1 set by the parent), so every line is exercised.
Each step writes OUT/<step>.json as soon as it is done.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

GPU_COPY_BYTES = 1 << 30
GPU_MATMUL_N = 8192
DRY_COPY_BYTES = 16 << 20
DRY_MATMUL_N = 256
# (tokens, codes, dim) of the VQ search: the paper's batch of 4 against its codebook; a small odd one.
GPU_VQ_SHAPE = (4 * 13824, 8192, 512)
DRY_VQ_SHAPE = (200, 300, 32)
# (rows, dim, F) of the gated feed-forward: the paper's batch of 4; a small odd one.
GPU_MLP_SHAPE = (4 * 13824, 512, 1365)
DRY_MLP_SHAPE = (37, 32, 21)


def perf_counter_timer(repeats: int) -> Callable:
    """kernels.bench's Timer interface on a CPU: milliseconds per call, gradients cleared before each."""
    def timer(fn: Callable[[], object], grad_to_none: list) -> list:
        samples = []
        for i in range(repeats + 1):
            for t in grad_to_none:
                t.grad = None
            start = time.perf_counter()
            fn()
            if i:  # the first call is a warm-up
                samples.append((time.perf_counter() - start) * 1e3)
        return samples
    return timer


def matmul_tflops(timer: Callable, device: torch.device, n: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = statistics.median(timer(lambda: a @ b, []))
    return 2 * n**3 / (ms * 1e-3) / 1e12


def _dump(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def sdp_priority_order(device: torch.device) -> list[str]:
    """The order in which SDPA tries its kernels for a call that forces none, as this build has it on
    `device`. CUDA builds settle it at their first CUDA call (cuDNN first on an H100 with cuDNN > 9.15),
    so one tiny call comes first; bench.cuda_sdpa's emulation, which the estimator runs on the CPU,
    sees the order as it was before any such call."""
    from torch.nn.attention import SDPBackend

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = torch.zeros(1, 1, 8, 64, device=device, dtype=dtype)
    torch.nn.functional.scaled_dot_product_attention(q, q, q)
    return [SDPBackend(b).name for b in torch._C._get_sdp_priority_order()]


def step_env(device: torch.device) -> dict:
    from bench.cuda_autocast import policy_drift
    from bench.environment import device_info, environment, git_info, gpu_clocks

    return {"device": device_info(device), "env": environment(device), "clocks": gpu_clocks(device),
            "git": git_info(), "autocast_policy_drift": policy_drift(),
            "sdp_priority_order": sdp_priority_order(device)}


def step_micro(device: torch.device, timer: Callable, dry_run: bool) -> dict:
    from bench.flops import peak_entry
    from kernels.bench import copy_bandwidth_gbps

    nbytes, n = (DRY_COPY_BYTES, DRY_MATMUL_N) if dry_run else (GPU_COPY_BYTES, GPU_MATMUL_N)
    copy_gbps = copy_bandwidth_gbps(timer, device, nbytes)
    # bf16 is what the matrix measures on a GPU; on a CPU bf16 matmuls are emulated, so fp32 there.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tflops = matmul_tflops(timer, device, n, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_entry(name, "bf16", device.type)
    return {"copy_bytes": nbytes, "copy_gbps": copy_gbps, "matmul_n": n, "matmul_dtype": str(dtype),
            "matmul_tflops": tflops, "peak": peak,
            "matmul_fraction_of_peak": tflops / peak["tflops"] if peak else None,
            "timer": "triton.testing.do_bench (L2 flushed)" if device.type == "cuda" else "perf_counter"}


def step_supports(device: torch.device, cells_path: Path | None) -> dict:
    from models import Variant, supports

    if cells_path is None:
        return {}
    variants = json.loads(cells_path.read_text())
    return {key: supports(Variant.from_dict(v), device) for key, v in variants.items()}


def _log(line: str) -> None:
    print(f"gpu_probe: {line}", flush=True)


def step_kernels(device: torch.device, timer: Callable, copy_gbps: float, out: Path, deadline: float,
                 dry_run: bool) -> dict:
    from kernels import bench_mlp, bench_vq
    from kernels import supports as kernel_supports
    from kernels.bench import (FF_INNER, RMSNORM_WIDTH, TOKENS_PER_VOLUME, Case, environment, run, table,
                               write)

    if reason := kernel_supports(device):
        return {"status": "unsupported", "reason": reason, "rows": 0}
    if dry_run:  # the interpreter runs every program instance in Python: a few rows only, fp32
        cases = [Case("rmsnorm", "fp32", 16, 64), Case("swiglu", "fp32", 8, 85), Case("geglu", "fp32", 8, 85)]
        providers = ("triton", "eager")
    else:  # the paper size: 13,824 tokens x batch 4
        rows = TOKENS_PER_VOLUME * 4
        cases = [Case("rmsnorm", "bf16", rows, RMSNORM_WIDTH), Case("swiglu", "bf16", rows, FF_INNER),
                 Case("geglu", "bf16", rows, FF_INNER)]
        providers = ("triton", "eager", "compile", "liger")
    env = environment(device, copy_gbps)
    env["l2_flushed"] = device.type == "cuda"
    # The VQ search first: a few seconds, and the roofline's largest fp32 term in the target variants.
    vq_rows = bench_vq.run(*(DRY_VQ_SHAPE if dry_run else GPU_VQ_SHAPE), bench_vq.PROVIDERS, timer, device,
                           log=_log)
    bench_vq.write(vq_rows, env, out / "kernels")
    mlp_rows = bench_mlp.run(*(DRY_MLP_SHAPE if dry_run else GPU_MLP_SHAPE), bench_mlp.PROVIDERS, timer, device,
                             log=_log)
    bench_mlp.write(mlp_rows, env, out / "kernels")
    results, skipped = [], []
    for case in cases:
        for provider in providers:
            if time.time() > deadline:
                skipped.append(f"{case.kernel} {case.dtype} {provider}")
                continue
            results += run([case], (provider,), ("fwd", "bwd", "full"), timer, device, copy_gbps,
                           log=_log)
            write(results, env, out / "kernels")
            (out / "kernels" / "table.md").write_text(table(results) + "\n")
    return {"status": "ok", "rows": len(results), "vq_rows": len(vq_rows), "mlp_rows": len(mlp_rows),
            "skipped": skipped,
            "note": f"{len(skipped)} (case, provider) pairs skipped: the kernels budget ran out" if skipped else ""}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder for env.json, micro.json, supports.json, kernels/")
    p.add_argument("--device", default="cuda")
    p.add_argument("--cells", type=Path, help="JSON {cell key: variant dict} to ask supports() about")
    p.add_argument("--kernels-deadline", type=float, default=None, help="time.time() after which no kernel "
                   "case starts; omit to skip the kernels step")
    p.add_argument("--dry-run", action="store_true", help="small tensors and a perf_counter timer (CPU)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        from kernels.bench import do_bench_timer

        timer = do_bench_timer(25, 100)
    else:
        timer = perf_counter_timer(5 if args.dry_run else 20)
    _dump(args.out / "env.json", step_env(device))
    micro = step_micro(device, timer, args.dry_run)
    _dump(args.out / "micro.json", micro)
    print(f"gpu_probe: copy {micro['copy_gbps']:.0f} GB/s, matmul {micro['matmul_tflops']:.1f} TFLOP/s", flush=True)
    _dump(args.out / "supports.json", step_supports(device, args.cells))
    if args.kernels_deadline is not None:
        if device.type == "cuda":
            timer = do_bench_timer(10, 40)  # per measurement: 18 of them must fit the kernels budget
        _dump(args.out / "kernels.json",
              step_kernels(device, timer, micro["copy_gbps"], args.out, args.kernels_deadline, args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
