"""`python -m reports.build RESULTS... --out DIR`: the paper's tables and figures from result files.

RESULTS are JSON Lines files or folders of them (searched recursively for *.jsonl); efficiency rows
(bench) and accuracy rows (ablations) may share files. Tables: efficiency (the seed's layout, extended),
ofat (single switch), loo (leave one out), estimate (estimated against measured), accuracy-<protocol> and
per-abnormality-<protocol>, each as .md, .tex and .csv, one table per device/size/batch group inside a
file; report.tex inputs every LaTeX table. Plots: memory-, stages-, tradeoff-, roc- and loss-<group>.png.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from reports import accuracy, efficiency, labels
from reports.latex import write_document, write_latex
from reports.load import AccRow, Device, EffRow, ResultFileError, load
from reports.rounds import merge_rounds
from reports.plots import memory_plot, stages_plot, tradeoff_plot
from reports.plots_accuracy import loss_plot, roc_plot
from reports.render import write_csv, write_markdown
from reports.table import ChangeStyle, Table

FORMATS = ("md", "tex", "csv", "png")
# Table files in the order a reader (and report.tex) meets them.
TABLE_ORDER = ("efficiency", "ofat", "loo", "estimate", "accuracy", "per-abnormality")


def _group_slug(device: Device, *rest: object) -> str:
    return labels.slug(device.type if device.type == "cpu" else device.name, *rest)


class _Slugs:
    """Unique group slugs: two groups that print alike (same CPU model, other core count) get -2."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple] = {}

    def __call__(self, key: tuple, base: str) -> str:
        slug, n = base, 1
        while slug in self.seen and self.seen[slug] != key:
            n += 1
            slug = f"{base}-{n}"
        self.seen[slug] = key
        return slug


def efficiency_tables(
    rows: list[EffRow], slugs: _Slugs
) -> tuple[list[Table], list[tuple[str, list[EffRow]]]]:
    measured = [r for r in rows if r.kind == "measured"]
    estimates = [r for r in rows if r.kind == "estimate"]
    tables: list[Table] = []
    groups: list[tuple[str, list[EffRow]]] = []
    for key, grows in efficiency.group(measured):
        device, size, batch = key
        slug = slugs(key, _group_slug(device, size, f"b{batch}"))
        current = merge_rounds(grows)
        groups.append((slug, current))
        tables.append(efficiency.efficiency_table(current, slug))
        for design in ("ofat", "loo"):
            table = efficiency.switch_table(merge_rounds(r for r in grows if r.design == design), design, slug)
            if table is not None:
                tables.append(table)
    by_size: dict[tuple, list[EffRow]] = {}
    for e in estimates:
        by_size.setdefault((e.size, e.batch), []).append(e)
    for (size, batch), es in by_size.items():
        pool = [m for m in measured if m.size == size and m.batch == batch]
        tables.append(efficiency.estimate_table(es, pool, labels.slug("estimate", size, f"b{batch}")))
    return tables, groups


def accuracy_tables(rows: list[AccRow], slugs: _Slugs, average: str) -> tuple[list[Table], list[tuple]]:
    tables: list[Table] = []
    groups = []
    for key, grows in accuracy.group(rows):
        device, size, batch, data = key
        slug = slugs(key, _group_slug(device, size, f"b{batch}", data))
        protocols = accuracy.protocols(grows)
        groups.append((slug, grows, protocols))
        for protocol in protocols or ["ctclip"]:
            tables.append(accuracy.accuracy_table(grows, protocol, slug, average))
            if protocols:
                tables.append(accuracy.per_class_table(grows, protocol, slug))
    return tables, groups


def _table_files(tables: list[Table], out: Path, formats: Sequence[str], style: ChangeStyle) -> list[Path]:
    names = list(dict.fromkeys(t.name for t in tables))
    names.sort(key=lambda n: next((i for i, p in enumerate(TABLE_ORDER) if n.startswith(p)), 99))
    written: list[Path] = []
    tex: list[Path] = []
    for name in names:
        group = [t for t in tables if t.name == name]
        if "md" in formats:
            written.append(write_markdown(group, out / f"{name}.md", style))
        if "tex" in formats:
            tex.append(write_latex(group, out / f"{name}.tex", style))
        if "csv" in formats:
            written.append(write_csv(group, out / f"{name}.csv"))
    if tex:
        written += tex + [write_document(tex, out / "report.tex")]
    return written


def build_reports(
    paths: Iterable[str | Path],
    out_dir: str | Path,
    formats: Iterable[str] = FORMATS,
    change: ChangeStyle = "ratio",
    average: str = "macro",
) -> list[Path]:
    """Write every table and plot the rows under `paths` allow into `out_dir`; returns the files written.

    Raises ResultFileError (a ValueError whose message names the file and line) for an unreadable
    result file, and ValueError for an unknown format.
    """
    formats = [f.strip() for f in formats if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format {unknown[0]!r}; valid formats: {', '.join(FORMATS)}")
    if change not in ("ratio", "percent"):
        raise ValueError(f"change style {change!r} must be 'ratio' or 'percent'")
    if average not in ("macro", "weighted"):
        raise ValueError(f"average {average!r} must be 'macro' or 'weighted'")
    results = load(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slugs = _Slugs()
    eff_tables, eff_groups = efficiency_tables(results.efficiency, slugs)
    acc_tables, acc_groups = accuracy_tables(results.accuracy, slugs, average)
    written = _table_files(eff_tables + acc_tables, out, formats, change)
    if "png" in formats:
        for slug, rows in eff_groups:
            ctx = efficiency.context(rows)
            written += [
                memory_plot(rows, ctx, out / f"memory-{slug}.png"),
                stages_plot(rows, ctx, out / f"stages-{slug}.png"),
                tradeoff_plot(rows, ctx, out / f"tradeoff-{slug}.png"),
            ]
        for slug, rows, protocols in acc_groups:
            ctx = accuracy.context(rows)
            for made in (
                roc_plot(rows, ctx, out / f"roc-{slug}.png", protocols[0] if protocols else None),
                loss_plot(rows, ctx, out / f"loss-{slug}.png"),
            ):
                if made is not None:
                    written.append(made)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reports.build",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", nargs="+", metavar="RESULTS", help="result files (*.jsonl) or folders of them")
    p.add_argument("--out", required=True, help="folder for the tables and plots (created if missing)")
    p.add_argument(
        "--format",
        default=",".join(FORMATS),
        help=f"comma-separated subset of {','.join(FORMATS)} (default: all)",
    )
    p.add_argument(
        "--change",
        choices=["ratio", "percent"],
        default="ratio",
        help="show the change against the baseline row as 0.76x (ratio) or -23.6 %% (percent)",
    )
    p.add_argument(
        "--average",
        choices=["macro", "weighted"],
        default="macro",
        help="how accuracy metrics are averaged over abnormalities",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        written = build_reports(args.results, args.out, args.format.split(","), args.change, args.average)
    except ResultFileError as exc:
        print(f"reports.build: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        parser.error(str(exc))
    for path in written:
        print(path)
    print(f"reports.build: {len(written)} files in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
