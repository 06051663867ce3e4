"""What the GEMM-shaped kernel benchmarks (kernels.bench_vq, kernels.bench_mlp) share: their result files
and their command line (`--out`, `--batch`, `--providers`; on a machine without a CUDA GPU, a message
and exit status 0, timing nothing)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import torch

from kernels.bench import NO_GPU, TOKENS_PER_VOLUME, Timer, do_bench_timer

# (rows per volume x batch, providers, timer, device) -> result rows
Runner = Callable[[int, "tuple[str, ...]", Timer, torch.device], list]


def write_rows(rows: list[dict], env: dict, out: Path, stem: str, table: Callable[[list[dict]], str]) -> Path:
    """OUT/STEM.json ({"environment", "rows"}) and OUT/STEM.md (the Markdown table); returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    path.write_text(json.dumps({"environment": env, "rows": rows}, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(table(rows) + "\n")
    return path


def gpu_bench_main(argv: "list[str] | None", prog: str, doc: str, providers: "tuple[str, ...]",
                   needs_triton: Callable[[str], bool], run: Runner,
                   write: Callable[[list[dict], dict, Path], Path], table: Callable[[list[dict]], str]) -> int:
    """Parse the shared flags, time `run` on the GPU with the providers the machine supports, print the
    table and write the files."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/kernels"), help="output folder")
    parser.add_argument("--batch", type=int, default=4, help=f"volumes; rows = {TOKENS_PER_VOLUME} x batch")
    parser.add_argument("--providers", nargs="+", choices=providers, default=list(providers))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    from kernels import supports
    from kernels.bench import environment

    device = torch.device("cuda")
    chosen = tuple(p for p in args.providers if not (needs_triton(p) and supports(device)))
    rows = run(TOKENS_PER_VOLUME * args.batch, chosen, do_bench_timer(25, 100), device)
    print(table(rows))
    print(f"wrote {write(rows, environment(device, None), args.out)}")
    return 0
