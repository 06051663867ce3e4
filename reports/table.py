"""A report table independent of its output format: columns of raw values plus how to show them.

Values are kept as numbers in display units (GiB, ms, %, fractions) so that the Markdown, LaTeX and CSV
writers all print the same figures, and so that tests can check a cell against the input it came from.
A column may carry, per row, a ratio against the baseline row (`change`) and an interval of that ratio
(`change_ci`), a confidence interval of the value (`ci`) or a spread over seeds (`spread`); the writers
decorate the value with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

ChangeStyle = Literal["ratio", "percent"]
Dialect = Literal["md", "tex"]


@dataclass
class Column:
    header: str  # as shown, with its unit: "step (ms)"
    values: list[Any]  # per row: str, float, int or None (empty cell)
    fmt: str = "{:.2f}"
    best: Literal["min", "max"] | None = None  # bold the best numeric value of the column
    change: list[float | None] | None = None  # value / baseline value, per row
    ci: list[tuple[float | None, float | None] | None] | None = None
    change_ci: list[tuple[float, float] | None] | None = None  # an interval of the ratio, per row
    spread: list[float | None] | None = None  # std over seeds
    show: bool = True  # False: CSV only
    csv_header: str | None = None  # the CSV name when it should differ (units spelled out)

    def numeric(self, i: int) -> float | None:
        v = self.values[i]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            return None
        return float(v)

    def best_rows(self) -> set[int]:
        """Rows holding the best value; none when fewer than two rows have a number to compare."""
        numbers = {i: self.numeric(i) for i in range(len(self.values))}
        numbers = {i: v for i, v in numbers.items() if v is not None}
        if self.best is None or len(numbers) < 2:
            return set()
        target = min(numbers.values()) if self.best == "min" else max(numbers.values())
        # Compare as printed: values that print the same are equally best.
        shown = self.fmt.format(target)
        return {i for i, v in numbers.items() if self.fmt.format(v) == shown}

    @property
    def empty(self) -> bool:
        return all(v is None or v == "" or (isinstance(v, float) and math.isnan(v)) for v in self.values)


@dataclass(frozen=True)
class Context:
    """What every table and figure states: the device, size, batch, precision and step count."""

    device: str
    size: str
    batch: str
    precision: str
    steps: str  # "30 timed steps per stage" or "200 training steps"

    def sentence(self) -> str:
        return (
            f"Device: {self.device}; size {self.size}; batch {self.batch}; precision {self.precision}; "
            f"{self.steps}."
        )

    def short(self) -> str:
        return f"{self.device} | size {self.size}, batch {self.batch}, {self.precision}, {self.steps}"


@dataclass
class Table:
    name: str  # file stem shared by every group of this table: "efficiency"
    title: str
    context: Context
    columns: list[Column]
    group: str  # slug naming the group (device, size, batch)
    notes: list[str] = field(default_factory=list)  # sentences after the context in the caption
    csv_context: dict[str, Any] = field(default_factory=dict)  # constant CSV columns: device, size, ...

    @property
    def n_rows(self) -> int:
        return len(self.columns[0].values) if self.columns else 0

    @property
    def caption(self) -> str:
        return " ".join([f"{self.title}.", self.context.sentence(), *self.notes])

    def shown(self) -> list[Column]:
        return [c for c in self.columns if c.show and not c.empty]

    def column(self, header: str) -> Column:
        for c in self.columns:
            if c.header == header or c.csv_header == header:
                return c
        raise KeyError(f"{self.name} has no column {header!r}; columns: {[c.header for c in self.columns]}")


def decimals(values: Sequence[Any], at_least: int = 2, digits: int = 3, most: int = 6) -> str:
    """A format showing the smallest non-zero value with `digits` significant digits: a tiny CPU model's
    0.0218 GiB must not print as 0.022 in every row and hide the differences the table is for."""
    nums = [
        abs(float(v))
        for v in values
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v and not math.isnan(v)
    ]
    if not nums:
        return f"{{:.{at_least}f}}"
    places = digits - 1 - math.floor(math.log10(min(nums)))
    return f"{{:.{min(max(at_least, places), most)}f}}"


def uniform(values: Sequence[Any], what: str = "per row") -> str:
    """The single value, or 'per row (a, b)' so a caption never claims one value for a mixed table."""
    distinct = list(dict.fromkeys(str(v) for v in values if v not in (None, "")))
    if not distinct:
        return "n/a"
    return distinct[0] if len(distinct) == 1 else f"{what} ({', '.join(distinct)})"


def format_change(ratio: float, style: ChangeStyle, dialect: Dialect) -> str:
    """0.76× or −23.6 %; the minus is a real minus sign (or math-mode in LaTeX)."""
    if style == "ratio":
        return f"{ratio:.2f}" + (r"$\times$" if dialect == "tex" else "×")
    pct = (ratio - 1.0) * 100.0
    text = f"{abs(pct):.1f}"
    sign = "+" if pct > 0 else ("" if text == "0.0" else ("$-$" if dialect == "tex" else "−"))
    return sign + text + (r"\,\%" if dialect == "tex" else " %")


def format_cell(
    col: Column, i: int, style: ChangeStyle, dialect: Dialect, bold: bool, escape=lambda s: s
) -> str:
    value = col.values[i]
    number = col.numeric(i)
    if number is None:
        return escape("" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value))
    text = col.fmt.format(number)
    if bold:
        text = rf"\textbf{{{text}}}" if dialect == "tex" else f"**{text}**"
    pm = r"$\pm$" if dialect == "tex" else "±"
    if col.spread is not None and col.spread[i] is not None:
        text += f" {pm} {col.fmt.replace('+', '').format(col.spread[i])}"  # a spread has no sign
    if col.ci is not None and col.ci[i] is not None and None not in col.ci[i]:
        lo, hi = col.ci[i]
        text += f" [{col.fmt.format(lo)}, {col.fmt.format(hi)}]"
    if col.change is not None and col.change[i] is not None:
        change = format_change(col.change[i], style, dialect)
        if col.change_ci is not None and col.change_ci[i] is not None:
            # "0.91× [0.90, 0.93]": the unit is said once, at the ratio.
            lo, hi = (f"{r:.2f}" if style == "ratio" else format_change(r, style, dialect) for r in col.change_ci[i])
            change += f" [{lo}, {hi}]"
        text += f" ({change})"
    return text


def rows_as_text(table: Table, style: ChangeStyle, dialect: Dialect, escape=lambda s: s) -> list[list[str]]:
    columns = table.shown()
    best = [c.best_rows() for c in columns]
    return [
        [format_cell(c, i, style, dialect, i in b, escape) for c, b in zip(columns, best)]
        for i in range(table.n_rows)
    ]
