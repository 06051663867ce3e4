"""WebDataset shard format (MODERN's) and a reader that yields the same tensors as the direct loader.

Each sample in a tar shard: `bin` raw float16 bytes of the preprocessed volume in (H, W, D) order,
`txt` the cleaned report, `labels` 18 float32 values, `json` {study_id, volume_shape, volume_dtype}.
The reader decodes back to a float32 (1, D, H, W) tensor, so it equals `CTRateDataset` up to the fp16
storage rounding. Shards are split across nodes (by rank) and then across DataLoader workers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds

from ablations.data.ctrate import Sample
from ablations.data.errors import DataError


def encode(sample: Sample) -> dict:
    """One WebDataset record for a preprocessed sample."""
    vol = sample.volume[0].permute(1, 2, 0).contiguous().to(torch.float16).numpy()  # (H, W, D)
    return {"__key__": sample.name, "bin": vol.tobytes(), "txt": sample.text.encode("utf-8"),
            "labels": sample.labels.numpy().astype(np.float32).tobytes(),
            "json": json.dumps({"study_id": sample.name, "volume_shape": list(vol.shape),
                                "volume_dtype": "float16"}).encode("utf-8")}


def decode(record: dict) -> Sample:
    meta = json.loads(record["json"])
    h, w, d = meta["volume_shape"]
    vol = np.frombuffer(record["bin"], dtype=np.float16).reshape(h, w, d)
    volume = torch.from_numpy(vol.astype(np.float32)).permute(2, 0, 1).contiguous().unsqueeze(0)
    labels = torch.from_numpy(np.frombuffer(record["labels"], dtype=np.float32).copy())
    return Sample(volume, record["txt"].decode("utf-8"), labels, meta["study_id"])


def write_shard(path: Path, samples: list[Sample]) -> None:
    """Write a whole shard to `path.tmp`, then rename: a shard on disk is always complete."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    # A fixed mtime makes a rebuilt shard byte-identical to the one it replaces.
    with open(tmp, "wb") as stream, wds.TarWriter(stream, mtime=0.0) as sink:
        for sample in samples:
            sink.write(encode(sample))
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict:
    """A prepared split's manifest.json (ablations.data.prepare); DataError if it is not there."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise DataError(path, "shard manifest is missing",
                        "run `python -m ablations.data.prepare` to build (or finish) the shards")
    return json.loads(path.read_text())


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardReader(torch.utils.data.IterableDataset):
    """Iterate over the samples of a shard folder (or an explicit shard list).

    Shard i goes to node `i % world_size == rank`, then to worker `j % num_workers == worker id` of
    that node, so every sample is read exactly once per epoch across all nodes and workers.
    """

    def __init__(self, shards: "str | Path | list[str | Path]", rank: int | None = None,
                 world_size: int | None = None, shuffle_buffer: int = 0, seed: int = 0) -> None:
        super().__init__()
        if isinstance(shards, (str, Path)):
            folder = Path(shards)
            manifest = read_manifest(folder)
            shards = [folder / s["name"] for s in manifest["shards"]]
            self.total_samples = int(manifest["total_samples"])
        else:
            self.total_samples = -1
        self.shards = [str(s) for s in shards]
        default_rank, default_world = _rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.shuffle_buffer, self.seed = shuffle_buffer, seed

    def my_shards(self) -> list[str]:
        mine = self.shards[self.rank :: self.world_size]
        info = torch.utils.data.get_worker_info()
        return mine if info is None else mine[info.id :: info.num_workers]

    def __iter__(self) -> Iterator[Sample]:
        mine = self.my_shards()
        if not mine:
            return iter(())
        pipeline = wds.WebDataset(mine, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
        if self.shuffle_buffer > 0:
            pipeline = pipeline.shuffle(self.shuffle_buffer, rng=__import__("random").Random(self.seed))
        return (decode(r) for r in pipeline)

    def __len__(self) -> int:
        if self.total_samples < 0:
            raise TypeError("length unknown without a manifest")
        return self.total_samples


def read_records(path: "str | Path") -> list[dict]:
    """All raw records of one shard (for tests and inspection)."""
    return list(wds.WebDataset(str(path), shardshuffle=False, nodesplitter=None, workersplitter=None))


