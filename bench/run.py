"""`python -m bench.run --matrix`: run a design of cells, one isolated process each, and write results.

With no other flag it picks what fits the machine (a CPU: size tiny, one torch thread, 5 warm-up and
30 timed steps; a GPU: size paper, 5 warm-up steps and at least 30 timed steps or 2 s) and says so.
Rows go to OUT/matrix-<size>-<device>-<timestamp>.jsonl as each cell finishes, with a CSV beside it;
`--resume` continues the latest such file (or the one named) without redoing finished cells.
`--rounds N` runs the whole design N times, each round in a fresh process per cell and in the reverse
order of the round before (so drift over the sweep does not favour the cells that ran first); the
reports then take run-to-run variation into their intervals (reports/rounds.py).
Every flag can also come from a YAML file: `--config configs/cpu-report.yaml` (see bench/config.py and configs/).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from bench import store
from bench.config import parse_with_config
from bench.design import DESIGNS, Cell, expand
from bench.environment import environment, fingerprint, git_info, host_device_info
from bench.runner import SweepSettings, run_sweep, spec_for
from bench.table import render
from models import SIZES, get_size

CPU_DEFAULTS = {"size": "tiny", "warmup": 5, "warmup_time": 0.025, "repeats": 30, "min_time": 0.0,
                "timeout": 300.0, "threads": 1, "attempts": 3}
# On a GPU the flash kernels need fp16/bf16, so the default is bf16 autocast (fp32 master weights);
# the seed project timed fp16 AMP, which --precision fp16 reproduces.
GPU_DEFAULTS = {"size": "paper", "precision": "bf16", "warmup": 5, "warmup_time": 0.025, "repeats": 30,
                "min_time": 2.0,
                "timeout": 600.0, "threads": 0, "attempts": 1}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--matrix", action="store_true", help="run the efficiency matrix")
    p.add_argument("--design", choices=DESIGNS, default="paper",
                   help="paper: the seed's 4 rows; ofat: faithful + every single change; loo: modern minus one "
                        "switch at a time; full: product of --only values")
    p.add_argument("--size", choices=list(SIZES), default=None, help="model size (default: tiny on CPU, paper on GPU)")
    p.add_argument("--only", action="append", default=[], metavar="AXIS=V1,V2",
                   help="keep cells with these axis values (for --design full: the values to combine); repeatable")
    p.add_argument("--exclude", action="append", default=[], metavar="AXIS=V",
                   help="drop cells with this axis value; repeatable")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                   help="set every cell's precision (autocast; fp32 master weights)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the size preset's)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps, at least (default 5)")
    p.add_argument("--warmup-time", type=float, default=None, help="and at least this many seconds (default 0.025)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps of each kind, at least (default 30)")
    p.add_argument("--min-time", type=float, default=None,
                   help="keep timing until this many seconds have passed (default: 2 on GPU, 0 on CPU)")
    p.add_argument("--attempts", type=int, default=None,
                   help="timing windows to try when one is disturbed by other load (default: 3 on CPU, 1 on GPU)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per cell before it is killed (default 300 CPU, 600 GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in each cell; 0 keeps torch's default (default: 1 on CPU, 0 on GPU)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and synthetic inputs")
    p.add_argument("--profile-top", type=int, default=0, metavar="N",
                   help="after timing, profile one more step and keep its N costliest operators in the row")
    p.add_argument("--shuffle", action="store_true",
                   help="run cells in a random (seeded) order against drift; with --rounds, a new order per round")
    p.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="run the design N times, every other round in reverse order, so the reports can include "
                        "run-to-run variation (an odd N keeps each shown figure one round's own)")
    p.add_argument("--out", default="results", help="directory for result files")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="FILE",
                   help="continue the latest matching result file in --out (or FILE), skipping finished cells")
    p.add_argument("--list", action="store_true", help="print the cells of the design and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> torch.device:
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as exc:
        parser.error(f"--device {args.device!r}: {exc}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: only cpu and cuda are supported")
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    picked = []
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
            picked.append(f"{key}={value}")
    if picked:
        print(f"bench.run: device {device}; picked defaults {', '.join(picked)}", file=sys.stderr)
    for key in ("warmup", "repeats", "attempts"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be at least 1, got {getattr(args, key)}")
    if args.timeout <= 0 or (args.batch is not None and args.batch < 1) or args.threads < 0:
        parser.error("--timeout must be positive, --batch at least 1 and --threads at least 0")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    return device


def _results_path(args: argparse.Namespace, device: torch.device, parser: argparse.ArgumentParser) -> Path:
    out = Path(args.out)
    prefix = f"matrix-{args.size}-{device.type}-"
    if args.resume not in (None, False):
        if args.resume not in ("latest", True):
            return Path(args.resume)
        previous = sorted(out.glob(prefix + "*.jsonl"))
        if previous:
            return previous[-1]
        print(f"bench.run: --resume found no {prefix}*.jsonl in {out}; starting a new file", file=sys.stderr)
    return out / f"{prefix}{datetime.now().strftime('%Y%m%d-%H%M%S')}.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if not (args.matrix or args.list):
        parser.error("nothing to do: pass --matrix (or --list to see the cells)")
    device = _resolve(args, parser)
    try:  # every name and value is checked here, before any cell runs
        size = get_size(args.size)
        cells = expand(args.design, args.only, args.exclude, args.precision)
    except ValueError as exc:
        parser.error(str(exc))
    if not cells:
        parser.error(f"design {args.design!r} with these --only/--exclude filters has no cells")
    batch = args.batch or size.batch
    rounds = f", {args.rounds} rounds" if args.rounds > 1 else ""
    print(f"bench.run: design {args.design}, {len(cells)} cells{rounds}, size {size.name}, batch {batch}, "
          f"device {device}", file=sys.stderr)
    if args.list:
        for cell in round_order(cells, 0, args.shuffle, args.seed):
            print(cell.key + (" (baseline)" if cell.baseline else ""))
        return 0

    host = host_device_info(device)
    git = git_info()
    settings = SweepSettings(
        size=size.name, batch=batch, device=str(device),
        timing={"warmup": args.warmup, "warmup_time_s": args.warmup_time, "repeats": args.repeats,
                "min_time_s": args.min_time, "attempts": args.attempts},
        timeout_s=args.timeout, threads=args.threads, seed=args.seed, profile_top=args.profile_top,
        env_fingerprint=fingerprint(host, environment(device), git), host_device=host, git=git,
    )
    path = _results_path(args, device, parser)
    done: set[tuple[str, int]] = set()
    if args.resume not in (None, False):
        if message := store.repair(path):
            print(f"bench.run: {message}", file=sys.stderr)
        previous = store.read(path)
        for problem in previous.problems:
            print(f"bench.run: {problem}", file=sys.stderr)
        done = {(r.cell_key, r.round) for r in previous.results if r.env_fingerprint == settings.env_fingerprint}
        other = sum(r.env_fingerprint != settings.env_fingerprint for r in previous.results)
        print(f"bench.run: resuming {path}: {len(done)} finished cells reused"
              + (f", {other} rows from another environment ignored" if other else ""), file=sys.stderr)

    started = time.perf_counter()
    for round_index in range(args.rounds):
        run_sweep(round_order(cells, round_index, args.shuffle, args.seed), settings, path, done,
                  log_dir=path.parent / "logs" / path.stem, progress=not args.no_progress, round_index=round_index)
    elapsed = time.perf_counter() - started

    report = store.read(path)
    for problem in report.problems:
        print(f"bench.run: {problem}", file=sys.stderr)
    keys = [spec_for(c, settings).key for c in cells]
    # The console table shows the last round; the report merges every round (reports/rounds.py).
    latest = {r.cell_key: r for r in report.results if r.env_fingerprint == settings.env_fingerprint}
    rows = [latest[k] for k in keys if k in latest]
    csv_path = path.with_suffix(".csv")
    store.write_csv(csv_path, report.results)
    print(render(rows))
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "unsupported", "oom", "error", "timeout")}
    print(f"\n{len(rows)} cells{rounds} in {elapsed:.1f} s: "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    print(f"results: {path}\ncsv:     {csv_path}\nlogs:    {path.parent / 'logs' / path.stem}")
    _write_report(path)
    return 0


def round_order(cells: list[Cell], round_index: int, shuffle: bool, seed: int) -> list[Cell]:
    """The order of one round: as designed (or shuffled with the seed), reversed in every odd round, so
    over two rounds each cell's mean position in the sweep is the same."""
    order = list(cells)
    if shuffle:
        random.Random(seed + round_index // 2).shuffle(order)
    return order[::-1] if round_index % 2 else order


def _write_report(path: Path) -> None:
    """Tables and plots of this run beside its result file (reports reads the file, nothing else)."""
    from reports.build import build_reports

    out = path.parent / f"report-{path.stem}"
    try:
        written = build_reports([path], out, formats=("md", "tex", "csv", "png"))
    except ValueError as exc:  # reports.load.ResultFileError names the file and line
        print(f"bench.run: no report written: {exc}", file=sys.stderr)
        return
    print(f"report:  {out} ({len(written)} files)")


if __name__ == "__main__":
    sys.exit(main())
