"""Numbers in the tables against the input rows: GiB = bytes / 2^30, ms = s * 1e3, ratio = value / baseline."""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
import pytest

from reports.build import build_reports
from tests.reports import factory as f
from tests.reports.mdparse import sections

GIB = 2**30
SIGLIP = dict(f.FAITHFUL, loss="siglip")


def _section(built, name: str, device: str):
    found = [s for s in sections(built.out / f"{name}.md") if device in s.title]
    assert len(found) == 1, [s.title for s in sections(built.out / f"{name}.md")]
    return found[0]


def test_every_table_file_is_written(built) -> None:
    names = {p.name for p in built.files}
    for stem in (
        "efficiency",
        "ofat",
        "loo",
        "estimate",
        "accuracy-ctclip",
        "accuracy-maxf1",
        "per-abnormality-ctclip",
    ):
        assert {f"{stem}.md", f"{stem}.tex", f"{stem}.csv"} <= names, stem
    assert "report.tex" in names


def test_gpu_efficiency_figures_and_ratios(built) -> None:
    base, modern = built.row(f.FAITHFUL, f.H100), built.row(f.MODERN, f.H100)
    t = _section(built, "efficiency", "H100")
    row = t.row("architecture", "FA (SDPA) + SwiGLU + RMSNorm", status="ok")
    mem_ratio = modern["memory"]["gpu_allocated_peak_bytes"] / base["memory"]["gpu_allocated_peak_bytes"]
    step_ratio = modern["stages"]["step"]["median"] / base["stages"]["step"]["median"]
    gib = modern["memory"]["gpu_allocated_peak_bytes"] / GIB
    assert row["GPU mem, peak allocated (GiB)"] == f"**{gib:.3f}** ({mem_ratio:.2f}×)"
    assert row["total step (ms)"] == f"**{modern['stages']['step']['median'] * 1e3:.2f}** ({step_ratio:.2f}×)"
    fwd = modern["stages"]["vision_forward"]["median"] / base["stages"]["vision_forward"]["median"]
    assert row["visual enc fwd (ms)"].endswith(f"({fwd:.2f}×)")
    assert t.rows[0]["architecture"].endswith("(baseline)") and "(" not in t.rows[0]["total step (ms)"]
    # The cell that did not run says so, with the reason, and shows no numbers.
    oom = t.row("status", "OOM")
    assert "out of memory" in oom["notes"] and oom["total step (ms)"] == ""


def test_csv_has_units_and_exact_values(built) -> None:
    frame = pd.read_csv(built.out / "efficiency.csv")
    gpu = frame[frame["device type"] == "cuda"]
    modern = built.row(f.MODERN, f.H100)
    base = built.row(f.FAITHFUL, f.H100)
    r = gpu[gpu["variant key"] == f.key(f.MODERN)].iloc[0]
    assert r["GPU mem, peak allocated (GiB)"] == pytest.approx(
        modern["memory"]["gpu_allocated_peak_bytes"] / GIB
    )
    assert r["total step (ms)"] == pytest.approx(modern["stages"]["step"]["median"] * 1e3)
    assert r["total step (ms) / baseline (ratio)"] == pytest.approx(
        modern["stages"]["step"]["median"] / base["stages"]["step"]["median"]
    )
    assert r["step p90 (ms)"] == pytest.approx(modern["stages"]["step"]["p90"] * 1e3)
    assert r["MFU (%)"] == pytest.approx(modern["mfu"] * 100)
    assert r["HFU (%)"] == pytest.approx(modern["hfu"] * 100)
    assert r["checkpoint-recomputed FLOPs per step (GFLOP)"] == 0
    assert r["total FLOPs per step (GFLOP)"] == pytest.approx(modern["flops"]["total"] / 1e9)
    assert set(frame["device"]) == {"NVIDIA H100 80GB HBM3", "CPU, 2 cores, 1 torch thread (Test CPU 9000)"}
    assert all(
        "(" in c
        or c
        in {
            "device type",
            "device",
            "size",
            "batch",
            "architecture",
            "loss",
            "status",
            "notes",
            "variant key",
            "design",
            "kind",
            "timer",
            "source",
            "TFLOP/s",
            "precision",
            "precision (table)",
            "precision (row)",
            "rounds",
        }
        or c.endswith(" n")
        for c in frame.columns
    ), [c for c in frame.columns if "(" not in c]


def test_cpu_rows_show_cpu_accounting_never_gpu_memory(built) -> None:
    t = _section(built, "efficiency", "CPU")
    assert not any(h.startswith("GPU") for h in t.headers)
    assert "CPU figures" in t.caption
    m = built.row(f.MODERN, f.CPU, design="paper")["memory"]
    row = t.row("architecture", "FA (SDPA) + SwiGLU + RMSNorm, pos=none", loss="SigLIP")
    total = (
        m["param_bytes"] + m["grad_bytes"] + m["optimizer_state_bytes"] + m["saved_activations_bytes"]
    ) / GIB
    assert row["CPU: params+grads+opt+saved act. (GiB)"].split(" ")[0].strip("*") == f"{total:.3f}"
    assert row["CPU: peak RSS (GiB)"].split(" ")[0].strip("*") == f"{m['cpu_peak_rss_bytes'] / GIB:.3f}"


def test_devices_never_share_a_table(built) -> None:
    for name in ("efficiency", "ofat", "loo"):
        for s in sections(built.out / f"{name}.md"):
            devices = [d for d in ("CPU", "H100") if d in s.caption.split("Device: ")[1].split(";")[0]]
            assert len(devices) == 1, s.caption
    gpu = _section(built, "efficiency", "H100")
    assert len(gpu.rows) == 4 and not any(r["architecture"].startswith("xFormers") for r in gpu.rows)


def test_captions_state_device_size_batch_precision_steps(built) -> None:
    gpu = _section(built, "efficiency", "H100")
    for words in ("Device: NVIDIA H100 80GB HBM3", "size paper", "batch 16", "timed steps: 30"):
        assert words in gpu.caption
    # The OOM row is fp16: a mixed table says so and gets a precision column.
    assert "precision per row (fp32, fp16)" in gpu.caption
    assert gpu.row("status", "OOM")["precision"] == "fp16"
    assert "precision fp32;" in _section(built, "loo", "CPU").caption
    cpu = _section(built, "efficiency", "CPU")
    assert "Device: CPU, 2 cores" in cpu.caption and "batch 2" in cpu.caption
    # The ofat design changes precision in one row, so the caption must not claim a single precision.
    ofat = _section(built, "ofat", "CPU")
    assert "precision per row (fp32, bf16)" in ofat.caption


def test_single_switch_and_leave_one_out(built) -> None:
    ofat = _section(built, "ofat", "CPU")
    base = built.row(f.FAITHFUL, design="ofat")
    bf16 = built.row(dict(f.FAITHFUL, precision="bf16"), design="ofat")
    row = ofat.row("switch", "precision: fp32 → bf16")
    ratio = bf16["stages"]["step"]["median"] / base["stages"]["step"]["median"]
    assert row["total step (ms)"].endswith(f"({ratio:.2f}×)")
    assert ofat.row("switch", "attention: math → xformers")["notes"] == "xformers needs a CUDA device"
    assert ofat.rows[0]["switch"].startswith("baseline: SA + GEGLU + LN")
    loo = _section(built, "loo", "CPU")
    assert loo.row("reverted switch", "position: none → cpb")["status"] == "unsupported"
    assert "learned position bias" in loo.row("reverted switch", "position: none → cpb")["notes"]
    assert loo.rows[0]["reverted switch"].startswith("baseline: FA (SDPA) + SwiGLU + RMSNorm")


def test_estimate_against_measured(built) -> None:
    t = sections(built.out / "estimate.md")[0]
    est = built.row(f.MODERN, f.CPU, kind="estimate")
    meas = built.row(f.MODERN, f.H100)
    row = t.row("architecture", "FA (SDPA)")
    ratio = meas["memory"]["gpu_allocated_peak_bytes"] / est["memory"]["predicted_peak_bytes"]
    assert row["measured / predicted peak (×)"] == f"{ratio:.2f}"
    assert row["predicted peak (GiB)"] == f"{est['memory']['predicted_peak_bytes'] / GIB:.3f}"
    roofline_s, step_s = est["roofline"]["step_s"], meas["stages"]["step"]["median"]
    assert row["GPU step measured / roofline (×)"] == f"{step_s / roofline_s:.2f}"
    assert row["MFU bound (%)"] == "35.0" and row["memory-bound (% of roofline)"] == "25"
    assert "Roofline step" in t.caption
    assert "NVIDIA H100" in t.caption and "estimates on CPU" in t.caption
    unsupported = t.row("architecture", "FA2")
    assert unsupported["estimate status"] == "unsupported" and "needs CUDA" in unsupported["notes"]


def test_accuracy_table(built) -> None:
    t = sections(built.out / "accuracy-ctclip.md")[0]
    assert (
        "protocol: ctclip" in t.caption and "Macro average" in t.caption and "95% bootstrap CI" in t.caption
    )
    assert "batch 4" in t.caption and "training steps: 50" in t.caption and "Device: CPU" in t.caption
    one = t.row("architecture", "SA + GEGLU + LN (baseline)")
    assert one["AUROC"] == "0.604 [0.554, 0.654]"  # value and CI exactly as in the input
    assert one["seeds ok"] == "1/1"
    seeds = [0.616, 0.630, 0.611]
    many = t.row("architecture", "FA (SDPA)")
    assert many["AUROC"] == f"**{statistics.mean(seeds):.3f}** ± {statistics.stdev(seeds):.3f}"
    assert many["seeds ok"] == "3/3"
    diverged = t.row("status", "diverged")
    assert diverged["AUROC"] == "" and "NaN" in diverged["notes"]
    maxf1 = sections(built.out / "accuracy-maxf1.md")[0]
    assert "optimistic" in maxf1.caption


def test_per_abnormality_table(built) -> None:
    t = sections(built.out / "per-abnormality-ctclip.md")[0]
    assert [r["abnormality"] for r in t.rows] == f.CLASSES
    column = next(h for h in t.headers if h.startswith("FA (SDPA)"))
    # The factory gives class i the AUROC auroc + 0.01 i, per seed.
    expected = [statistics.mean(a + 0.01 * i for a in (0.616, 0.630, 0.611)) for i in range(3)]
    assert [r[column].split(" ")[0] for r in t.rows] == [f"{e:.3f}" for e in expected]
    assert [r["support"] for r in t.rows] == ["10", "11", "12"]


def test_percent_style_and_mixed_file(tmp_path) -> None:
    base = f.eff_row(device=f.H100, baseline=True, mem=10.0)
    modern = f.eff_row(f.MODERN, device=f.H100, mem=7.64)
    f.write(tmp_path / "r.jsonl", [base, modern])
    build_reports([tmp_path / "r.jsonl"], tmp_path / "out", ["md"], change="percent")
    row = sections(tmp_path / "out" / "efficiency.md")[0].rows[1]
    pct = (
        modern["memory"]["gpu_allocated_peak_bytes"] / base["memory"]["gpu_allocated_peak_bytes"] - 1
    ) * 100
    assert f"{pct:.1f}" == "-23.6"
    assert row["GPU mem, peak allocated (GiB)"].endswith("(−23.6 %)")


def test_a_rerun_cell_replaces_the_earlier_row(tmp_path) -> None:
    f.write(
        tmp_path / "r.jsonl",
        [
            f.eff_row(baseline=True, step=0.1),
            f.eff_row(f.MODERN, status="error", message="flaky"),
            f.eff_row(f.MODERN, step=0.05),
        ],
    )
    build_reports([tmp_path], tmp_path / "out", ["csv"])
    frame = pd.read_csv(tmp_path / "out" / "efficiency.csv")
    assert list(frame["status"]) == ["ok", "ok"]
    assert frame["total step (ms) / baseline (ratio)"].iloc[1] == pytest.approx(0.5)


def test_unknown_format_is_refused(tmp_path) -> None:
    f.write(tmp_path / "r.jsonl", [f.eff_row(baseline=True)])
    with pytest.raises(ValueError, match="unknown format 'pdf'"):
        build_reports([tmp_path], tmp_path / "out", ["md", "pdf"])


def test_small_figures_keep_three_significant_digits(tmp_path) -> None:
    """A tiny CPU model's memory (~0.02 GiB) must not print identically in every row."""
    rows = [f.eff_row(baseline=True, mem=0.01), f.eff_row(f.MODERN, mem=0.001)]
    f.write(tmp_path / "r.jsonl", rows)
    build_reports([tmp_path], tmp_path / "out", ["md"])
    t = sections(tmp_path / "out" / "efficiency.md")[0]
    shown = [r["CPU: params+grads+opt+saved act. (GiB)"].split(" ")[0].strip("*") for r in t.rows]
    parts = ("param_bytes", "grad_bytes", "optimizer_state_bytes", "saved_activations_bytes")
    expected = [sum(r["memory"][k] for k in parts) / GIB for r in rows]
    assert shown[0] != shown[1]
    assert [float(s) for s in shown] == pytest.approx(expected, rel=5e-3)


def test_paired_difference_column(tmp_path) -> None:
    """One seed: the paired difference with its interval; several: mean ± std of the seeds' differences."""
    siglip = dict(f.FAITHFUL, loss="siglip")

    def vs(delta: float, low: float, high: float, p: float) -> dict:
        return {"baseline_key": "faithful", "macro_auroc": {"candidate": 0.62, "baseline": 0.62 - delta,
                                                            "delta": delta, "ci_low": low, "ci_high": high,
                                                            "p_value": p}}

    rows = [f.acc_row(baseline=True, auroc=0.604),
            dict(f.acc_row(siglip, auroc=0.620), vs_baseline=vs(0.016, -0.004, 0.035, 0.12))]
    rows += [dict(f.acc_row(f.MODERN, seed=s, auroc=0.61), vs_baseline=vs(d, d - 0.01, d + 0.01, 0.01))
             for s, d in enumerate([0.01, 0.02, 0.03])]
    f.write(tmp_path / "a.jsonl", rows)
    build_reports([tmp_path], tmp_path / "out", ["md", "csv"])
    t = sections(tmp_path / "out" / "accuracy-ctclip.md")[0]
    header = "Δ macro AUROC vs baseline (paired)"
    assert t.row("architecture", "SA + GEGLU + LN (baseline)")[header] == ""
    assert t.row("architecture", "SA + GEGLU + LN", loss="SigLIP")[header] == "+0.016 [-0.004, +0.035]"
    assert t.row("architecture", "FA (SDPA)")[header] == f"+0.020 ± {statistics.stdev([0.01, 0.02, 0.03]):.3f}"
    assert "paired bootstrap interval" in t.caption
    frame = pd.read_csv(tmp_path / "out" / "accuracy-ctclip.csv")
    assert list(frame["paired p-value"].round(3).fillna(-1)) == [-1, 0.12, -1]


def test_paired_interval_over_seeds_needs_the_same_resamples(tmp_path) -> None:
    from reports.stats import seeds_mean_ci

    rng = np.random.default_rng(0)
    draws = [list(rng.normal(d, 0.01, 200)) for d in (0.01, 0.02, 0.03)]

    def row(seed: int, n_boot: int) -> dict:
        vs = {"baseline_key": "faithful", "n_eval": 100, "bootstrap": {"n": n_boot, "seed": 0, "by": "patient"},
              "macro_auroc": {"delta": float(np.mean(draws[seed])), "ci_low": None, "ci_high": None},
              "macro_auroc_draws": draws[seed]}
        return dict(f.acc_row(f.MODERN, seed=seed), vs_baseline=vs)

    header = "Δ macro AUROC vs baseline (paired)"
    f.write(tmp_path / "a.jsonl", [f.acc_row(baseline=True)] + [row(s, 200) for s in range(3)])
    build_reports([tmp_path / "a.jsonl"], tmp_path / "out", ["md"])
    lo, hi = seeds_mean_ci(draws)
    cell = sections(tmp_path / "out" / "accuracy-ctclip.md")[0].row("architecture", "FA (SDPA)")[header]
    assert cell.endswith(f"[{lo:+.3f}, {hi:+.3f}]")
    # One seed bootstrapped differently: its draws are not the others' resamples, so no interval.
    f.write(tmp_path / "b.jsonl", [f.acc_row(baseline=True), row(0, 200), row(1, 200), row(2, 100)])
    build_reports([tmp_path / "b.jsonl"], tmp_path / "out2", ["md"])
    cell = sections(tmp_path / "out2" / "accuracy-ctclip.md")[0].row("architecture", "FA (SDPA)")[header]
    assert "[" not in cell and "±" in cell
