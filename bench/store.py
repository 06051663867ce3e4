"""Result files: JSON Lines appended one row at a time, and a CSV regenerated beside it.

A row is written with one `write` of a complete line followed by flush and fsync, so a killed sweep
loses at most the cell in flight and leaves at worst one truncated last line. Readers report such a
line and skip it; `repair` cuts it off before a resumed sweep appends after it.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from bench.result import Result


@dataclass
class ReadReport:
    results: list[Result] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one human-readable line per skipped line


def append(path: Path, result: Result) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(result.to_dict(), separators=(",", ":")) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read(path: Path) -> ReadReport:
    """Every parseable row of `path`; unparseable lines (a truncated last line above all) are reported."""
    report = ReadReport()
    if not path.exists():
        return report
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = number == len(lines)  # no newline after it: the writer died mid-line
        try:
            report.results.append(Result.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            what = "truncated last line" if last else "unreadable line"
            report.problems.append(f"{path}:{number}: {what} ({len(line)} bytes) skipped: {exc}")
    return report


def repair(path: Path) -> str | None:
    """Cut a partial last line (no trailing newline) off `path`, keeping it in `<path>.partial`.

    Returns a message saying what was cut, or None when the file ends cleanly.
    """
    if not path.exists():
        return None
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    cut = data.rfind(b"\n") + 1
    with open(path.with_suffix(path.suffix + ".partial"), "ab") as fh:
        fh.write(data[cut:] + b"\n")
    with open(path, "r+b") as fh:
        fh.truncate(cut)
    return f"{path}: truncated last line ({len(data) - cut} bytes) moved to {path.name}.partial; its cell will rerun"


def _semicolon_joined(values: list) -> str:
    return ";".join(str(v) for v in values)


def flatten(data: Any, prefix: str = "",
            skip: Iterable[str] = ("samples", "profile", "top_ops", "top_signatures"),
            encode_list: Callable[[list], Any] = _semicolon_joined) -> dict[str, Any]:
    """Nested dicts -> dotted keys, for CSV. Keys in `skip` are left out (bench rows: raw timing samples
    and per-op lists, which stay in the JSONL); lists become one cell through `encode_list`."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if key not in skip:
                out.update(flatten(value, f"{prefix}{key}.", skip, encode_list))
        return out
    out[prefix.rstrip(".")] = encode_list(data) if isinstance(data, list) else data
    return out


def write_csv(path: Path, results: Iterable[Result]) -> None:
    rows = [flatten(r.to_dict()) for r in results]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
