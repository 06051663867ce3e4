"""The terminal table printed at the end of a sweep: the seed's columns plus deltas against the baseline.

The seed reported arch, loss, GPU memory, visual-encoder forward, backward and total step; this adds the
other stages, FLOPs, TFLOP/s, MFU, and Δ% of step time and memory against the design's baseline row.
Memory is the GPU allocator peak on a GPU; on a CPU it is the device-independent working set
(parameters + gradients + optimizer state + saved activations), labelled so, never a GPU figure.
"""

from __future__ import annotations

from tabulate import tabulate

from bench.result import STAGES, Result

GIB = 2**30
_STAGE_HEADERS = {"text_forward": "text fwd", "vision_forward": "vision fwd", "loss": "loss",
                  "backward": "bwd", "optimizer": "opt"}


def memory_figure(result: Result) -> tuple[float | None, str]:
    """(bytes, label) of the row's headline memory figure."""
    m = result.memory
    if m.gpu_allocated_peak_bytes is not None:
        return m.gpu_allocated_peak_bytes, "GPU peak alloc"
    if m.predicted_peak_bytes is not None:
        return m.predicted_peak_bytes, "predicted peak"
    parts = [m.param_bytes, m.grad_bytes, m.optimizer_state_bytes, m.saved_activations_bytes]
    if all(p is not None for p in parts):
        return float(sum(parts)), "CPU: params+grads+opt+saved"
    return None, ""


def _baseline(results: list[Result]) -> Result | None:
    ok = [r for r in results if r.status == "ok"]
    return next((r for r in ok if r.baseline), ok[0] if ok else None)


def _ms(result: Result, stage: str) -> str:
    stats = result.stages.get(stage)
    return f"{stats.median * 1e3:.2f}" if stats else ""


def _delta(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return ""
    return f"{(value / base - 1) * 100:+.1f}"


def render(results: list[Result]) -> str:
    base = _baseline(results)
    base_step = base.stages["step"].median if base and "step" in base.stages else None
    base_mem = memory_figure(base)[0] if base else None
    label = next((memory_figure(r)[1] for r in results if memory_figure(r)[0] is not None), "memory")
    show_rss = any(r.memory.cpu_peak_rss_bytes for r in results)
    headers = (["variant", "status", f"mem GiB ({label})"] + (["peak RSS GiB (process)"] if show_rss else [])
               + [f"{_STAGE_HEADERS[s]} ms" for s in STAGES]
               + ["step ms", "Δstep %", "Δmem %", "GFLOP/step", "TFLOP/s", "MFU", "notes"])
    rows = []
    for r in results:
        mem = memory_figure(r)[0]
        step = r.stages["step"].median if "step" in r.stages else None
        gflop = r.flops["total"] / 1e9 if r.flops else None
        notes = r.reason or (r.message or "").split("\n")[0] or ",".join(r.flags)
        rows.append([
            r.variant_key + (" (baseline)" if r is base else ""), r.status,
            f"{mem / GIB:.3f}" if mem is not None else "",
            *([f"{r.memory.cpu_peak_rss_bytes / GIB:.2f}" if r.memory.cpu_peak_rss_bytes else ""] if show_rss else []),
            *[_ms(r, s) for s in STAGES], _ms(r, "step"),
            _delta(step, base_step) if r is not base else "", _delta(mem, base_mem) if r is not base else "",
            f"{gflop:.2f}" if gflop is not None else "",
            f"{r.tflops_per_s:.3f}" if r.tflops_per_s is not None else "",
            f"{r.mfu * 100:.1f}%" if r.mfu is not None else "",
            notes[:90],
        ])
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
