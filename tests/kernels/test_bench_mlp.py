"""kernels.bench_mlp: the pipeline (three providers, errors against fp32, TFLOP/s, files) runs end to end
with a stand-in timer, since do_bench itself needs a GPU (the CPU exit: tests/kernels/test_bench_cli.py)."""

from __future__ import annotations

import json

import pytest
import torch

from bench.gpu_probe import perf_counter_timer
from kernels import bench_mlp, supports

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))
def test_pipeline_with_a_stand_in_timer(tmp_path):
    rows = bench_mlp.run(29, 24, 13, bench_mlp.PROVIDERS, perf_counter_timer(2), DEVICE, log=lambda line: None)
    assert [(r["provider"], r["mode"]) for r in rows] == [(p, m) for p in bench_mlp.PROVIDERS for m in bench_mlp.MODES]
    by_provider = {}
    for row in rows:
        assert row["status"] == "ok", row
        matmuls = 2 * 29 * 24 * 3 * 13 * (3 if row["mode"] == "full" else 1)
        assert row["tflops"] == pytest.approx(matmuls / (row["ms_p50"] * 1e-3) / 1e12)
        # bf16 autocast against fp32: rounding-sized, not zero.
        assert 0 < row["out_rel_err"] < 2e-2 and 0 < row["dx_rel_err"] < 2e-2
        by_provider[row["provider"]] = row
    # The fused layer rounds exactly where the separate gate kernel's layer does.
    for key in ("out_rel_err", "dx_rel_err"):
        assert by_provider["gemm"][key] == pytest.approx(by_provider["separate"][key], rel=0.05)

    path = bench_mlp.write(rows, {"gpu_name": None}, tmp_path)
    assert len(json.loads(path.read_text())["rows"]) == 6
    table = (tmp_path / "gated_mlp.md").read_text()
    assert "| gemm | full | 29 x 24, 13 |" in table and table.count("| eager |") == 2


def test_a_failing_provider_is_recorded_for_both_passes():
    t = bench_mlp.inputs(8, 16, 5, torch.device("cpu"))
    rows = bench_mlp.measure("cutlass", t, perf_counter_timer(1), bench_mlp.fp32_reference(t))
    assert [(r["mode"], r["status"]) for r in rows] == [("fwd", "error"), ("full", "error")]
    assert "unknown provider" in rows[0]["note"] and "error" in bench_mlp.table(rows)
