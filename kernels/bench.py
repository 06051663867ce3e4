"""python -m kernels.bench: time the Triton kernels against PyTorch eager, torch.compile and Liger-Kernel.

For each kernel (RMSNorm at width 512; SwiGLU and GEGLU at F = 1365, i.e. a [rows, 2730] input), dtype,
and row count (13,824 tokens x batch), it times forward, backward and both with
`triton.testing.do_bench` (which flushes L2 before every sample), and reports milliseconds (median,
p20, p80), GB/s of the minimum traffic each pass must move, and that as a fraction of the device's
copy bandwidth, measured here with a 1 GiB tensor copy. Each provider is also checked once against
fp32 eager on the same inputs (max abs error of the output and the input gradient).

On a machine without a CUDA GPU it prints that it cannot time GPU kernels and exits 0, timing nothing.
Results go to DIR/kernels_bench.csv and DIR/kernels_bench.json, with the GPU's name.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

TOKENS_PER_VOLUME = 13824  # CT-CLIP v2 at paper size: a 24 x 24 x 24 token grid per volume
RMSNORM_WIDTH = 512
FF_INNER = 1365  # int(4 * 2/3 * 512)
EPS = 1e-6
KERNELS = ("rmsnorm", "swiglu", "geglu")
PROVIDERS = ("triton", "eager", "compile", "liger")
MODES = ("fwd", "bwd", "full")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
NO_GPU = ("kernels.bench: no CUDA GPU here, so GPU kernels cannot be timed (triton's do_bench needs one); "
          "nothing was timed.")

# (fn, grad_to_none) -> per-sample milliseconds.
Timer = Callable[[Callable[[], object], list], list]


@dataclass(frozen=True)
class Case:
    kernel: str
    dtype: str
    rows: int
    width: int  # RMSNorm: the normalised width; gated: F (the input is [rows, 2F])

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.rows, self.width if self.kernel == "rmsnorm" else 2 * self.width)

    def bytes_moved(self, mode: str) -> int:
        """The least traffic the pass must move: each tensor read or written once, weights included."""
        elem = DTYPES[self.dtype].itemsize
        n = self.rows * self.width
        if self.kernel == "rmsnorm":  # fwd: x, w -> y; bwd: x, dy, w -> dx, dw
            fwd, bwd = 2 * n + self.width, 3 * n + 2 * self.width
        else:  # fwd: x[2F] -> out[F]; bwd: x[2F], dout[F] -> dx[2F]
            fwd, bwd = 3 * n, 5 * n
        return elem * {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]


class _Apply(nn.Module):
    """A parameter-free function as a module, so every provider has the same shape."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _eager_swiglu(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return F.silu(a) * b


def _eager_geglu(x: torch.Tensor) -> torch.Tensor:
    value, gate = x.chunk(2, dim=-1)
    return value * F.gelu(gate)


def eager_module(kernel: str, width: int) -> nn.Module:
    """What models/ runs with the PyTorch switches (norm=rmsnorm, mlp=swiglu/geglu)."""
    if kernel == "rmsnorm":
        return nn.RMSNorm(width, eps=EPS)
    return _Apply(_eager_swiglu if kernel == "swiglu" else _eager_geglu)


def _liger_module(kernel: str, width: int) -> "tuple[nn.Module, str]":
    if kernel == "rmsnorm":
        from liger_kernel.transformers.rms_norm import LigerRMSNorm

        # in_place=False: Liger would otherwise write dx into dy, which the timed backward reuses.
        try:
            return LigerRMSNorm(width, eps=EPS, in_place=False), "casting_mode=llama, in_place=False"
        except TypeError:  # releases before the in_place switch
            return LigerRMSNorm(width, eps=EPS), "casting_mode=llama (dx written into dy)"
    if kernel == "swiglu":
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        return (_Apply(lambda x: LigerSiLUMulFunction.apply(*x.chunk(2, dim=-1))),
                "takes two halves: chunk views are made contiguous (copies included in the time)")
    from liger_kernel.ops.geglu import LigerGELUMulFunction

    def geglu(x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return LigerGELUMulFunction.apply(gate, value)

    return _Apply(geglu), "tanh-approximate GELU (not CT-CLIP's exact erf); halves copied contiguous"


def build(kernel: str, provider: str, width: int) -> "tuple[nn.Module, str]":
    """(module, note) for one provider; raises when the provider is not available here."""
    if provider == "eager":
        return eager_module(kernel, width), ""
    if provider == "compile":
        # Every case compiles the same forward code object; without a reset, dynamo's recompile limit (8)
        # would silently fall back to eager after a few dtypes x shapes.
        torch._dynamo.reset()
        return (torch.compile(eager_module(kernel, width), dynamic=False),
                "torch.compile(eager), dynamic=False, donated_buffer=False")
    if provider == "triton":
        from kernels import TritonGEGLU, TritonRMSNorm, TritonSwiGLU

        if kernel == "rmsnorm":
            return TritonRMSNorm(width, eps=EPS), ""
        return (TritonSwiGLU() if kernel == "swiglu" else TritonGEGLU()), ""
    if provider == "liger":
        return _liger_module(kernel, width)
    raise ValueError(f"unknown provider {provider!r}; valid: {', '.join(PROVIDERS)}")


def _inputs(case: Case, device: torch.device, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[case.dtype]
    x = torch.randn(case.input_shape, generator=gen, device=device, dtype=torch.float32).to(dtype)
    out_width = case.width
    dy = torch.randn((case.rows, out_width), generator=gen, device=device, dtype=torch.float32).to(dtype)
    weight = (torch.rand(case.width, generator=gen, device=device) + 0.5).to(dtype)
    return x.requires_grad_(True), dy, weight


def _errors(module: nn.Module, case: Case, x: torch.Tensor, dy: torch.Tensor,
            weight: torch.Tensor) -> "tuple[float, float]":
    """Max abs error of (output, dx) against fp32 eager on the same inputs."""
    reference = eager_module(case.kernel, case.width).to(x.device)
    if case.kernel == "rmsnorm":
        with torch.no_grad():
            reference.weight.copy_(weight.float())
    xr = x.detach().float().requires_grad_(True)
    yr = reference(xr)
    yr.backward(dy.float())
    xk = x.detach().clone().requires_grad_(True)
    yk = module(xk)
    yk.backward(dy)
    return ((yk.float() - yr).abs().max().item(), (xk.grad.float() - xr.grad).abs().max().item())


def _timed_fn(module: nn.Module, x: torch.Tensor, dy: torch.Tensor, mode: str) -> Callable[[], object]:
    if mode == "fwd":  # the training forward: grad enabled, so whatever is saved for backward is paid for
        return lambda: module(x)
    if mode == "bwd":
        y = module(x)
        return lambda: y.backward(dy, retain_graph=True)
    return lambda: module(x).backward(dy)


def measure(case: Case, provider: str, modes: "tuple[str, ...]", timer: Timer, device: torch.device,
            copy_gbps: float) -> list[dict]:
    """One row per mode for (case, provider); a provider that cannot run gives rows with its reason."""
    if provider == "compile":
        # A compiled backward that donates its saved buffers refuses retain_graph, which the timed
        # backward-only pass needs; compiling happens lazily inside, so the switch covers it.
        from torch._functorch import config as functorch_config

        if hasattr(functorch_config, "donated_buffer"):
            with functorch_config.patch(donated_buffer=False):
                return _measure(case, provider, modes, timer, device, copy_gbps)
    return _measure(case, provider, modes, timer, device, copy_gbps)


def _measure(case: Case, provider: str, modes: "tuple[str, ...]", timer: Timer, device: torch.device,
             copy_gbps: float) -> list[dict]:
    base = {**asdict(case), "provider": provider, "input_shape": "x".join(map(str, case.input_shape))}
    try:
        module, note = build(case.kernel, provider, case.width)
        module = module.to(device=device, dtype=DTYPES[case.dtype])
        x, dy, weight = _inputs(case, device)
        if hasattr(module, "weight"):
            with torch.no_grad():
                module.weight.copy_(weight)
        started = time.perf_counter()
        err_out, err_dx = _errors(module, case, x, dy, weight)  # also the first (compiling) call
        setup_s = time.perf_counter() - started
    except Exception as err:  # noqa: BLE001 - one provider failing must not lose the others
        failed = failure(err)
        if isinstance(err, ImportError):  # the provider's package is missing, which is not a failure
            failed["status"] = "unsupported"
        return [{**base, "mode": mode, **failed} for mode in modes]
    rows = []
    params = [x, *module.parameters()]
    for mode in modes:
        row = {**base, "mode": mode, "note": note, "err_out": err_out, "err_dx": err_dx,
               "setup_s": round(setup_s, 3)}
        try:
            samples = timer(_timed_fn(module, x, dy, mode), params)
        except Exception as err:  # noqa: BLE001
            rows.append({**row, **failure(err)})
            continue
        times = time_summary(samples)
        gbps = case.bytes_moved(mode) / (times["ms_p50"] * 1e-3) / 1e9
        rows.append({**row, "status": "ok", "bytes": case.bytes_moved(mode), **times, "gbps": gbps,
                     "frac_copy_bw": gbps / copy_gbps if copy_gbps else math.nan})
    return rows


def failure(err: Exception) -> dict[str, str]:
    """The status and note of a provider's failed row: "oom" on CUDA out-of-memory, else "error", and the
    error's first line."""
    status = "oom" if isinstance(err, torch.cuda.OutOfMemoryError) else "error"
    return {"status": status, "note": f"{type(err).__name__}: {err}".splitlines()[0][:300]}


def _quantile(samples: list, q: float) -> float:
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_summary(samples: list) -> dict:
    """Median, 20th and 80th percentile milliseconds of a timer's samples, and how many there were."""
    return {"ms_p50": statistics.median(samples), "ms_p20": _quantile(samples, 0.2),
            "ms_p80": _quantile(samples, 0.8), "n_samples": len(samples)}


def do_bench_timer(warmup_ms: int, rep_ms: int) -> Timer:
    from triton.testing import do_bench

    def timer(fn: Callable[[], object], grad_to_none: list) -> list:
        # do_bench zeroes a 256 MB buffer before every sample (L2 flushed) and sets .grad = None on the
        # tensors given, so timed backwards never include a gradient-accumulation add.
        return do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, return_mode="all")
    return timer


def copy_bandwidth_gbps(timer: Timer, device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy of a `nbytes` tensor: (read + write) bytes over the median time."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = statistics.median(timer(lambda: dst.copy_(src), []))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def environment(device: torch.device, copy_gbps: float) -> dict:
    def version(package: str) -> Optional[str]:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    gpu = torch.cuda.get_device_properties(device) if device.type == "cuda" else None
    return {
        "gpu_name": gpu.name if gpu else None, "gpu_sms": gpu.multi_processor_count if gpu else None,
        "gpu_memory_bytes": gpu.total_memory if gpu else None, "cuda": torch.version.cuda,
        "torch": torch.__version__, "triton": version("triton"), "liger_kernel": version("liger-kernel"),
        "python": platform.python_version(), "git_sha": sha, "copy_gbps": copy_gbps, "l2_flushed": True,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run(cases: list, providers: "tuple[str, ...]", modes: "tuple[str, ...]", timer: Timer,
        device: torch.device, copy_gbps: float, log: Callable[[str], None] = print) -> list[dict]:
    rows = []
    for i, case in enumerate(cases, 1):
        for provider in providers:
            started = time.perf_counter()
            new = measure(case, provider, modes, timer, device, copy_gbps)
            rows.extend(new)
            shape = "x".join(map(str, case.input_shape))
            log(f"[{i}/{len(cases)}] {case.kernel:7s} {case.dtype} {shape:>11s} "
                f"{provider:8s} {_summary(new)}  ({time.perf_counter() - started:.1f} s)")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _summary(rows: list[dict]) -> str:
    if rows and all(row["status"] == "unsupported" for row in rows):
        return f"unsupported: {rows[0]['note']}"
    return " | ".join(f"{row['mode']} {row['ms_p50']:.3f} ms {row['frac_copy_bw']:.0%} of copy"
                      if row["status"] == "ok" else f"{row['mode']} {row['status']}: {row['note']}"
                      for row in rows)


def table(rows: list[dict]) -> str:
    """Markdown: one line per (case, provider), median ms and % of copy bandwidth per mode."""
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    header = " | ".join(f"{m} ms (% copy BW)" for m in modes)
    lines = [f"| kernel | dtype | input | provider | {header} |",
             "|---" * (4 + len(modes)) + "|"]
    by_key: dict = {}
    for row in rows:
        key = (row["kernel"], row["dtype"], row["input_shape"], row["provider"])
        by_key.setdefault(key, {})[row["mode"]] = row
    for (kernel, dtype, shape, provider), per_mode in by_key.items():
        cells = []
        for mode in modes:
            row = per_mode.get(mode)
            cells.append("" if row is None else f"{row['ms_p50']:.3f} ({row['frac_copy_bw']:.0%})"
                         if row["status"] == "ok" else row["status"])
        lines.append(f"| {kernel} | {dtype} | {shape} | {provider} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


COLUMNS = ("gpu_name", "kernel", "provider", "mode", "dtype", "rows", "width", "input_shape", "status",
           "ms_p50", "ms_p20", "ms_p80", "n_samples", "bytes", "gbps", "frac_copy_bw", "copy_gbps",
           "err_out", "err_dx", "setup_s", "note")


def write(rows: list[dict], env: dict, out: Path) -> "tuple[Path, Path]":
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "kernels_bench.csv", out / "kernels_bench.json"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({"gpu_name": env["gpu_name"], "copy_gbps": env["copy_gbps"], **row})
    json_path.write_text(json.dumps({"environment": env, "rows": rows}, indent=1, default=str) + "\n")
    return csv_path, json_path


def parse_args(argv: "list[str] | None") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/kernels"), help="output folder")
    parser.add_argument("--batch", type=int, nargs="+", default=[4],
                        help=f"volumes per batch; rows = {TOKENS_PER_VOLUME} x batch (default 4)")
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["bf16", "fp32"])
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS),
                        help="liger is skipped (recorded as unsupported) when liger-kernel is not installed")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--warmup-ms", type=int, default=25)
    parser.add_argument("--rep-ms", type=int, default=100, help="do_bench's time budget per measurement")
    return parser.parse_args(argv)


def cases_for(args: argparse.Namespace) -> list:
    return [Case(kernel, dtype, TOKENS_PER_VOLUME * batch, RMSNORM_WIDTH if kernel == "rmsnorm" else FF_INNER)
            for batch in args.batch for dtype in args.dtype for kernel in args.kernels]


def main(argv: "list[str] | None" = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    from kernels import supports

    device = torch.device("cuda")
    if reason := supports(device):
        print(f"kernels.bench: the Triton kernels cannot run here: {reason}")
        return 1
    started = time.perf_counter()
    timer = do_bench_timer(args.warmup_ms, args.rep_ms)
    copy_gbps = copy_bandwidth_gbps(timer, device)
    env = environment(device, copy_gbps)
    print(f"{env['gpu_name']}: measured copy bandwidth {copy_gbps:.0f} GB/s; torch {env['torch']}, "
          f"triton {env['triton']}, liger-kernel {env['liger_kernel'] or 'not installed'}")
    rows = run(cases_for(args), tuple(args.providers), tuple(args.modes), timer, device, copy_gbps)
    print(table(rows))
    csv_path, json_path = write(rows, env, args.out)
    print(f"wrote {csv_path} and {json_path} ({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
