"""Efficiency plots, one PNG per group (device, size, batch) at print resolution (300 dpi).

- memory-<group>.png   peak memory per variant (GPU allocator peak; on a CPU the accounting parts,
                       stacked, with the peak RSS marked, labelled as CPU figures)
- stages-<group>.png   stage medians stacked, each with its IQR as an error bar, and the separately
                       timed whole step with p10-p90 whiskers (so a stage sum that misses the step shows)
- tradeoff-<group>.png memory against step time, p10-p90 whiskers, the Pareto front drawn

Rows that did not run are listed with their status instead of a bar, so a missing cell is never just
absent. Every title states device, size, batch, precision and the number of timed steps.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt

from reports import labels, schema
from reports.efficiency import STAGE_HEADERS, memory_figures
from reports.load import EffRow
from reports.table import Context

DPI = 300
GIB = schema.GIB
STAGE_COLOURS = {
    "text_forward": "#8da0cb",
    "vision_forward": "#66c2a5",
    "loss": "#ffd92f",
    "backward": "#fc8d62",
    "optimizer": "#a6d854",
}


def name(row: EffRow) -> str:
    return f"{labels.architecture(row.variant)}, {labels.loss(row.variant)}" + (
        f", {row.precision}" if row.precision != "fp32" else ""
    )


def title(fig: plt.Figure, what: str, ctx: Context) -> None:
    if ctx.device.startswith("CPU"):
        what = "CPU figures: " + what[0].lower() + what[1:]
    fig.suptitle(what + "\n" + "\n".join(textwrap.wrap(ctx.short(), 110)), fontsize=8)


def save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _bar_axes(n: int, width: float = 7.0) -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(width, 1.4 + 0.32 * n))
    ax.set_yticks(range(n))
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=6)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    return fig, ax


def _legend(ax: plt.Axes) -> None:
    if not ax.get_legend_handles_labels()[0]:
        return  # e.g. a memory plot in which no row has a CPU- or GPU-labelled bar
    # Outside the axes: inside, it hides the bars of the last rows.
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _mark_not_run(ax: plt.Axes, i: int, row: EffRow) -> None:
    ax.text(
        0,
        i,
        f" {labels.status(row.status)}: {labels.note(row.status, row.reason, row.message)[:60]}",
        va="center",
        ha="left",
        fontsize=6,
        color="#b22222",
    )


def memory_plot(rows: list[EffRow], ctx: Context, path: Path) -> Path:
    fig, ax = _bar_axes(len(rows))
    ax.set_yticklabels([name(r) for r in rows])
    if rows[0].device.type == "cuda":
        for i, r in enumerate(rows):
            v = r.memory.get(schema.GPU_PEAK)
            if r.status == "ok" and v is not None:
                ax.barh(i, v / GIB, color="#4c72b0")
            else:
                _mark_not_run(ax, i, r)
        ax.set_xlabel("GPU memory, peak allocated (GiB)", fontsize=7)
        what = "Peak GPU memory per variant"
    else:
        parts = {
            schema.PARAMS: "params",
            schema.GRADS: "grads",
            schema.OPTIMIZER: "optimizer state",
            schema.SAVED: "saved activations",
        }
        for i, r in enumerate(rows):
            values = [r.memory.get(k) for k in parts]
            if r.status != "ok" or any(v is None for v in values):
                _mark_not_run(ax, i, r)
                continue
            left = 0.0
            for (key, label), v in zip(parts.items(), values):
                ax.barh(
                    i,
                    v / GIB,
                    left=left,
                    color=plt.cm.tab10(list(parts).index(key)),
                    label=label if i == next(j for j, x in enumerate(rows) if x.status == "ok") else None,
                )
                left += v / GIB
            rss = r.memory.get(schema.CPU_RSS_PEAK)
            if rss is not None:
                ax.plot(
                    [rss / GIB],
                    [i],
                    marker="|",
                    markersize=10,
                    color="black",
                    label="peak RSS" if not ax.get_legend_handles_labels()[1].count("peak RSS") else None,
                )
        ax.set_xlabel(
            f"{memory_figures('cpu')[0].header}; | marks {memory_figures('cpu')[1].header}", fontsize=7
        )
        _legend(ax)
        what = "Memory per variant (no GPU memory on this device: accounting and RSS)"
    title(fig, what, ctx)
    return save(fig, path)


def stages_plot(rows: list[EffRow], ctx: Context, path: Path) -> Path:
    fig, ax = _bar_axes(len(rows))
    ax.set_yticklabels([name(r) for r in rows])
    labelled: set[str] = set()
    for i, r in enumerate(rows):
        if r.status != "ok" or not r.stages:
            _mark_not_run(ax, i, r)
            continue
        left = 0.0
        for stage in schema.STAGES:
            s = r.stages.get(stage)
            if s is None:
                continue
            ax.barh(
                i,
                s.median * 1e3,
                left=left,
                color=STAGE_COLOURS[stage],
                xerr=[[s.iqr / 2 * 1e3], [s.iqr / 2 * 1e3]],
                error_kw={"elinewidth": 0.6, "capsize": 1.5},
                label=STAGE_HEADERS[stage] if stage not in labelled else None,
            )
            labelled.add(stage)
            left += s.median * 1e3
        step = r.stages.get("step")
        if step is not None:
            ax.errorbar(
                [step.median * 1e3],
                [i],
                xerr=[[(step.median - step.p10) * 1e3], [(step.p90 - step.median) * 1e3]],
                fmt="D",
                color="black",
                markersize=3,
                elinewidth=0.8,
                capsize=2,
                label="whole step (p10-p90)" if "step" not in labelled else None,
            )
            labelled.add("step")
    ax.set_xlabel("time per training step (ms); bars: stage medians ± IQR/2", fontsize=7)
    if labelled:
        _legend(ax)
    title(fig, "Stage latencies per variant", ctx)
    return save(fig, path)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both time and memory, sorted by time."""
    front, best_mem = [], float("inf")
    for t, m in sorted(points):
        if m < best_mem:
            front.append((t, m))
            best_mem = m
    return front


def tradeoff_plot(rows: list[EffRow], ctx: Context, path: Path) -> Path:
    figure = memory_figures(rows[0].device.type)[0]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points = []
    for r in rows:
        step, mem = r.stages.get("step"), figure.get(r)
        if r.status != "ok" or step is None or mem is None:
            continue
        t, m = step.median * 1e3, mem / GIB
        points.append((t, m))
        k = len(points)
        # Numbers at the points and names in the legend: real sweeps put many variants on one spot.
        ax.errorbar(
            [t],
            [m],
            xerr=[[t - step.p10 * 1e3], [step.p90 * 1e3 - t]],
            fmt="o",
            markersize=4,
            capsize=2,
            elinewidth=0.8,
            color=plt.cm.tab20((k - 1) % 20),
            label=f"{k}: {name(r)}" + (" (baseline)" if r.baseline else ""),
        )
        ax.annotate(str(k), (t, m), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = _pareto(points)
    if len(front) > 1:
        ax.plot(*zip(*front), linestyle="--", linewidth=0.8, color="grey", label="Pareto front")
    if points:
        _legend(ax)
    skipped = [r for r in rows if r.status != "ok"]
    if skipped:
        text = "Not run: " + "; ".join(f"{name(r)} ({labels.status(r.status)})" for r in skipped)
        ax.text(0.0, -0.16, "\n".join(textwrap.wrap(text, 120)), transform=ax.transAxes, fontsize=5, va="top")
    ax.set_xlabel("total step, median (ms); whiskers p10-p90", fontsize=7)
    ax.set_ylabel(figure.header, fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    title(fig, "Memory against step time (lower left is better)", ctx)
    return save(fig, path)
