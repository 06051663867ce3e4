"""kernels.bench_cli: the GEMM-shaped kernel benchmarks' shared command line says, on a machine without a
CUDA GPU, that it timed nothing, exits 0 and writes no files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["kernels.bench_vq", "kernels.bench_mlp"])
def test_cpu_run_times_nothing_and_exits_0(tmp_path, module):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", module, "--out", str(tmp_path / "out"), "--batch", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "nothing was timed" in done.stdout and not (tmp_path / "out").exists()
