"""Preprocessing throughput on one core: volumes per second per core, at a model size.

    python -m ablations.data.bench_preprocess --size paper --n 3

Generates n synthetic volumes in native CT resolution (about 500 x 500 x 250 int16, like CT-RATE's)
into a temporary folder (or reads --src), then times, with one torch/numpy thread, the two paths a
training run can take per volume: the direct loader (gunzip NIfTI, HU, trilinear resample, clip,
crop) and the shard reader (read the fp16 tar record, decode to float32). Not a test: a measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from ablations.data.layout import SPLITS
from ablations.data.resample import VOLUME_SIZES
from bench.config import parse_with_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.data.bench_preprocess",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="paper", choices=VOLUME_SIZES)
    parser.add_argument("--n", type=int, default=3, help="volumes to generate and time (default 3)")
    parser.add_argument("--src", type=Path, help="an existing CT-RATE tree to read instead of generating one")
    parser.add_argument("--split", default="train", choices=SPLITS)
    args = parse_with_config(parser, argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from ablations.data.ctrate import CTRateDataset
    from ablations.data.shards import ShardReader, write_shard
    from ablations.data.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        src = args.src
        if src is None:
            src = Path(tmp) / "src"
            t0 = time.perf_counter()
            generate_dataset(src, args.n, args.size, seed=0, valid_fraction=0.0)
            print(f"generated {args.n} volumes in {time.perf_counter() - t0:.1f} s")
        ds = CTRateDataset(src, args.split, args.size)
        names = ds.names[: args.n]
        samples, times = [], []
        for name in names:
            t0 = time.perf_counter()
            samples.append(ds.load(name))
            times.append(time.perf_counter() - t0)
        shard = Path(tmp) / "bench.tar"
        write_shard(shard, samples)
        t0 = time.perf_counter()
        count = sum(1 for _ in ShardReader([shard], rank=0, world_size=1))
        shard_s = (time.perf_counter() - t0) / count
    direct = sum(times) / len(times)
    print(f"size {args.size}: output {tuple(samples[0].volume.shape)}, 1 thread, {len(times)} volumes")
    print(f"direct loader (nii.gz -> tensor): {direct:.2f} s/volume = {1 / direct:.3f} volumes/s/core")
    print(f"shard reader (fp16 tar -> tensor): {shard_s:.3f} s/volume = {1 / shard_s:.2f} volumes/s/core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
