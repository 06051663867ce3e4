"""Whole sweeps in subprocesses: injected faults (CTCLIP_BENCH_FAULT, see bench/faults.py), and a
runner killed mid-sweep then resumed. Each cell is a real tiny CT-CLIP in its own process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_faults_are_recorded_and_the_sweep_finishes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV_VAR, f"oom@faithful;crash@loss=siglip;hang@{MODERN_SOFTMAX}")
    # One timeout serves the hanging cell and the healthy one after it. A healthy tiny cell takes ~7 s
    # alone but took over 20 s in CI, sharing 2 cores with the suite's heaviest fixtures; 60 s leaves it
    # room, and the hang's wait is idle time the other pytest worker uses.
    assert bench_run.main(["--matrix", "--out", str(tmp_path), "--timeout", "60", *FAST]) == 0
    [path] = tmp_path.glob("matrix-tiny-cpu-*.jsonl")
    rows = {r.variant_key: r for r in store.read(path).results}
    assert rows["faithful"].status == "oom" and "out of memory" in rows["faithful"].message
    assert rows["loss=siglip"].status == "error" and "SIGABRT" in rows["loss=siglip"].message
    assert rows[MODERN_SOFTMAX].status == "timeout" and "60 s" in rows[MODERN_SOFTMAX].message
    ok = rows[MODERN]
    assert ok.status == "ok" and ok.stages["step"].median > 0
    assert len(store.read(path).results) == 4
    assert path.with_suffix(".csv").exists()
    out = capsys.readouterr().out
    assert "1 ok, 1 oom, 1 error, 1 timeout" in out and str(path) in out


@pytest.mark.slow
def test_killed_sweep_resumes_without_redoing_or_duplicating(tmp_path):
    marker = f"CTCLIP_TEST_MARKER={tmp_path}"
    # TMPDIR: the runner killed below never removes its cell's temporary folder; keep that inside tmp_path.
    env = dict(os.environ, PYTHONPATH=str(REPO), CTCLIP_TEST_MARKER=str(tmp_path), TMPDIR=str(tmp_path),
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


# A stand-in runner whose cell pauses between fork and the runner's pre-exec guard, so the test can kill
# the runner inside the window that PR_SET_PDEATHSIG alone cannot cover.
_RUNNER_KILLED_BEFORE_PRCTL = """
import os, subprocess, sys, time
from bench.runner import _die_with_parent
runner_pid = os.getpid()
def guard_once_the_runner_is_gone():
    os.write(1, b"forked\\n")
    time.sleep(2.0)
    _die_with_parent(runner_pid)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], preexec_fn=guard_once_the_runner_is_gone)
time.sleep(3600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_a_cell_forked_just_before_its_runner_dies_does_not_outlive_it(tmp_path):
    marker = f"CTCLIP_TEST_MARKER={tmp_path}"
    env = dict(os.environ, PYTHONPATH=str(REPO), CTCLIP_TEST_MARKER=str(tmp_path))
    runner = subprocess.Popen([sys.executable, "-c", _RUNNER_KILLED_BEFORE_PRCTL], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert runner.stdout.readline() == b"forked\n"
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        deadline = time.time() + 20
        while _processes_with(marker) and time.time() < deadline:
            time.sleep(0.2)
        assert _processes_with(marker) == [], "a cell forked before its runner died outlived it"
    finally:
        for pid in _processes_with(marker):
            os.kill(pid, signal.SIGKILL)
        runner.stdout.close()


def test_rounds_run_every_cell_again_in_reverse_order_and_resume_per_round(tmp_path, capsys):
    """Cells a CPU cannot run are decided in the parent (no process), so rounds cost nothing here."""
    argv = ["--matrix", "--design", "full", "--only", "attention=flash_attn,xformers,sdpa_cudnn",
            "--out", str(tmp_path), "--rounds", "3", *FAST]
    assert bench_run.main(argv) == 0
    [path] = tmp_path.glob("matrix-tiny-cpu-*.jsonl")
    rows = store.read(path).results
    order = ["attn=flash_attn", "attn=xformers", "attn=sdpa_cudnn"]
    assert [(r.variant_key, r.round) for r in rows] == (
        [(k, 0) for k in order] + [(k, 1) for k in reversed(order)] + [(k, 2) for k in order])
    assert all(r.status == "unsupported" for r in rows)
    assert "3 rounds" in capsys.readouterr().err
    # Resuming with one more round runs only that round.
    assert bench_run.main(argv[:-len(FAST)] + ["--rounds", "4", "--resume", *FAST]) == 0
    rows = store.read(path).results
    assert [(r.variant_key, r.round) for r in rows[9:]] == [(k, 3) for k in reversed(order)]
    assert "9 finished cells reused" in capsys.readouterr().err


def test_round_order_is_reversed_every_other_round_and_shuffled_per_pair():
    from bench.design import expand

    cells = expand("ofat", [], [], None)[:6]
    keys = [c.key for c in cells]
    assert [c.key for c in bench_run.round_order(cells, 0, False, 0)] == keys
    assert [c.key for c in bench_run.round_order(cells, 1, False, 0)] == keys[::-1]
    shuffled = [c.key for c in bench_run.round_order(cells, 0, True, 0)]
    assert sorted(shuffled) == sorted(keys) and shuffled != keys
    # A pair of rounds shares one shuffle, run forwards then backwards; the next pair draws a new one.
    assert [c.key for c in bench_run.round_order(cells, 1, True, 0)] == shuffled[::-1]
    assert [c.key for c in bench_run.round_order(cells, 2, True, 0)] != shuffled
