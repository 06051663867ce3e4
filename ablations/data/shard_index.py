"""Random access to prepared shards (`python -m ablations.data.prepare`), so `ablations.run` and
`ablations.evaluate_checkpoint` read them in place of a CT-RATE tree.

The training loop draws each step's batch by index (`ablations.train.batch_indices`: deterministic,
the same after a resume, split across ranks), which an iterable WebDataset stream cannot serve. So
`ShardDataset` indexes every tar once (each member's data offset and size, from its headers) and
reads one sample's four members with a seek and a read. A sample decodes to the `ShardReader`'s
tensors: the direct loader's, rounded to float16 once at prepare time, and no resampling at all at
training time (a paper-size volume is read in a fraction of a second instead of ~4 s of a core).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterator

import torch

from ablations.data.ctrate import Sample
from ablations.data.errors import DataError
from ablations.data.shards import decode, read_manifest

MEMBERS = ("bin", "txt", "labels", "json")  # what shards.encode writes for each sample


def _key_and_ext(member_name: str) -> tuple[str, str]:
    # WebDataset's rule: the key is the path up to the first dot of the file's name.
    folder, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


class ShardDataset(torch.utils.data.Dataset):
    """Map-style view of one prepared split: `names` in the manifest's shard order (sorted, as prepare
    writes them), `self[i]` the i-th sample.

    `volume_shape` (D, H, W), when given, must be the shape the shards were prepared at: a tiny run
    must not train on small-size volumes."""

    def __init__(self, folder: "str | Path", volume_shape: "tuple[int, int, int] | None" = None) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        prepared = tuple(self.manifest["volume_shape"])
        if volume_shape is not None and prepared != tuple(volume_shape):
            raise DataError(self.folder, f"shards were prepared at {list(prepared)} (size "
                            f"{self.manifest.get('size')}) but the model takes {list(volume_shape)}",
                            "prepare them again with --size matching the run's, or pick that size")
        self.names: list[str] = []
        self._where: list[tuple[Path, dict[str, tuple[int, int]]]] = []  # shard file, ext -> (offset, size)
        for shard in self.manifest["shards"]:
            path = self.folder / shard["name"]
            entries = self._index(path)
            if len(entries) != shard["samples"]:
                raise DataError(path, f"holds {len(entries)} complete samples; the manifest says "
                                f"{shard['samples']}", "delete the shard and rerun ablations.data.prepare")
            for key, members in entries.items():
                self.names.append(key)
                self._where.append((path, members))

    @staticmethod
    def _index(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
        entries: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if member.isfile():
                        key, ext = _key_and_ext(member.name)
                        entries.setdefault(key, {})[ext] = (member.offset_data, member.size)
        except (OSError, tarfile.TarError) as error:
            raise DataError(path, f"cannot read the shard ({error})", "rerun ablations.data.prepare") from error
        incomplete = [k for k, members in entries.items() if not set(MEMBERS) <= set(members)]
        if incomplete:
            raise DataError(path, f"samples without all of {', '.join(MEMBERS)}: {', '.join(incomplete[:5])}",
                            "rerun ablations.data.prepare")
        return entries

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        path, members = self._where[index]
        record = {}
        # One open per sample: cheap next to reading a volume, and safe in forked DataLoader workers.
        with open(path, "rb") as fh:
            for ext in MEMBERS:
                offset, size = members[ext]
                fh.seek(offset)
                record[ext] = fh.read(size)
        return decode(record)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]
