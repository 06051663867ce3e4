"""Accuracy result rows: one per (variant, seed), the contract between `ablations.run` and `reports`.

The schema is specified in docs/accuracy-schema.md (schema version 1); this dataclass is that table in
code. A result file is JSON Lines (one `AccuracyResult.to_dict()` per line, appended as each run
finishes) with a CSV beside it (nested fields flattened with dots; curves and per-class blocks left
out). Units: seconds; metrics are fractions in [0, 1].
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from bench import store

SCHEMA_VERSION = 1
KIND = "accuracy"
STATUSES = ("ok", "error", "unsupported", "diverged")


def accuracy_cell_key(variant_key: str, size: str, seed: int, data_name: str) -> str:
    return f"{variant_key}|{size}|seed{seed}|{data_name}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class AccuracyResult:
    cell_key: str
    variant_key: str
    variant: dict[str, Any]
    size: str
    size_config: dict[str, Any]
    batch: int
    seed: int
    status: str
    design: "str | None" = None
    baseline: bool = False
    reason: "str | None" = None
    message: "str | None" = None
    device: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    loss_curve: list[dict[str, float]] = field(default_factory=list)
    prompts: dict[str, str] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    protocols: dict[str, dict[str, Any]] = field(default_factory=dict)
    roc: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    scores_file: "str | None" = None  # per-volume scores, relative to the rows file (ablations.paired)
    vs_baseline: "dict[str, Any] | None" = None  # paired AUROC difference from the design's baseline
    env: dict[str, Any] = field(default_factory=dict)
    git: dict[str, Any] = field(default_factory=dict)
    timestamp: str = field(default_factory=utc_now)
    schema_version: int = SCHEMA_VERSION
    kind: str = KIND

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "AccuracyResult":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known})  # readers ignore unknown fields


def flatten(row: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: nested dicts joined with dots, lists as JSON; curves, ROC points and per-class
    blocks left out (they stay in the JSONL)."""
    return store.flatten(row, skip=("loss_curve", "roc", "per_class"), encode_list=json.dumps)


def append_row(path: "str | Path", result: AccuracyResult) -> None:
    """Append one JSON line (flushed and fsynced, so an interrupted sweep loses nothing written) and
    rewrite the CSV beside it from the whole JSONL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(result.to_dict()) + "\n")
        f.flush()
        os.fsync(f.fileno())
    write_csv(path.with_suffix(".csv"), read_rows(path))


def read_rows(path: "str | Path") -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write; the cell will simply be rerun
        if row.get("kind") == KIND:
            rows.append(row)
    return rows


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    import pandas as pd

    pd.DataFrame([flatten(r) for r in rows]).to_csv(path, index=False)


def row_environment(device) -> tuple[dict, dict, dict]:
    """(device, env, git) blocks for a row: the bench's recorder, so both kinds of rows describe machines
    alike."""
    from bench.environment import device_info, environment, git_info

    return device_info(device), environment(device), git_info()


def write_reports(rows_path: Path, out: Path, formats: list[str]) -> None:
    """Tables from the rows file into OUT/reports (`reports.build`); a failure is reported, not raised,
    since the rows are the result."""
    if not formats:
        return
    try:
        from reports.build import build_reports
    except ImportError:
        print("note: reports.build is not available; skipped the tables (rows are written)")
        return
    try:
        build_reports([rows_path], out / "reports", formats)
        print(f"reports: {out / 'reports'}")
    except Exception as error:
        print(f"note: reports.build failed ({type(error).__name__}: {error}); rows are intact")
