"""kernels.bench: the CPU path times nothing, and the measuring pipeline (providers, modes, bytes,
files) runs end to end with a stand-in timer, since do_bench itself needs a GPU."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import bench, supports

ROOT = Path(__file__).resolve().parents[2]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_run_times_nothing_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "kernels.bench", "--out", str(tmp_path / "out")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "cannot be timed" in done.stdout and "nothing was timed" in done.stdout
    assert not (tmp_path / "out").exists()


def test_help_lists_the_flags():
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--help"])
    assert exit_info.value.code == 0


def test_default_cases_are_the_model_shapes():
    cases = bench.cases_for(bench.parse_args([]))
    shapes = {(c.kernel, c.dtype, c.input_shape) for c in cases}
    assert shapes == {(k, d, (4 * 13824, 512 if k == "rmsnorm" else 2730))
                      for k in ("rmsnorm", "swiglu", "geglu") for d in ("bf16", "fp32")}


def test_bytes_moved_counts_each_tensor_once():
    norm = bench.Case("rmsnorm", "bf16", rows=10, width=512)
    assert norm.bytes_moved("fwd") == 2 * (2 * 10 * 512 + 512)          # x, y, w
    assert norm.bytes_moved("bwd") == 2 * (3 * 10 * 512 + 2 * 512)      # x, dy, dx, w, dw
    assert norm.bytes_moved("full") == norm.bytes_moved("fwd") + norm.bytes_moved("bwd")
    gated = bench.Case("geglu", "fp32", rows=10, width=1365)
    assert gated.bytes_moved("fwd") == 4 * 10 * (2730 + 1365)           # x[2F] in, out[F]
    assert gated.bytes_moved("bwd") == 4 * 10 * (2730 + 1365 + 2730)    # x, dout in; dx[2F] out


def test_compile_provider_builds_lazily():
    module, note = bench.build("swiglu", "compile", 85)
    assert "torch.compile" in note and isinstance(module, torch.nn.Module)


@pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))
def test_pipeline_with_a_stand_in_timer(tmp_path):
    calls = []

    def timer(fn, grad_to_none):
        for _ in range(3):
            for t in grad_to_none:
                t.grad = None
            fn()
        calls.append(len(grad_to_none))
        return [2.0, 1.0, 3.0, 4.0, 5.0]

    cases = [bench.Case("rmsnorm", "fp32", 16, 64), bench.Case("swiglu", "bf16", 8, 85),
             bench.Case("geglu", "fp32", 4, 7)]
    lines = []
    rows = bench.run(cases, ("triton", "eager", "liger"), bench.MODES, timer, DEVICE, copy_gbps=100.0,
                     log=lines.append)
    assert len(rows) == 3 * 3 * 3 and len(lines) == 9
    ok = [r for r in rows if r["status"] == "ok"]
    expected = {(c.kernel, p) for c in cases for p in ("triton", "eager")}
    assert {(r["kernel"], r["provider"]) for r in ok} >= expected
    for row in ok:
        assert row["ms_p50"] == 3.0 and row["ms_p20"] == pytest.approx(1.8) and row["n_samples"] == 5
        assert row["gbps"] == pytest.approx(row["bytes"] / 3e-3 / 1e9)
        assert row["frac_copy_bw"] == pytest.approx(row["gbps"] / 100.0)
        # The kernels agree with fp32 eager on the same inputs (bf16 to a few ulps of its range).
        tolerance = 1e-4 if row["dtype"] == "fp32" else 0.1
        assert row["err_out"] <= tolerance and row["err_dx"] <= tolerance, row
    # RMSNorm passes x and the weight to grad_to_none; the gated kernels only x.
    assert set(calls) == {1, 2}
    liger = [r for r in rows if r["provider"] == "liger"]
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        assert all(r["status"] == "unsupported" and "liger" in r["note"] for r in liger)

    markdown = bench.table(rows)
    assert len(markdown.splitlines()) == 2 + 9 and "| rmsnorm | fp32 | 16x64 | triton | 3.000 (" in markdown

    env = bench.environment(DEVICE, 100.0)
    csv_path, json_path = bench.write(rows, env, tmp_path / "results")
    with csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and tuple(table[0]) == bench.COLUMNS
    saved = json.loads(json_path.read_text())
    assert saved["environment"]["torch"] == torch.__version__ and len(saved["rows"]) == len(rows)


@pytest.mark.slow
def test_compiled_provider_times_backward_with_a_retained_graph():
    # The backward-only pass reuses one graph; a compiled RMSNorm backward with donated buffers would
    # refuse that (found on CPU inductor, which shares the autograd machinery with the GPU path).
    def timer(fn, grad_to_none):
        for _ in range(2):
            fn()
        return [1.0]

    rows = bench.measure(bench.Case("rmsnorm", "fp32", 8, 32), "compile", bench.MODES, timer,
                         torch.device("cpu"), copy_gbps=1.0)
    assert [r["status"] for r in rows] == ["ok"] * 3, rows
    assert rows[0]["err_out"] < 1e-5 and rows[0]["err_dx"] < 1e-5
