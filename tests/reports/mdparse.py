"""A minimal reader of the Markdown the reports write: sections of '### title', '*caption*', table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    title: str
    caption: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)

    def row(self, column: str, startswith: str, **equal: str) -> dict[str, str]:
        found = [
            r
            for r in self.rows
            if r[column].startswith(startswith) and all(r[k] == v for k, v in equal.items())
        ]
        assert len(found) == 1, f"{len(found)} rows with {column} starting {startswith!r} in {self.title}"
        return found[0]


def _cells(line: str) -> list[str]:
    return [c.strip().replace(r"\|", "|") for c in line.strip().strip("|").split(" | ")]


def sections(path: Path) -> list[Section]:
    out: list[Section] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            out.append(Section(line[4:]))
        elif line.startswith("*") and line.endswith("*") and out:
            out[-1].caption = line.strip("*")
        elif line.startswith("|") and out:
            cells = _cells(line)
            if not out[-1].headers:
                out[-1].headers = cells
            elif not set(line) <= set("|:- "):
                out[-1].rows.append(dict(zip(out[-1].headers, cells)))
    return out
