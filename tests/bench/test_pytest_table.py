"""bench.pytest_table on a hand-made benchmark file (every ratio computed here) and on one written by
pytest-benchmark itself, so the reader is checked against the real format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import pytest_table
from tests.child_env import child_env

ROOT = Path(__file__).resolve().parents[2]


def _bench(test: str, param: str, params: dict, median: float, peak: int | None = None, **extra) -> dict:
    info = dict(extra, **({"max_memory_allocated_bytes": peak} if peak is not None else {}))
    return {"fullname": f"tests/perf/test_gpu.py::{test}[{param}]", "param": param, "params": params,
            "extra_info": info, "stats": {"median": median, "iqr": median / 10, "rounds": 5}}


def test_each_case_is_set_against_its_pytorch_path_or_the_baseline_row():
    data = {"machine_info": {"gpu_name": "NVIDIA H200"}, "benchmarks": [
        _bench("test_kernel", "triton-rmsnorm", {"kernel": "rmsnorm", "provider": "triton"}, 0.002,
               3 * 2**30),
        _bench("test_kernel", "eager-rmsnorm", {"kernel": "rmsnorm", "provider": "eager"}, 0.008),
        _bench("test_kernel", "triton-swiglu", {"kernel": "swiglu", "provider": "triton"}, 0.003),
        _bench("test_kernel", "eager-swiglu", {"kernel": "swiglu", "provider": "eager"}, 0.004),
        _bench("test_peg", "triton", {"provider": "triton"}, 0.001),
        _bench("test_peg", "conv3d", {"provider": "conv3d"}, 0.010),
        _bench("test_row", "faithful", {"cell": "faithful"}, 0.100, baseline=True),
        _bench("test_row", "modern", {"cell": "modern"}, 0.080, baseline=False),
        _bench("test_alone", "triton", {"provider": "triton"}, 0.005),  # its reference was skipped
    ]}
    text = pytest_table.markdown(data)
    assert "## GPU perf suite (pytest-benchmark, NVIDIA H200)" in text
    assert "| test_kernel | triton-rmsnorm | 2.000 | 0.200 | 5 | 0.25× | 3.00 GiB |" in text
    assert "| test_kernel | eager-rmsnorm | 8.000 | 0.800 | 5 | reference |  |" in text
    assert "| test_kernel | triton-swiglu | 3.000 | 0.300 | 5 | 0.75× |  |" in text  # not rmsnorm's eager
    assert "| test_peg | triton | 1.000 | 0.100 | 5 | 0.10× |  |" in text
    assert "| test_row | modern | 80.000 | 8.000 | 5 | 0.80× |  |" in text
    assert "| test_row | faithful | 100.000 | 10.000 | 5 | reference |  |" in text
    assert "| test_alone | triton | 5.000 | 0.500 | 5 |  |  |" in text
    assert "No benchmark finished." in pytest_table.markdown({"benchmarks": []})


def test_reads_a_file_pytest_benchmark_wrote(tmp_path):
    (tmp_path / "test_pairs.py").write_text(
        "import time\n"
        "import pytest\n\n"
        "@pytest.mark.parametrize('provider', ['triton', 'eager'])\n"
        "def test_pair(benchmark, provider):\n"
        "    benchmark.pedantic(time.sleep, args=(0.002 if provider == 'triton' else 0.004,), rounds=3)\n"
        "    benchmark.extra_info['max_memory_allocated_bytes'] = 2**30\n")
    out = tmp_path / "benchmarks.json"
    done = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_pairs.py"), "-q", "-p",
                           "no:cacheprovider", "--rootdir", str(tmp_path), "--benchmark-enable",
                           f"--benchmark-json={out}"], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    medians = {b["param"]: b["stats"]["median"] for b in json.loads(out.read_text())["benchmarks"]}
    shown = subprocess.run([sys.executable, "-m", "bench.pytest_table", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    ratio = medians["triton"] / medians["eager"]
    assert f"| test_pair | triton | {medians['triton'] * 1e3:.3f} |" in shown.stdout
    assert f"| 3 | {ratio:.2f}× | 1.00 GiB |" in shown.stdout
    assert 0.3 < ratio < 0.8  # 2 ms against 4 ms of sleep
    missing = subprocess.run([sys.executable, "-m", "bench.pytest_table", str(tmp_path / "none.json")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
