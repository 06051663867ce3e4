"""Preprocess a CT-RATE tree once into WebDataset shards, in parallel, resumably.

    python -m ablations.data.prepare --src DIR --out SHARDS --size paper [--workers 8] [--skip-bad]

Writes SHARDS/<split>/shard-000000.tar ... and SHARDS/<split>/manifest.json (total_samples, shards,
size, target shape, skipped volumes, and the source tree's name, kind and CSV digests). Volumes are
assigned to shards by sorted name, so a rerun after an interruption skips every shard already on disk
(shards are written to .tmp and renamed) and produces the same files. `ablations.run --data SHARDS`
trains and evaluates from them (ablations.data.shard_index).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from ablations.data.ctrate import CTRateDataset
from ablations.data.errors import DataError
from ablations.data.layout import SPLITS, Layout
from ablations.data.provenance import describe_tree
from ablations.data.resample import VOLUME_SIZES, voxel_spacing
from ablations.data.shards import write_shard
from ablations.data.volume_io import RESCALE_MODES
from bench.config import parse_with_config

log = logging.getLogger(__name__)


def _shard_job(src: str, split: str, size: str, rescale: str, skip_bad: bool, names: list[str], path: str) -> dict:
    """Preprocess one shard's volumes and write it; returns its sidecar record."""
    ds = CTRateDataset(src, split, size, rescale, skip_bad=True)
    samples, skipped = [], []
    for name in names:
        try:
            samples.append(ds.load(name))
        except DataError as error:
            if not skip_bad:
                raise
            log.warning("skipping %s: %s", name, error)
            skipped.append({"name": name, "error": str(error)})
    write_shard(Path(path), samples)
    record = {"name": Path(path).name, "samples": len(samples), "skipped": skipped}
    Path(path).with_suffix(".json").write_text(json.dumps(record))
    return record


def _one_torch_thread() -> None:
    """Pool initializer: with workers > 1 the parallelism comes from processes, and torch threads in each
    would oversubscribe the cores. Set in the workers only, so workers=1 resamples on every core and an
    in-process caller (a notebook, the tests) keeps its own thread count."""
    import torch

    torch.set_num_threads(1)


def prepare_split(src: "str | Path", out: "str | Path", split: str, size: str = "paper", per_shard: int = 128,
                  workers: int = 1, rescale: str = "auto", skip_bad: bool = False, progress: bool = True) -> dict:
    """Shard one split; returns the manifest written to out/<split>/manifest.json."""
    ds = CTRateDataset(src, split, size, rescale, skip_bad=skip_bad)
    folder = Path(out) / split
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(ds.names)
    chunks = [names[i : i + per_shard] for i in range(0, len(names), per_shard)]
    paths = [folder / f"shard-{i:06d}.tar" for i in range(len(chunks))]
    todo = [i for i, p in enumerate(paths) if not (p.exists() and p.with_suffix(".json").exists())]
    with tqdm(total=len(chunks), initial=len(chunks) - len(todo), desc=f"shards {split}", unit="shard",
              disable=not progress) as bar:
        if workers <= 1:
            for i in todo:
                _shard_job(str(src), split, size, rescale, skip_bad, chunks[i], str(paths[i]))
                bar.update()
        else:
            with ProcessPoolExecutor(workers, initializer=_one_torch_thread) as pool:
                futures = [pool.submit(_shard_job, str(src), split, size, rescale, skip_bad, chunks[i], str(paths[i]))
                           for i in todo]
                for future in as_completed(futures):
                    future.result()
                    bar.update()
    records = [json.loads(p.with_suffix(".json").read_text()) for p in paths]
    skipped = [{"name": n, "error": e} for n, e in ds.skipped] + [s for r in records for s in r["skipped"]]
    manifest = {"total_samples": sum(r["samples"] for r in records), "split": split, "size": size,
                "volume_shape": list(ds.target), "spacing_mm": list(voxel_spacing(ds.target)),
                "volume_dtype": "float16",
                "layout": "bin=(H,W,D) float16; labels=18 float32; txt; json", "source": str(Path(src).resolve()),
                "data": describe_tree(Path(src), [split]),
                "shards": [{"name": r["name"], "samples": r["samples"]} for r in records], "skipped": skipped,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.data.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, type=Path, help="folder holding dataset/ (or the dataset/ folder)")
    parser.add_argument("--out", required=True, type=Path, help="shard folder; one subfolder per split")
    parser.add_argument("--size", default="paper", choices=VOLUME_SIZES)
    parser.add_argument("--split", default="all", choices=[*SPLITS, "all"])
    parser.add_argument("--per-shard", type=int, default=128, help="samples per shard (default 128, as MODERN)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--rescale", default="auto", choices=RESCALE_MODES)
    parser.add_argument("--skip-bad", action="store_true", help="log and skip bad volumes, count them at the end")
    args = parse_with_config(parser, argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        layout = Layout.find(args.src)
        splits = [s for s in SPLITS if args.split in (s, "all") and layout.labels_csv(s).exists()]
        if not splits:
            raise DataError(layout.root, f"no split {args.split!r} found (no labels CSV)", "check --src and --split")
        for split in splits:
            m = prepare_split(args.src, args.out, split, args.size, args.per_shard, args.workers, args.rescale,
                              args.skip_bad)
            print(f"{split}: {m['total_samples']} samples in {len(m['shards'])} shards, {len(m['skipped'])} skipped "
                  f"-> {args.out / split / 'manifest.json'}")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
