"""The summary bench.gpu_check prints and writes (summary.md, summary.json), from the files it wrote.

Every ratio is value / baseline measured in the same run on the same device. Memory is the CUDA
allocator peak (`gpu_allocated_peak_bytes`); in a CPU dry run, where there is none, it is the
accounted bytes (parameters + gradients + optimizer state + saved activations) and says so.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import store
from bench.environment import describe_probe
from bench.gpu_figures import (bare_ratio_line, error, gib, memory_of, ms, notes_of, pct, ratio, step_of,
                                step_samples, verdict_flags, x, x_ci)
from bench.gpu_plan import Plan
from bench.gpu_specs import find_gpu
from bench.result import Result
from models import Variant
from reports import labels
from reports.stats import median_ratio_ci

# The seed's README (batch 16, fp16 AMP, device-wide memory): FA+SwiGLU+RMSNorm+SigLIP against
# SA+GEGLU+LN+SigLIP: 90.95 / 118.98 GB memory, 1234.89 / 1311.98 ms per step (it claims 1.06x faster).
SEED_MEMORY_RATIO = 0.764
SEED_TIME_RATIO = 0.94
TARGET_FAST_TIME, TARGET_FAST_MFU = 0.5, 0.40
TARGET_LEAN_MEMORY, TARGET_LEAN_TIME = 0.3, 1.0
VERDICT = {True: "reached", False: "not reached", None: "undetermined (no FLOP count, so no MFU)"}
TARGET_GPU = "H100 SXM"  # the GPU the fastest candidate's targets are stated for (a bench.gpu_specs entry)
# The probe's kernel benchmark tables (under probe/kernels/), each under its heading in the summary.
KERNEL_TABLES = (
    ("table.md", "## Triton kernels (kernels.bench; median ms and % of the measured copy bandwidth)"),
    ("vq_search.md", "## VQ nearest-code search (kernels.bench_vq; random unit tokens and codes, agreement with "
                     "the fp64 argmax)"),
    ("gated_mlp.md", "## Gated feed-forward (kernels.bench_mlp; bf16 autocast, errors relative to fp32)"),
)


def fast_target_reached(time_ratio: float, mfu: float | None) -> bool | None:
    """Step time <= TARGET_FAST_TIME x with MFU >= TARGET_FAST_MFU; None: the time is, MFU unknown."""
    if time_ratio > TARGET_FAST_TIME or (mfu is not None and mfu < TARGET_FAST_MFU):
        return False
    return None if mfu is None else True


def _read(path: Path) -> list[Result]:
    """The file's latest row of each cell."""
    return list({r.cell_key: r for r in store.read(path).results}.values()) if path.exists() else []


def row(r: Result, base: Result | None) -> dict[str, Any]:
    mem, mem_kind = memory_of(r)
    base_mem = memory_of(base)[0] if base else None
    samples, base_samples, notes = step_samples(r), step_samples(base), notes_of(r)
    ci = None if r is base else median_ratio_ci(samples, base_samples)
    return {"variant": r.variant_key, "status": r.status, "reason": notes if r.status != "ok" else "",
            "notes": notes, "flags": list(r.flags), "step_s": step_of(r), "memory_bytes": mem,
            "memory_kind": mem_kind, "time_ratio": ratio(step_of(r), step_of(base) if base else None),
            "time_ratio_ci": ci,
            # A ratio too few timed steps gave no interval: the fewer of the two cells' counts, to print.
            "no_interval_samples": (min(len(samples), len(base_samples)) if samples and base_samples
                                    and r is not base and ci is None else None),
            "memory_ratio": ratio(mem, base_mem), "tflops_per_s": r.tflops_per_s, "mfu": r.mfu,
            "hfu": r.hfu, "position": r.variant.get("position")}


def _caveats(d: dict[str, Any]) -> str:
    """What qualifies a candidate's verdict: a step ratio without an interval, the row's flags."""
    n, flagged = d["no_interval_samples"], verdict_flags(d["flags"])
    return (f" Step ratio: {n} samples, no interval." if n else "") + (f" Flagged: {flagged}." if flagged else "")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    # MFU counts the model's FLOPs; HFU also what checkpointing recomputes (the two differ only there).
    lines = ["| variant | status | step ms | memory GiB | time x | memory x | TFLOP/s | MFU | HFU | notes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for d in rows:
        if d["status"] != "ok":
            lines.append(f"| {d['variant']} | {d['status']} | | | | | | | | {d['notes']} |")
            continue
        tf = "n/a" if d["tflops_per_s"] is None else f"{d['tflops_per_s']:.3g}"
        time_x = x_ci(d["time_ratio"], d["time_ratio_ci"])
        lines.append(f"| {d['variant']} | ok | {d['step_s'] * 1e3:.1f} | {gib(d['memory_bytes'])} | {time_x} | "
                     f"{x(d['memory_ratio'])} | {tf} | {pct(d['mfu'])} | {pct(d['hfu'])} | {d['notes']} |")
    # Each cell's count is too long for the table: one line under it, for the ratios left bare.
    lines += bare_ratio_line([d["no_interval_samples"] for d in rows if d["no_interval_samples"]])
    return lines


def _baseline(results: list[Result]) -> Result | None:
    return next((r for r in results if r.baseline and r.status == "ok"), None)


def paper_section(results: list[Result], precision: str, size: str) -> tuple[list[str], dict[str, Any]]:
    base = _baseline(results)
    rows = [row(r, base) for r in results]
    by_key = {d["variant"]: d for d in rows}
    by_result = {r.variant_key: r for r in results}
    modern = by_key.get(Variant.modern().replace(precision=precision).key)
    faithful = by_key.get(Variant.faithful().replace(precision=precision).key)
    lines = [f"## Paper design, {size} size, {precision}", ""] + _table(rows) + [""]
    head: dict[str, Any] = {"precision": precision, "rows": rows}
    if modern and faithful and modern["status"] == faithful["status"] == "ok":
        head.update(memory_ratio=ratio(modern["memory_bytes"], faithful["memory_bytes"]),
                    time_ratio=ratio(modern["step_s"], faithful["step_s"]),
                    time_ratio_ci=median_ratio_ci(*(step_samples(by_result[d["variant"]]) for d in (modern, faithful))),
                    mfu_faithful=faithful["mfu"], mfu_modern=modern["mfu"])
        samples = min(len(step_samples(by_result[d["variant"]])) for d in (modern, faithful))
        # A flag (fp16_overflow: skipped steps did less work; accounting_failed: no MFU) qualifies the headline.
        flagged = {name: text for name, d in (("modern", modern), ("faithful", faithful))
                   if (text := verdict_flags(d["flags"]))}
        head["flagged"] = flagged
        if flagged:
            lines += ["**Warning: flagged " + "; ".join(f"{name} row: {text}" for name, text in flagged.items())
                      + ". The comparison below may be biased or incomplete.**", ""]
        lines += [f"**Modern (FA + SwiGLU + RMSNorm + SigLIP) against faithful (SA + GEGLU + LN + softmax), "
                  f"measured in this run:** memory {x(head['memory_ratio'])} ({modern['memory_kind']}), "
                  f"step time {x_ci(head['time_ratio'], head['time_ratio_ci'], samples)}. "
                  f"The seed published {SEED_MEMORY_RATIO}x memory and "
                  f"{SEED_TIME_RATIO}x step time (\"1.06x faster\"; batch 16, fp16 AMP, device-wide memory).",
                  f"MFU: faithful {pct(faithful['mfu'])}, modern {pct(modern['mfu'])}.", ""]
    else:
        lines += ["Modern against faithful: not both measured in this run.", ""]
    return lines, head


def _estimates(out: Path) -> dict[tuple, Result]:
    """The run's estimates by (size, batch, variant key)."""
    return {(r.size, r.batch, r.variant_key): r for path in sorted((out / "results").glob("estimate-*.jsonl"))
            for r in _read(path) if r.status == "ok"}


def on_target_gpu(r: Result, base: Result, estimates: dict[tuple, Result]) -> dict[str, Any] | None:
    """`r` carried over to TARGET_GPU when it was measured on another GPU: each cell's measured step times
    its roofline bound there over its bound here (the same fraction of the ceilings), MFU against that
    GPU's peak. An estimate from this run, not a measurement; None on TARGET_GPU itself or without
    both cells' bounds (bench.roofline's `step_s_on`)."""
    here, target = find_gpu(r.device.get("name") or ""), find_gpu(TARGET_GPU)
    if r.device.get("type") != "cuda" or here is None or here.entry == target.entry or not r.peak:
        return None
    steps = []
    for cell in (r, base):
        roofline = getattr(estimates.get((cell.size, cell.batch, cell.variant_key)), "roofline", None) or {}
        bound_there = roofline.get("step_s_on", {}).get(target.entry)
        if not (bound_there and roofline.get("step_s") and step_of(cell)):
            return None
        steps.append(step_of(cell) * bound_there / roofline["step_s"])
    peak_there = target.tflops.get(r.peak["precision"])
    mfu = r.mfu * step_of(r) / steps[0] * r.peak["tflops"] / peak_there if r.mfu and peak_there else None
    return {"gpu": target.entry, "measured_on": here.entry, "step_s": steps[0], "time_ratio": steps[0] / steps[1],
            "mfu": mfu}


def targets_section(targets: list[Result], paper: list[Result], estimates: "dict[tuple, Result] | None" = None
                    ) -> tuple[list[str], dict[str, Any]]:
    base = _baseline(paper)
    rows = [row(r, base) for r in targets]
    lines = ["## Target candidates (keep a position signal), against the paper-size bf16 faithful baseline", ""]
    lines += _table(rows) + [""]
    ok = [d for d in rows + [row(r, base) for r in paper]
          if d["status"] == "ok" and d["position"] in ("cpb_table", "rope") and d["time_ratio"] is not None]
    out: dict[str, Any] = {"rows": rows}
    if not ok:
        return lines + ["No candidate with a position signal was measured against the baseline.", ""], out
    fast = min(ok, key=lambda d: d["time_ratio"])
    lean_pool = [d for d in ok if d["memory_ratio"] is not None and d["time_ratio"] <= TARGET_LEAN_TIME]
    fast_ok = fast_target_reached(fast["time_ratio"], fast["mfu"])
    out["fastest"] = dict(fast, reached=fast_ok)
    fast_x = x_ci(fast["time_ratio"], fast["time_ratio_ci"])
    lines.append(f"- Fastest: {fast['variant']}: {fast_x} step time, MFU {pct(fast['mfu'])} "
                 f"(target <= {TARGET_FAST_TIME}x with MFU >= {TARGET_FAST_MFU:.0%} on an {TARGET_GPU}): "
                 f"{VERDICT[fast_ok]}.{_caveats(fast)}")
    by_key = {r.variant_key: r for r in targets + paper}
    carried = on_target_gpu(by_key[fast["variant"]], base, estimates or {}) if base else None
    if carried:
        carried_ok = fast_target_reached(carried["time_ratio"], carried["mfu"])
        out["fastest_on_target_gpu"] = dict(carried, reached=carried_ok)
        lines.append(f"  Measured on an {carried['measured_on']}, not the {carried['gpu']} the target names. At each "
                     f"cell's measured / roofline ratio here, bench.roofline's {carried['gpu']} bounds put it at "
                     f"{ms(carried['step_s'])} ms, {x(carried['time_ratio'])} the faithful step, MFU "
                     f"{pct(carried['mfu'])}: {VERDICT[carried_ok]} there (an estimate "
                     f"from this run, not a measurement).")
    if lean_pool:
        lean = min(lean_pool, key=lambda d: d["memory_ratio"])
        lean_ok = lean["memory_ratio"] <= TARGET_LEAN_MEMORY
        out["leanest"] = dict(lean, reached=lean_ok)
        lines.append(f"- Leanest with step time <= {TARGET_LEAN_TIME}x: {lean['variant']}: "
                     f"{x(lean['memory_ratio'])} memory, {x_ci(lean['time_ratio'], lean['time_ratio_ci'])} time "
                     f"(target <= {TARGET_LEAN_MEMORY}x): {'reached' if lean_ok else 'not reached'}.{_caveats(lean)}")
    else:
        lines.append(f"- Leanest: no candidate kept its step time within {TARGET_LEAN_TIME}x.")
    return lines + [""], out


def ofat_section(results: list[Result], size: str) -> tuple[list[str], list[dict[str, Any]]]:
    base = _baseline(results)
    rows = [row(r, base) for r in results]
    lines = [f"## Single switches (ofat), {size} size, against the faithful baseline", ""] + _table(rows) + [""]
    return lines, rows


def estimate_section(estimates: dict[tuple, Result], measured: list[Result]) -> tuple[list[str], list[dict[str, Any]]]:
    rows = []
    for r in measured:
        e = estimates.get((r.size, r.batch, r.variant_key))
        if r.status != "ok" or e is None:
            continue
        predicted, peak = e.memory.predicted_peak_bytes, r.memory.gpu_allocated_peak_bytes
        requested = r.memory.gpu_requested_peak_bytes
        saved_pred, saved_meas = e.memory.saved_activations_bytes, r.memory.saved_activations_bytes
        roofline_s = e.roofline["step_s"] if e.roofline else None
        step = step_of(r) if r.device.get("type") == "cuda" else None  # a CPU step has no H100 roofline
        rows.append({"variant": r.variant_key, "size": r.size, "batch": r.batch, "predicted_peak_bytes": predicted,
                     "measured_peak_bytes": peak, "peak_error": error(predicted, peak),
                     "requested_peak_bytes": requested, "requested_error": error(predicted, requested),
                     "saved_error": error(saved_pred, saved_meas), "roofline_step_s": roofline_s,
                     "measured_step_s": step,
                     "step_over_roofline": step / roofline_s if step and roofline_s else None})
    lines = ["## Estimator (bench.estimate, FakeTensorMode) against measurement", "",
             "| variant | size | predicted peak GiB | measured peak GiB | peak error | error vs requested "
             "| saved-activations error | roofline step ms | measured step ms | measured / roofline |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for d in rows:
        roof, step, over = d["roofline_step_s"], d["measured_step_s"], d["step_over_roofline"]
        lines.append(f"| {d['variant']} | {d['size']} b{d['batch']} | {gib(d['predicted_peak_bytes'])} | "
                     f"{gib(d['measured_peak_bytes'])} | {pct(d['peak_error'])} | {pct(d['requested_error'])} | "
                     f"{pct(d['saved_error'])} | {ms(roof)} | {ms(step)} | {f'{over:.2f}×' if over else 'n/a'} |")
    if not rows:
        lines.append("| (no cell has both an estimate and a measurement) | | | | | | | | | |")
    errors = [abs(d["peak_error"]) for d in rows if d["peak_error"] is not None]
    if errors:
        lines += ["", f"Peak error: median {sorted(errors)[len(errors) // 2] * 100:.1f} %, "
                      f"worst {max(errors) * 100:.1f} % over {len(errors)} cells (predicted / measured - 1). "
                      "The allocator's peak counts whole blocks (a large one keeps a tail of up to 1 MiB it does "
                      "not split off); the requested peak counts the bytes the ops asked for, which is what the "
                      "estimator models (torch's memory_stats requested_bytes)."]
    else:
        lines += ["", "No GPU peak measured here, so the estimator's peak error is not known from this run; "
                      "the saved-activations column compares it with the cells' own accounting."]
    lines += ["", "Roofline step: every op of the eager step at its datasheet ceiling (bench.roofline), a lower "
                  "bound for eager kernels; measured / roofline is how far the real kernels are from it."]
    return lines + [""] + _roofline_ops(estimates.values()), rows


def _roofline_ops(estimates: Any, shown: int = 4) -> list[str]:
    """Each paper-size estimate's costliest ops at the ceilings: what a faster variant must remove."""
    lines = []
    for e in estimates:
        if e.size != "paper" or not e.roofline or not e.roofline.get("top_ops"):
            continue
        ops = ", ".join(f"`{op['name']}` {op['seconds'] * 1e3:.1f} ms" for op in e.roofline["top_ops"][:shown])
        peak = f"; predicted peak at `{e.memory.predicted_peak_at}`" if e.memory.predicted_peak_at else ""
        lines.append(f"- {e.variant_key}: {e.roofline['step_s'] * 1e3:.1f} ms at the ceilings; {ops}{peak}")
    if not lines:
        return []
    return ["Costliest ops of each paper-size step at the ceilings (bench.roofline):", "", *lines, ""]


def _busy(r: Result) -> list[str]:
    """How much of the timed step the profiled step's kernels fill: under 1, the GPU waits on the host."""
    totals, step = r.profile_totals, step_of(r)
    if not totals or not step or r.device.get("type") != "cuda":
        return []
    return [f"Kernels {totals['self_s'] * 1e3:.1f} ms over {totals['calls']} launches, "
            f"{totals['self_s'] / step:.0%} of the timed step (the rest: the GPU idle between kernels, waiting "
            f"on Python, dispatch and launches).", ""]


def profile_section(results: list[Result], shown: int = 8) -> tuple[list[str], dict[str, Any]]:
    """The costliest operators of one profiled step per variant: what limits each."""
    lines = ["## Where one step's time goes (torch.profiler, one step after timing)", "",
             "Self time of the costliest operators: kernels on a GPU, host operators on a CPU; share is of "
             "the step's total self time.", ""]
    data: dict[str, Any] = {}
    for r in results:
        failed = [f for f in r.flags if f.startswith("profile_failed")]
        if r.status == "ok" and not r.profile and failed and r.variant_key not in data:
            data[r.variant_key] = None  # asked for and failed: said here, not left out
            lines += [f"**{r.variant_key}** ({r.size}, batch {r.batch}): no profile: "
                      f"{labels.first_line(failed[0], 200)}", ""]
        if r.status != "ok" or not r.profile or r.variant_key in data:
            continue
        data[r.variant_key] = r.profile
        lines += [f"**{r.variant_key}** ({r.size}, batch {r.batch}, step {(step_of(r) or 0) * 1e3:.1f} ms)", ""]
        lines += _busy(r)
        lines += ["| operator | self ms | calls | share |", "|---|---|---|---|"]
        for op in r.profile[:shown]:
            name = op["name"].replace("|", "/")
            lines.append(f"| `{name}` | {op['self_s'] * 1e3:.2f} | {op['calls']} | {pct(op['share'])} |")
        lines.append("")
    if not data:
        lines.append("(no profiled cell)")
    return lines + [""], data


def environment_section(out: Path, plan: Plan) -> tuple[list[str], dict[str, Any]]:
    env, micro = ((json.loads(p.read_text()) if p.exists() else {}) for p in (out / "probe" / "env.json",
                                                                                out / "probe" / "micro.json"))
    data = {"device": env.get("device", {}), "env": env.get("env", {}), "git": env.get("git", {}), "micro": micro}
    return ["## Environment", "", *describe_probe(env, micro), ""], data


def summarize(out: Path, plan: Plan, parts: list, total_s: float, unfinished: str | None = None
              ) -> tuple[str, dict[str, Any]]:
    """summary.md's text and summary.json's data from the files under `out`; `unfinished` says why the run
    has not finished (still running, stopped by a signal), for a summary written part way."""
    title = "CPU dry run (tiny size; not GPU figures)" if plan.dry_run else "GPU check"
    env_lines, env = environment_section(out, plan)
    budget_s = sum(p.budget_s for p in parts)  # as scaled by --budget
    done = f"Not finished ({unfinished}) at {total_s:.0f} s" if unfinished else f"Finished in {total_s:.0f} s"
    lines = [f"# bench.gpu_check: {title}", "", f"{done} of a {budget_s:.0f} s budget.",
             "Step-time ratios are value / baseline from the same run; the brackets after one are its 95 % "
             "bootstrap interval over the two cells' timed steps (reports/stats.py: noise within each process, "
             "not run-to-run variation).", ""] + env_lines
    data: dict[str, Any] = {"dry_run": plan.dry_run, "elapsed_s": total_s, "unfinished": unfinished,
                            "environment": env}
    measured: list[Result] = []
    by_name = {p.name: _read(out / "results" / f"{p.name}.jsonl") for p in plan.cell_parts}
    estimates = _estimates(out)
    for part in plan.cell_parts:
        results = by_name[part.name]
        measured += results
        if part.name.startswith("paper"):
            section, data[part.name] = paper_section(results, part.precision, part.size)
        elif part.name == "targets":
            # The compiled candidate runs last, on leftover time, but competes in the same section.
            results = results + by_name.get("targets-compiled", [])
            section, data["targets"] = targets_section(results, by_name.get("paper-bf16", []), estimates)
        elif part.name == "targets-compiled":
            continue
        else:
            section, data[part.name] = ofat_section(results, part.size)
        lines += section
    section, data["estimate"] = estimate_section(estimates, measured)
    lines += section
    section, data["profiles"] = profile_section(measured)
    lines += section
    for table_md, heading in KERNEL_TABLES:
        path = out / "probe" / "kernels" / table_md
        lines += [heading, "", path.read_text().strip() if path.exists() else "(not run)", ""]
    lines += ["## Parts", "", "| part | budget s | elapsed s | status | notes |", "|---|---|---|---|---|"]
    for p in parts:
        lines.append(f"| {p.name} | {p.budget_s:.0f} | {p.elapsed_s:.0f} | {p.status} | {'; '.join(p.notes)} |")
    data["parts"] = [asdict(p) for p in parts]
    return "\n".join(lines) + "\n", data
