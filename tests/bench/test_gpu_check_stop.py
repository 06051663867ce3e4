"""bench.gpu_check when its run does not go to plan: stopped by SIGTERM (the outer `timeout` of
scripts/gpu_check.sh), a cell cut short by its part's budget, a report part out of time, rows the
parent writes for a GPU it could not name, and the targets' reports against the run's baseline."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu_check, store
from bench.environment import UNKNOWN_GPU_NAME, host_device_info
from bench.gpu_check import Budget, PartLog, named_by_probe, run_cell_part, write_reports
from bench.gpu_plan import make_plan
from bench.result import Result
from tests.bench.gpu_rows import FAITHFUL, FAST, MODERN, gpu_row
from tests.child_env import child_env
from tests.reports.mdparse import sections

ROOT = Path(__file__).resolve().parents[2]
DRY_SKIPS = ["--skip", "probe", "--skip", "estimate", "--skip", "report"]


def _parts(out: Path) -> dict[str, dict]:
    return {p["name"]: p for p in json.loads((out / "parts.json").read_text())["parts"]}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="children are found in /proc")
def test_sigterm_mid_part_writes_the_summary_of_what_finished(tmp_path, monkeypatch):
    """The summary is on disk after each part, and a SIGTERM during the next one ends the run with it
    rewritten (the stopped part marked), the part's child killed and the signal handler put back."""
    seen: dict[str, str] = {}
    child: list[subprocess.Popen] = []

    def fake_part(part, plan, out, budget, log_part, reasons, common) -> list[Result]:
        if part.name == "paper-bf16":
            row = gpu_row(FAITHFUL, [1.0] * 4, baseline=True)
            store.append(out / "results" / f"{part.name}.jsonl", row)
            log_part.status = "done"
            return [row]
        seen["summary before targets"] = (out / "summary.md").read_text()
        # A cell process as bench.runner starts one (its own session), still running at the signal.
        child.append(subprocess.Popen(["sleep", "60"], start_new_session=True))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(gpu_check, "run_cell_part", fake_part)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        gpu_check.main(["--dry-run", "--out", str(tmp_path), *DRY_SKIPS])
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert f"| {FAITHFUL.key} | ok | 1000.0 |" in seen["summary before targets"]
    summary = (tmp_path / "summary.md").read_text()
    assert "Not finished (stopped by SIGTERM)" in summary and f"| {FAITHFUL.key} | ok | 1000.0 |" in summary
    parts = _parts(tmp_path)
    assert parts["paper-bf16"]["status"] == "done" and parts["targets"]["status"] == "stopped"
    assert "stopped by SIGTERM" in parts["targets"]["notes"][0]
    assert parts["ofat-tiny"]["status"] == "pending"
    assert json.loads((tmp_path / "summary.json").read_text())["unfinished"] == "stopped by SIGTERM"
    assert child[0].wait(timeout=10) == -signal.SIGKILL


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_real_sigterm_during_a_cell_leaves_a_summary_and_no_cell(tmp_path):
    """The process as scripts/gpu_check.sh runs it, sent SIGTERM while a cell process runs."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out), *DRY_SKIPS],
                            cwd=ROOT, env=child_env(PYTHONPATH=str(ROOT), without=("TRITON_INTERPRET",)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not _children(proc.pid) or not list((out / "logs").glob("paper-bf16/*.log")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.2)
    cells = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, stdout
    assert "Not finished (stopped by SIGTERM)" in (out / "summary.md").read_text()
    assert _parts(out)["paper-bf16"]["status"] == "stopped"
    time.sleep(0.5)
    assert not [pid for pid in cells if _alive(pid)]


def test_a_cell_cut_short_by_the_part_budget_says_so(tmp_path, monkeypatch):
    """A timeout set by what was left of the part, not the cell's own timeout, is not a hang."""
    from bench import runner
    from bench.cell import base_result

    given: list[float] = []

    def timed_out(spec, log_path):
        given.append(spec.timeout_s)
        return base_result(spec, "timeout", wall_s=spec.timeout_s, message=(
            f"no result after {spec.timeout_s:g} s; process group killed. Log tail:\nstep 2 of 6"))

    monkeypatch.setattr(runner, "run_in_subprocess", timed_out)
    plan = make_plan(dry_run=True)
    part = plan.cell_parts[0]
    part = type(part)(**{**part.__dict__, "cells": part.cells[:1]})
    common = {"env_fingerprint": "f", "host_device": {"type": "cpu", "name": "test"}, "git": {}}
    (short,) = run_cell_part(part, plan, tmp_path, Budget({part.name: 20}, 1.0), PartLog(part.name, 20), {}, common)
    assert given[0] <= 20 < part.cell_timeout_s
    assert short.message.startswith(f"budget: {given[0]:.0f} s left of the part, under the cell timeout of "
                                    f"{part.cell_timeout_s:g} s; no result after")
    (full,) = run_cell_part(part, plan, tmp_path, Budget({part.name: 500}, 1.0), PartLog(part.name, 500), {}, common)
    assert given[1] == part.cell_timeout_s and not full.message.startswith("budget:")


def _report_rows(out: Path) -> None:
    results = out / "results"
    for name, rows in {"paper-bf16": [gpu_row(FAITHFUL, [1.0] * 6, baseline=True), gpu_row(MODERN, [0.8] * 6)],
                       "targets": [gpu_row(FAST, [0.5] * 5),
                                   gpu_row(FAST.replace(vq_impl="onehot"), [0.6] * 5)]}.items():
        for r in rows:
            r.design = "paper" if name == "paper-bf16" else "targets"
            store.append(results / f"{name}.jsonl", r)


def test_target_reports_are_against_the_runs_faithful_baseline(tmp_path):
    _report_rows(tmp_path)
    log_part = PartLog("report", 60)
    write_reports(make_plan(dry_run=False), tmp_path, Budget({"report": 300}, 1.0), log_part)
    assert log_part.status == "done", log_part.notes
    (table,) = [s for s in sections(tmp_path / "report" / "targets" / "efficiency.md")]
    names = [r["architecture"] for r in table.rows]
    assert [n for n in names if n.endswith("(baseline)")] == ["SA + GEGLU + LN (baseline)"]
    # 0.5 s against the faithful 1.0 s, not against the first candidate.
    assert "(0.50× [" in table.rows[0]["total step (ms)"]


def test_the_report_part_keeps_to_its_deadline(tmp_path):
    _report_rows(tmp_path)
    log_part = PartLog("report", 0)
    write_reports(make_plan(dry_run=False), tmp_path, Budget({"report": 0}, 1.0), log_part)
    assert not (tmp_path / "report").exists()
    assert log_part.status == "partial" and "no report for paper-bf16" in log_part.notes[0]


def test_a_gpu_nvml_cannot_name_is_named_by_nvidia_smi_then_the_probe(tmp_path, monkeypatch):
    """Without NVML in the parent: nvidia-smi's name, and failing that the probe child's, never 'cuda'
    (rows named so group apart from the cells', which torch names)."""
    import bench.environment as environment

    monkeypatch.setattr(environment, "nvml_handle", lambda index: None)
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, GPU-1234'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(smi.parent))
    host = host_device_info(torch.device("cuda"))
    assert (host["name"], host["uuid"]) == ("NVIDIA H100 80GB HBM3", "GPU-1234")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    host = host_device_info(torch.device("cuda"))
    assert host["name"] == UNKNOWN_GPU_NAME
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "env.json").write_text(json.dumps(
        {"device": {"type": "cuda", "name": "NVIDIA H200", "uuid": "GPU-5678"}}))
    assert named_by_probe(host, tmp_path)["name"] == "NVIDIA H200"
    named = dict(host, name="NVIDIA H100 80GB HBM3")
    assert named_by_probe(named, tmp_path) is named  # a name the parent read stays
