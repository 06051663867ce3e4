"""Whole sweeps in subprocesses: injected faults (CTCLIP_BENCH_FAULT, see bench/faults.py), and a
runner killed mid-sweep then resumed. Each cell is a real tiny CT-CLIP in its own process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import store
from bench import run as bench_run
from bench.faults import ENV_VAR

REPO = Path(__file__).resolve().parents[2]
FAST = ["--warmup", "1", "--repeats", "3", "--attempts", "1", "--no-progress"]
MODERN_SOFTMAX = "attn=sdpa_flash,pos=none,norm=rmsnorm,mlp=swiglu"
MODERN = MODERN_SOFTMAX + ",loss=siglip"


def _processes_with(marker: str) -> list[int]:
    """PIDs whose environment holds `marker` (Linux /proc); [] elsewhere."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if marker.encode() in environ and state != "Z":
            found.append(int(proc.name))
    return found


def test_faults_are_recorded_and_the_sweep_finishes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV_VAR, f"oom@faithful;crash@loss=siglip;hang@{MODERN_SOFTMAX}")
    assert bench_run.main(["--matrix", "--out", str(tmp_path), "--timeout", "20", *FAST]) == 0
    [path] = tmp_path.glob("matrix-tiny-cpu-*.jsonl")
    rows = {r.variant_key: r for r in store.read(path).results}
    assert rows["faithful"].status == "oom" and "out of memory" in rows["faithful"].message
    assert rows["loss=siglip"].status == "error" and "SIGABRT" in rows["loss=siglip"].message
    assert rows[MODERN_SOFTMAX].status == "timeout" and "20 s" in rows[MODERN_SOFTMAX].message
    ok = rows[MODERN]
    assert ok.status == "ok" and ok.stages["step"].median > 0
    assert len(store.read(path).results) == 4
    assert path.with_suffix(".csv").exists()
    out = capsys.readouterr().out
    assert "1 ok, 1 oom, 1 error, 1 timeout" in out and str(path) in out


def test_killed_sweep_resumes_without_redoing_or_duplicating(tmp_path):
    marker = f"CTCLIP_TEST_MARKER={tmp_path}"
    env = dict(os.environ, PYTHONPATH=str(REPO), CTCLIP_TEST_MARKER=str(tmp_path),
               **{ENV_VAR: f"hang@{MODERN_SOFTMAX}"})
    argv = [sys.executable, "-m", "bench.run", "--matrix", "--only", "loss=softmax", "--out", str(tmp_path),
            "--timeout", "120", *FAST]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    path = None
    while time.time() < deadline:  # wait for the first row; the second cell then hangs
        found = list(tmp_path.glob("matrix-tiny-cpu-*.jsonl"))
        if found and found[0].read_text().count("\n") >= 1:
            path = found[0]
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path is not None, "the first cell never finished"
    time.sleep(1.0)
    assert _processes_with(marker) == [], "the hanging cell outlived its killed runner"
    first = store.read(path).results
    assert [r.variant_key for r in first] == ["faithful"]
    with open(path, "a") as fh:  # what a writer killed mid-line leaves behind
        fh.write(json.dumps(first[0].to_dict())[:200])

    env.pop(ENV_VAR)
    done = subprocess.run(argv + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "truncated last line" in done.stderr and "1 finished cells reused" in done.stderr
    rows = store.read(path).results
    assert [r.variant_key for r in rows] == ["faithful", MODERN_SOFTMAX]
    assert rows[0].timestamp == first[0].timestamp  # not redone
    assert rows[1].status == "ok"
    assert store.read(path).problems == []
