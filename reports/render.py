"""Markdown and CSV writers. One file per table kind; a file holds one table per group (device, size, batch).

Markdown goes through pandas/tabulate with number parsing off, so every figure is printed exactly as
`reports.table` formatted it. CSV is for machines: raw numbers in display units with the unit in the
header, one column per ratio/CI/std, and the group's identity (device, size, batch) in every row, so
rows from different devices stay distinguishable after concatenation.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports.table import ChangeStyle, Column, Table, rows_as_text


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def markdown_table(table: Table, style: ChangeStyle = "ratio") -> str:
    headers = [_md_escape(c.header) for c in table.shown()]
    rows = rows_as_text(table, style, "md", escape=_md_escape)
    frame = pd.DataFrame(rows, columns=headers)
    body = frame.to_markdown(index=False, disable_numparse=True, stralign="left")
    return f"### {table.title} ({table.context.device})\n\n*{table.caption}*\n\n{body}\n"


def write_markdown(tables: list[Table], path: Path, style: ChangeStyle = "ratio") -> Path:
    path.write_text("\n".join(markdown_table(t, style) for t in tables), encoding="utf-8")
    return path


def _csv_columns(col: Column) -> dict[str, list]:
    name = col.csv_header or col.header
    out = {name: list(col.values)}
    if col.change is not None:
        out[f"{name} / baseline (ratio)"] = col.change
    if col.change_ci is not None:
        out[f"{name} / baseline CI low"] = [c[0] if c else None for c in col.change_ci]
        out[f"{name} / baseline CI high"] = [c[1] if c else None for c in col.change_ci]
    if col.spread is not None and any(s is not None for s in col.spread):
        out[f"{name} std over seeds"] = col.spread
    if col.ci is not None:
        out[f"{name} CI low"] = [c[0] if c else None for c in col.ci]
        out[f"{name} CI high"] = [c[1] if c else None for c in col.ci]
    return out


def csv_frame(table: Table) -> pd.DataFrame:
    data: dict[str, list] = {k: [v] * table.n_rows for k, v in table.csv_context.items()}
    data["precision (table)"] = [table.context.precision] * table.n_rows
    for col in table.columns:
        for key, values in _csv_columns(col).items():
            if key not in data:  # a CSV-only copy of a shown column must not overwrite it
                data[key] = values
    return pd.DataFrame(data)


def write_csv(tables: list[Table], path: Path) -> Path:
    pd.concat([csv_frame(t) for t in tables], ignore_index=True).to_csv(path, index=False)
    return path
