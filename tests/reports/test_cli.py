"""The command line: --help works, and a run writes the files it lists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reports.build import main
from tests.reports import factory as f

ROOT = Path(__file__).resolve().parents[2]


def test_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "reports.build", "--help"],
        cwd=ROOT,
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "--format" in proc.stdout and "RESULTS" in proc.stdout


def test_run_lists_what_it_wrote(tmp_path: Path, capsys) -> None:
    f.write(tmp_path / "r.jsonl", [f.eff_row(baseline=True), f.eff_row(f.MODERN, step=0.05)])
    assert main([str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "out"), "--format", "md,csv"]) == 0
    listed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in listed) == ["efficiency.csv", "efficiency.md"]
    assert all(Path(p).exists() for p in listed)


def test_reports_imports_no_measuring_package() -> None:
    """reports reads files only: importing it must not pull in models, bench, ablations (or torch)."""
    code = (
        "import sys, reports.build; bad = [m for m in ('models', 'bench', 'ablations', 'torch') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, check=False, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
