"""What a row records of the CT-RATE tree it read: its name, whether it is generated, and which release
of the labels, reports and metadata CSVs it holds (their SHA-256s). Written into shard manifests by
`prepare` and into accuracy rows by `ablations.run` and `ablations.evaluate_checkpoint`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from ablations.data.layout import Layout


def is_synthetic(root: Path) -> bool:
    """Whether `root` holds generated phantoms (their metadata names the manufacturer SYNTHETIC)."""
    import pandas as pd

    layout = Layout.find(root)
    for split in ("train", "valid"):
        try:
            meta = pd.read_csv(layout.metadata_csv(split), nrows=1)
            return str(meta.get("Manufacturer", [""])[0]) == "SYNTHETIC"
        except Exception:
            continue
    return False


def csv_digests(root: Path, splits: Sequence[str]) -> dict[str, str]:
    """The first 16 hex digits of each CSV's SHA-256, by its path in the tree: which release of the
    labels, reports and metadata a row's figures come from."""
    layout = Layout.find(root)
    files = [csv(split) for split in splits for csv in (layout.labels_csv, layout.reports_csv, layout.metadata_csv)]
    return {str(f.relative_to(layout.root)): hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files}


def describe_tree(root: Path, splits: Sequence[str]) -> dict[str, str | dict[str, str]]:
    """The row's `data.name`, `data.source` and `data.csv_sha256` for the `splits` read from `root`."""
    return {"name": Path(root).resolve().name, "source": "synthetic" if is_synthetic(root) else "ct-rate",
            "csv_sha256": csv_digests(root, splits)}
