"""Plots: one of each kind per group, PNG at 300 dpi, and no crash on groups where nothing ran."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from reports.build import build_reports
from tests.reports import factory as f

KINDS_EFF = ("memory", "stages", "tradeoff")
GROUPS_EFF = ("cpu-tiny-b2", "nvidia-h100-80gb-hbm3-paper-b16")


def test_every_plot_is_written_at_print_resolution(built) -> None:
    expected = [f"{k}-{g}.png" for k in KINDS_EFF for g in GROUPS_EFF]
    expected += ["roc-cpu-tiny-b4-phantoms.png", "loss-cpu-tiny-b4-phantoms.png"]
    written = {p.name for p in built.files if p.suffix == ".png"}
    assert set(expected) == written
    for name in expected:
        with Image.open(built.out / name) as img:
            dpi = img.info["dpi"]
            assert round(dpi[0]) == 300 and round(dpi[1]) == 300, (name, dpi)
            assert img.size[0] > 1000  # print resolution, not a thumbnail


def test_groups_where_nothing_ran_still_plot(tmp_path: Path) -> None:
    f.write(
        tmp_path / "r.jsonl",
        [
            f.eff_row(device=f.H100, status="oom", message="CUDA out of memory"),
            f.eff_row(f.MODERN, device=f.H100, status="unsupported", reason="needs flash-attn"),
            f.acc_row(status="error", message="boom"),
        ],
    )
    files = build_reports([tmp_path / "r.jsonl"], tmp_path / "out", ["png", "md"])
    names = {p.name for p in files}
    assert {"memory-nvidia-h100-80gb-hbm3-tiny-b2.png", "efficiency.md", "accuracy-ctclip.md"} <= names
    text = (tmp_path / "out" / "efficiency.md").read_text()
    assert "No row ran" in text and "OOM" in text
