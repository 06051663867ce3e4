"""Efficiency tables from bench rows: the seed's table (extended), single-switch, leave-one-out, and
estimate against measurement.

Rows are grouped by (device, size, batch) and each group is its own table, so numbers from two devices
never share a table. Inside a group every figure is compared with the group's baseline row as a ratio
(value / baseline). Memory is the GPU allocator peak on CUDA; a CPU has no GPU memory, so its rows show
the device-independent accounting (parameters + gradients + optimizer state + saved activations) and
the process's peak RSS, both labelled as CPU figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from reports import labels, schema
from reports.load import EffRow, latest
from reports.rounds import merge_rounds, ms_intervals, n_rounds, ratio_intervals, round_medians
from reports.stats import CONFIDENCE, Interval
from reports.table import Column, Context, Table, decimals, uniform

GIB = schema.GIB
STAGE_HEADERS = {
    "vision_forward": "visual enc fwd",
    "backward": "backward",
    "step": "total step",
    "text_forward": "text fwd",
    "loss": "loss fn",
    "optimizer": "optimizer",
}
# The seed's three stage columns first, then the stages it did not report.
STAGE_ORDER = ("vision_forward", "backward", "step", "text_forward", "loss", "optimizer")


@dataclass(frozen=True)
class MemoryFigure:
    header: str
    get: Callable[[EffRow], float | None]  # bytes


def _accounting(row: EffRow) -> float | None:
    parts = [row.memory.get(k) for k in schema.ACCOUNTING_PARTS]
    return float(sum(parts)) if all(p is not None for p in parts) else None


GPU_MEMORY = MemoryFigure("GPU mem, peak allocated (GiB)", lambda r: r.memory.get(schema.GPU_PEAK))
CPU_ACCOUNTING = MemoryFigure("CPU: params+grads+opt+saved act. (GiB)", _accounting)
CPU_RSS = MemoryFigure("CPU: peak RSS (GiB)", lambda r: r.memory.get(schema.CPU_RSS_PEAK))


def memory_figures(device_type: str) -> list[MemoryFigure]:
    """The headline memory figure first."""
    return [GPU_MEMORY] if device_type == "cuda" else [CPU_ACCOUNTING, CPU_RSS]


def group(rows: Iterable[EffRow]) -> list[tuple[tuple, list[EffRow]]]:
    """Rows split by (device, size, batch), in first-seen order."""
    groups: dict[tuple, list[EffRow]] = {}
    for r in rows:
        groups.setdefault((r.device, r.size, r.batch), []).append(r)
    return list(groups.items())


def is_faithful(row: EffRow) -> bool:
    """Whether the row is CT-CLIP's faithful variant at whatever precision: bench's variant keys name the
    axes that differ from it, so its key is `faithful` at fp32 and `prec=bf16` or `prec=fp16` otherwise."""
    return [p for p in row.variant_key.split(",") if not p.startswith("prec=")] in ([], ["faithful"])


def pick_baseline(rows: list[EffRow], design: str | None = None) -> EffRow | None:
    """The row others are compared with: the design's baseline (the paper design's when mixed), else
    the faithful variant (at the rows' precision: a group is one device, size and batch, normally one
    precision), else None: ratios against an arbitrary row would read as effects, so there are none."""
    ok = [r for r in rows if r.status == "ok"]
    preferred = [design] if design else ["paper", "ofat", "full", "loo", None]
    for d in preferred:
        for r in ok:
            if r.baseline and r.design == d:
                return r
    return next((r for r in ok if is_faithful(r)), None)


def context(rows: list[EffRow]) -> Context:
    r0 = rows[0]
    steps = [r.stages["step"].n for r in rows if "step" in r.stages]
    n = uniform(steps, "per row")
    text = f"timed steps: {n} per stage (medians)" if steps else "no timed steps"
    if any(n_rounds(r) > 1 for r in rows):
        count = uniform([n_rounds(r) for r in rows], "per row")
        text = (f"timed steps: {n} per stage per round, {count} rounds (each row is its cell's median "
                "round by step time)") if steps else text
    return Context(
        device=r0.device.label,
        size=r0.size,
        batch=str(r0.batch),
        precision=uniform([r.precision for r in rows]),
        steps=text,
    )


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def _with_change(
    header: str,
    values: list[float | None],
    base_index: int | None,
    best: str | None,
    at_least: int = 2,
    csv_header: str | None = None,
) -> Column:
    fmt = decimals(values, at_least)
    base = values[base_index] if base_index is not None else None
    change = [None if i == base_index else _ratio(v, base) for i, v in enumerate(values)]
    return Column(header, values, fmt=fmt, best=best, change=change, csv_header=csv_header)


def _stage_ms(row: EffRow, stage: str, stat: str = "median") -> float | None:
    s = row.stages.get(stage)
    return getattr(s, stat) * 1e3 if s is not None else None


def interval_note(columns: list[Column], rows: list[EffRow]) -> list[str]:
    """The caption sentence for ratio intervals, when a shown column has any."""
    if not any(c.change_ci and any(c.change_ci) for c in columns if c.show):
        return []
    if any(n_rounds(r) > 1 for r in rows):
        return [
            f"Square brackets after a step-time ratio: its {CONFIDENCE:.0%} two-level bootstrap interval "
            "(each cell's rounds resampled, then each round's timed steps; reports/stats.py), so it includes "
            "run-to-run variation; an interval that contains 1.00× is a difference these rounds did not resolve."
        ]
    return [
        f"Square brackets after a step-time ratio: its {CONFIDENCE:.0%} bootstrap interval (each row's timed "
        "steps resampled on their own; reports/stats.py). It covers the noise among one process's steps, "
        "not drift within a run or run-to-run variation (bench.run --rounds measures that); an interval "
        "that contains 1.00× is a difference this run did not resolve."
    ]


def _gib(x: float | None) -> float | None:
    return x / GIB if x is not None else None


def _csv_context(rows: list[EffRow]) -> dict:
    r0 = rows[0]
    return {"device type": r0.device.type, "device": r0.device.label, "size": r0.size, "batch": r0.batch}


def _name(row: EffRow, base: EffRow | None) -> str:
    return labels.architecture(row.variant) + (" (baseline)" if row is base else "")


def efficiency_table(rows: list[EffRow], group_slug: str) -> Table:
    """The seed's table: arch, loss, memory, visual-encoder forward, backward, total step, then the rest."""
    base = pick_baseline(rows)
    bi = rows.index(base) if base is not None else None
    ctx = context(rows)
    mem = memory_figures(rows[0].device.type)
    cols = [
        Column("architecture", [_name(r, base) for r in rows]),
        Column("loss", [labels.loss(r.variant) for r in rows]),
    ]
    if "per row" in ctx.precision:
        cols.append(Column("precision", [r.precision for r in rows]))
    cols.append(Column("status", [labels.status(r.status) for r in rows]))
    for m in mem:
        cols.append(_with_change(m.header, [_gib(m.get(r)) for r in rows], bi, "min", at_least=3))
    for stage in STAGE_ORDER:
        col = _with_change(f"{STAGE_HEADERS[stage]} (ms)", [_stage_ms(r, stage) for r in rows], bi, "min")
        if stage == "step":  # the other stages' intervals are in the CSV
            col.change_ci = step_ci = ratio_intervals(rows, stage, base)
        cols.append(col)
    cols.append(_with_change("TFLOP/s", [r.tflops_per_s for r in rows], bi, "max", at_least=3))
    cols.append(
        _with_change("MFU (%)", [r.mfu * 100 if r.mfu is not None else None for r in rows], bi, "max")
    )
    if "per row" in ctx.steps:
        cols.append(
            Column(
                "timed steps",
                [r.stages["step"].n if "step" in r.stages else None for r in rows],
                fmt="{:.0f}",
            )
        )
    cols.append(Column("notes", [labels.note(r.status, r.reason, r.message, r.flags) for r in rows]))
    cols += _csv_only(rows, base, step_ci)
    if base is not None:
        notes = [f"Ratios in brackets are value / baseline ({_name(base, None)}, {labels.loss(base.variant)})."]
    elif any(r.status == "ok" for r in rows):
        notes = ["No ratios: no row that ran here is a design's baseline or the faithful variant."]
    else:
        notes = ["No row ran, so there is no baseline to compare with."]
    notes += interval_note(cols, rows)
    if rows[0].device.type == "cpu":
        notes.append(
            "CPU figures: memory is the CPU accounting (no GPU memory on this device) and the "
            "process's peak resident set."
        )
    if "per row" in ctx.precision:
        notes.append("fp16/bf16 are autocast mixed precision with fp32 master weights.")
    return Table("efficiency", "Training-step efficiency", ctx, cols, group_slug, notes, _csv_context(rows))


def _csv_only(rows: list[EffRow], base: EffRow | None, step_ci: list[Interval | None]) -> list[Column]:
    """Spread, intervals, counts and raw identities for the CSV; the shown tables keep the seed's compact
    layout (of the intervals they show only the total step's ratio, `step_ci`, reused here rather than
    resampled again). Every stage gets the same block (median, its interval, ratio to the baseline and
    that ratio's interval), the step included."""
    bi = rows.index(base) if base is not None else None
    cols = [
        Column("variant key", [r.variant_key for r in rows], show=False),
        Column("design", [r.design for r in rows], show=False),
        Column("precision", [r.precision for r in rows], show=False, csv_header="precision (row)"),
        Column("kind", [r.kind for r in rows], show=False),
        Column("timer", [r.timer for r in rows], show=False),
    ]
    for stage in schema.ALL_STAGES:
        for stat in ("iqr", "p10", "p90"):
            cols.append(Column(f"{stage} {stat} (ms)", [_stage_ms(r, stage, stat) for r in rows], show=False))
        median = _with_change(f"{stage} median (ms)", [_stage_ms(r, stage) for r in rows], bi, None)
        median.show, median.ci = False, ms_intervals(rows, stage)
        median.change_ci = step_ci if stage == "step" else ratio_intervals(rows, stage, base)
        cols.append(median)
        cols.append(
            Column(
                f"{stage} n",
                [r.stages[stage].n if stage in r.stages else None for r in rows],
                fmt="{:.0f}",
                show=False,
            )
        )
    cols.append(Column("rounds", [n_rounds(r) for r in rows], fmt="{:.0f}", show=False))
    for bound, pick in (("min", min), ("max", max)):
        cols.append(Column(f"step median, {bound} over rounds (ms)",
                           [pick(m) * 1e3 if (m := round_medians(r, "step")) else None for r in rows], show=False))
    for key in schema.MEMORY_FIELDS:
        cols.append(
            Column(f"{key.removesuffix('_bytes')} (GiB)", [_gib(r.memory.get(key)) for r in rows], show=False)
        )
    for part, header in (("total", "total FLOPs per step (GFLOP)"),
                         ("recomputed", "checkpoint-recomputed FLOPs per step (GFLOP)")):
        cols.append(Column(header, [r.flops[part] / 1e9 if r.flops and r.flops.get(part) is not None else None
                                    for r in rows], show=False))
    # MFU counts model FLOPs (recomputation left out); HFU every executed FLOP (bench/result.py).
    cols.append(Column("HFU (%)", [r.hfu * 100 if r.hfu is not None else None for r in rows], show=False))
    cols.append(Column("source", [r.source for r in rows], show=False))
    return cols


def switch_table(rows: list[EffRow], design: str, group_slug: str) -> Table | None:
    """ofat: each switch alone from the faithful baseline; loo: the modern row with one switch reverted."""
    rows = [r for r in rows if r.design == design]
    if not rows:
        return None
    base = pick_baseline(rows, design)
    base_variant = (base or next((r for r in rows if r.baseline), rows[0])).variant
    bi = rows.index(base) if base is not None else None
    mem = memory_figures(rows[0].device.type)[0]
    title = (
        "Single-switch (one factor at a time) effects against the faithful baseline"
        if design == "ofat"
        else "Leave-one-out: the modern row with one switch reverted to CT-CLIP's choice"
    )
    names = [
        "baseline: " + labels.architecture(r.variant) + ", " + labels.loss(r.variant)
        if r is base or (base is None and r.variant == base_variant)
        else labels.changed(r.variant, base_variant)
        for r in rows
    ]
    step = _with_change("total step (ms)", [_stage_ms(r, "step") for r in rows], bi, "min")
    step.change_ci = step_ci = ratio_intervals(rows, "step", base)
    cols = [
        Column("switch" if design == "ofat" else "reverted switch", names),
        Column("status", [labels.status(r.status) for r in rows]),
        _with_change(mem.header, [_gib(mem.get(r)) for r in rows], bi, "min", at_least=3),
        step,
        Column("notes", [labels.note(r.status, r.reason, r.message, r.flags) for r in rows]),
    ]
    cols += _csv_only(rows, base, step_ci)
    notes = ["Ratios in brackets are value / baseline; cells that did not run show their status and why."]
    notes += interval_note(cols, rows)
    if rows[0].device.type == "cpu":
        notes.append("CPU figures: memory is the CPU accounting, not GPU memory.")
    return Table(design, title, context(rows), cols, group_slug, notes, _csv_context(rows))


def _measured_peak(row: EffRow) -> tuple[float | None, str]:
    if row.device.type == "cuda":
        return row.memory.get(schema.GPU_PEAK), "GPU peak allocated"
    peak, base = row.memory.get(schema.CPU_RSS_PEAK), row.memory.get(schema.CPU_RSS_BASELINE)
    return (peak - base if peak is not None and base is not None else None), "CPU peak RSS − baseline RSS"


def estimate_table(estimates: list[EffRow], measured: list[EffRow], group_slug: str) -> Table:
    """Each estimate (FakeTensorMode) beside the measurement of the same variant, size and batch."""
    by_cell: dict[tuple, list[EffRow]] = {}
    for m in merge_rounds(measured):
        by_cell.setdefault((m.variant_key, m.size, m.batch), []).append(m)
    pairs = []
    for e in latest(estimates, key=lambda r: r.cell_key):
        for m in by_cell.get((e.variant_key, e.size, e.batch), [None]):
            pairs.append((e, m))
    devices = [m.device.label for _, m in pairs if m is not None]
    kinds = uniform([_measured_peak(m)[1] for _, m in pairs if m is not None])

    def ratio(a: float | None, b: float | None) -> float | None:
        return _ratio(a, b)

    pred = [_gib(e.memory.get(schema.PREDICTED_PEAK)) for e, _ in pairs]
    meas = [_gib(_measured_peak(m)[0]) if m and m.status == "ok" else None for _, m in pairs]
    saved_p = [_gib(e.memory.get(schema.SAVED)) for e, _ in pairs]
    saved_m = [_gib(m.memory.get(schema.SAVED)) if m and m.status == "ok" else None for _, m in pairs]
    flops_p = [e.flops["total"] / 1e9 if e.flops and e.flops.get("total") else None for e, _ in pairs]
    flops_m = [m.flops["total"] / 1e9 if m and m.flops and m.flops.get("total") else None for _, m in pairs]
    roof_ms = [e.roofline["step_s"] * 1e3 if e.roofline else None for e, _ in pairs]
    step_ms = [m.stages["step"].median * 1e3 if m and m.status == "ok" and "step" in m.stages
               and m.device.type == "cuda" else None for _, m in pairs]
    roof_gpus = uniform([e.roofline["gpu"] for e, _ in pairs if e.roofline], "per row")
    cols = [
        Column("architecture", [labels.architecture(e.variant) for e, _ in pairs]),
        Column("loss", [labels.loss(e.variant) for e, _ in pairs]),
    ]
    if len(set(devices)) > 1:
        cols.append(Column("measured on", [m.device.label if m else "" for _, m in pairs]))
    cols += [
        Column("estimate status", [labels.status(e.status) for e, _ in pairs]),
        Column("measured status", [labels.status(m.status) if m else "not measured" for _, m in pairs]),
        Column("predicted peak (GiB)", pred, fmt=decimals(pred + meas, 3)),
        Column("measured peak (GiB)", meas, fmt=decimals(pred + meas, 3)),
        Column("measured / predicted peak (×)", [ratio(a, b) for a, b in zip(meas, pred)]),
        Column("saved act. predicted (GiB)", saved_p, fmt=decimals(saved_p + saved_m, 3)),
        Column("saved act. measured (GiB)", saved_m, fmt=decimals(saved_p + saved_m, 3)),
        Column("saved act. measured / predicted (×)", [ratio(a, b) for a, b in zip(saved_m, saved_p)]),
        Column("FLOPs predicted (GFLOP/step)", flops_p, fmt=decimals(flops_p + flops_m)),
        Column("FLOPs measured (GFLOP/step)", flops_m, fmt=decimals(flops_p + flops_m)),
        Column("FLOPs measured / predicted (×)", [ratio(a, b) for a, b in zip(flops_m, flops_p)]),
        Column(f"roofline step on {roof_gpus} (ms)", roof_ms, fmt=decimals(roof_ms + step_ms, 2)),
        Column("MFU bound (%)", [e.roofline["mfu_bound"] * 100 if e.roofline and e.roofline.get("mfu_bound")
                                 else None for e, _ in pairs], fmt="{:.1f}"),
        Column("memory-bound (% of roofline)", [100 * e.roofline["memory_bound_s"] / e.roofline["step_s"]
                                                if e.roofline and e.roofline["step_s"] else None
                                                for e, _ in pairs], fmt="{:.0f}"),
        Column("GPU step measured / roofline (×)", [ratio(a, b) for a, b in zip(step_ms, roof_ms)]),
        Column(
            "notes",
            [
                labels.note(e.status, e.reason, e.message if e.status != "ok" else None)
                or (labels.note(m.status, m.reason, m.message) if m else "")
                for e, m in pairs
            ],
        ),
        Column("variant key", [e.variant_key for e, _ in pairs], show=False),
        Column("estimate source", [e.source for e, _ in pairs], show=False),
        Column("measured source", [m.source if m else None for _, m in pairs], show=False),
    ]
    measured_rows = [m for _, m in pairs if m is not None]
    e0 = estimates[0]
    ctx = Context(
        device=(uniform(devices, "per row") if devices else "not measured")
        + f"; estimates on {uniform([e.device.label for e in estimates])}",
        size=e0.size,
        batch=str(e0.batch),
        precision=uniform([e.precision for e in estimates]),
        steps=context(measured_rows).steps if measured_rows else "estimates time nothing",
    )
    measured_what = f"Measured peak is the {kinds}" if measured_rows else "No cell here was measured"
    notes = [
        (
            f"{measured_what}; predicted peak = the most bytes live at once during one "
            "step on fake tensors (bench.allocations), weights, optimizer state and batch included."
        ),
        (
            "Roofline step = every op of one eager step at max(FLOPs / datasheet peak, bytes / datasheet "
            "DRAM bandwidth), summed (bench.roofline): a lower bound for eager kernels, which fusion "
            "(torch.compile) can beat; the ops are the CPU build's, cast by CUDA's autocast policy, with "
            "BERT's dropout attention and rms_norm as the CUDA build's fused kernels unless estimated with "
            "--dispatch cpu. MFU bound = the step's model FLOPs (less what checkpointing recomputes) "
            "over that time, against the peak MFU uses."
        ),
    ]
    return Table(
        "estimate",
        "Estimated against measured memory and FLOPs",
        ctx,
        cols,
        group_slug,
        notes,
        {"size": e0.size, "batch": e0.batch},
    )
