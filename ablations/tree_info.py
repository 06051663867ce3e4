"""Where an accuracy run's volumes come from, what its row records about them, and the patients held
out of training.

`--data` is a CT-RATE tree (real or generated), read and resampled as it goes, or a folder of shards
prepared from one (`python -m ablations.data.prepare`), read as stored (float16, already resampled).
Shared by `ablations.run` (train, then evaluate) and `ablations.evaluate_checkpoint` (evaluate only), so
that both read and describe their data alike and fit the `clean` protocol's thresholds on the same
volumes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Sequence

from ablations.data.provenance import describe_tree


def split_calibration(dataset, fraction: float) -> tuple[list[int], list[int]]:
    """(train indices, calibration indices): whole patients, chosen by a hash of the patient id so the
    slice does not depend on the order or number of volumes."""
    from ablations.evaluate import patient_groups

    names = [s.name for s in dataset] if isinstance(dataset, list) else list(dataset.names)
    groups = patient_groups(names) or names
    held = [i for i, g in enumerate(groups)
            if int(hashlib.sha256(g.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction]
    held_set = set(held)
    return [i for i in range(len(names)) if i not in held_set], held


class Subset:
    """The items of `data` at `indices`, in that order (a list or a lazily reading data set)."""

    def __init__(self, data, indices: list[int]) -> None:
        self.data, self.indices = data, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.data[self.indices[i]]


def file_stem(key: str) -> str:
    """A file-system-safe name for a cell key, unique by its hash suffix (checkpoints, scores, curves)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)[:150] + "-" + hashlib.sha1(key.encode()).hexdigest()[:8]


def is_shard_folder(path: "str | Path") -> bool:
    """Whether `path` holds prepared splits (`<split>/manifest.json`) rather than a CT-RATE tree."""
    return any((Path(path) / split / "manifest.json").is_file() for split in ("train", "valid"))


def open_split(root: Path, split: str, size, rescale: str = "auto", skip_bad: bool = False):
    """One split as a map-style data set of `Sample`s at `size` (a models.Size): a CT-RATE tree's
    (`rescale` and `skip_bad` as the loader takes them) or prepared shards' (prepared at that size)."""
    if is_shard_folder(root):
        from ablations.data.shard_index import ShardDataset

        if skip_bad or rescale != "auto":
            print(f"note: {root} holds prepared shards: --skip-bad and --rescale applied when they were prepared "
                  "(ablations.data.prepare) and do nothing here")
        return ShardDataset(Path(root) / split, (size.depth, size.image_size, size.image_size))
    from ablations.data.ctrate import CTRateDataset

    return CTRateDataset(root, split, size, rescale, skip_bad)


def describe_data(root: Path, splits: Sequence[str]) -> dict:
    """`describe_tree`, for shards from what prepare recorded of their tree. A shard run's name gets
    `-shards` so its rows, trained on float16-rounded volumes, never resume or average with the tree's."""
    if not is_shard_folder(root):
        return describe_tree(root, splits)
    from ablations.data.shards import read_manifest

    manifests = [read_manifest(Path(root) / s) for s in splits]
    tree = next((m["data"] for m in manifests if m.get("data")), {})
    digests = {k: v for m in manifests for k, v in (m.get("data") or {}).get("csv_sha256", {}).items()}
    return {"name": f"{tree.get('name', Path(root).resolve().name)}-shards", "source": tree.get("source", "unknown"),
            "csv_sha256": digests, "shards": str(Path(root).resolve()),
            "volume_dtype": manifests[0].get("volume_dtype", "float16")}
