"""kernels.bench_vq: the pipeline (four providers, agreement with the fp64 argmax, files) runs end to end
with a stand-in timer, since do_bench itself needs a GPU (the CPU exit: tests/kernels/test_bench_cli.py)."""

from __future__ import annotations

import json

import pytest
import torch

from bench.gpu_probe import perf_counter_timer
from kernels import bench_vq, supports

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))
def test_pipeline_with_a_stand_in_timer(tmp_path):
    # 70 tokens in slices of 32 (the torch providers' slicing), 90 codes, an odd feature width.
    bench_vq.SLICE_TOKENS, saved = 32, bench_vq.SLICE_TOKENS
    try:
        rows = bench_vq.run(70, 90, 24, bench_vq.PROVIDERS, perf_counter_timer(2), DEVICE,
                            log=lambda line: None)
    finally:
        bench_vq.SLICE_TOKENS = saved
    assert [r["provider"] for r in rows] == list(bench_vq.PROVIDERS)
    x, codes = bench_vq.inputs(70, 90, 24, DEVICE)
    expected = (x.double() @ codes.double().t()).argmax(dim=1)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["tflops"] == pytest.approx(2 * 70 * 90 * 24 / (row["ms_p50"] * 1e-3) / 1e12)
        assert row["ms_p20"] <= row["ms_p50"] <= row["ms_p80"]
        # fp32 everywhere on a CPU (the interpreter ignores tf32): every token gets the fp64-best code.
        assert row["same_as_fp64"] == 1.0 and row["max_shortfall"] == 0.0
    assert torch.equal(bench_vq.torch_nearest(x, codes), expected)

    path = bench_vq.write(rows, {"gpu_name": None}, tmp_path)
    assert len(json.loads(path.read_text())["rows"]) == 4
    table = (tmp_path / "vq_search.md").read_text()
    assert table.count("| triton_") == 2 and table.count("| torch_") == 2 and "100.00%" in table


def test_agreement_counts_picks_that_are_not_the_best_code():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.75]])  # exact in binary: exact fp64 scores
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    best, picked = bench_vq.fp64_scores_of(x, codes, torch.tensor([0, 0, 1]))
    assert best.tolist() == [1.0, 1.0, 0.75] and picked.tolist() == [1.0, 0.0, 0.75]


def test_a_failing_provider_is_recorded_not_raised():
    x, codes = bench_vq.inputs(8, 4, 16, torch.device("cpu"))
    row = bench_vq.measure("cublas_fp8", x, codes, perf_counter_timer(1))
    assert row["status"] == "error" and "unknown provider" in row["note"]
    assert "error" in bench_vq.table([row])
