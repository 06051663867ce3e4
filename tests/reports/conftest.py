"""One set of result files and one build shared by the report tests (building PNGs at 300 dpi is the
slow part, so it happens once per session)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.reports import factory as f


@dataclass
class Built:
    inputs: Path
    out: Path
    files: list[Path]
    rows: list[dict[str, Any]]

    def row(
        self, variant: dict, device: dict = f.CPU, design: str | None = None, kind: str = "measured"
    ) -> dict:
        """The last input row of this variant on this device (what the tables must show)."""
        found = [
            r
            for r in self.rows
            if r.get("variant") == variant
            and r["device"]["type"] == device["type"]
            and r["kind"] == kind
            and (design is None or r.get("design") == design)
        ]
        assert found, f"no input row for {variant} on {device['type']}"
        return found[-1]


def sample_rows() -> tuple[list[dict], list[dict]]:
    """Bench rows (CPU paper/ofat/loo, H100 paper, estimates) and accuracy rows, every status included."""
    siglip = dict(f.FAITHFUL, loss="siglip")
    modern_softmax = dict(f.MODERN, loss="softmax")
    cpu = [
        f.eff_row(baseline=True, step=0.100, mem=1.0),
        f.eff_row(siglip, step=0.101, mem=1.0),
        f.eff_row(modern_softmax, step=0.093, mem=0.8),
        f.eff_row(f.MODERN, step=0.090, mem=0.75),
        f.eff_row(
            dict(f.FAITHFUL, attention="flash_attn"),
            status="unsupported",
            reason="flash-attn is not installed; pip install flash-attn",
        ),
        f.eff_row(
            dict(f.FAITHFUL, attention="sdpa_cudnn"),
            status="error",
            message="RuntimeError: cuDNN said no\n  File x.py, line 3",
        ),
        f.eff_row(dict(f.FAITHFUL, compile=True), status="timeout", message="killed after 300 s"),
    ]
    ofat = [
        f.eff_row(design="ofat", baseline=True, step=0.100, mem=1.0),
        f.eff_row(dict(f.FAITHFUL, norm="rmsnorm"), design="ofat", step=0.095),
        f.eff_row(dict(f.FAITHFUL, precision="bf16"), design="ofat", step=0.070, mem=0.6),
        f.eff_row(
            dict(f.FAITHFUL, attention="xformers"),
            design="ofat",
            status="unsupported",
            reason="xformers needs a CUDA device",
        ),
    ]
    loo = [
        f.eff_row(f.MODERN, design="loo", baseline=True, step=0.090, mem=0.75),
        f.eff_row(
            dict(f.MODERN, position="cpb"),
            design="loo",
            status="unsupported",
            reason="sdpa_flash cannot take CT-CLIP's learned position bias",
        ),
        f.eff_row(dict(f.MODERN, mlp="geglu"), design="loo", step=0.094, mem=0.8),
    ]
    gpu = [
        f.eff_row(device=f.H100, size="paper", batch=16, baseline=True, step=1.31198, mem=11.898),
        f.eff_row(siglip, device=f.H100, size="paper", batch=16, step=1.31341, mem=11.898),
        f.eff_row(f.MODERN, device=f.H100, size="paper", batch=16, step=1.23489, mem=9.095),
        f.eff_row(
            dict(f.MODERN, checkpointing=True, precision="fp16"),
            device=f.H100,
            size="paper",
            batch=16,
            status="oom",
            message="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB",
        ),
    ]
    estimates = [
        f.eff_row(kind="estimate", device=f.CPU, size="paper", batch=16, mem=2.0),
        f.eff_row(f.MODERN, kind="estimate", device=f.CPU, size="paper", batch=16, mem=1.5),
        f.eff_row(
            dict(f.FAITHFUL, attention="flash_attn"),
            kind="estimate",
            size="paper",
            batch=16,
            status="unsupported",
            reason="flash-attn needs CUDA",
        ),
    ]
    accuracy = [
        f.acc_row(baseline=True, auroc=0.604),
        f.acc_row(f.MODERN, seed=0, auroc=0.616),
        f.acc_row(f.MODERN, seed=1, auroc=0.630),
        f.acc_row(f.MODERN, seed=2, auroc=0.611),
        f.acc_row(dict(f.FAITHFUL, loss="siglip"), status="diverged", message="loss became NaN at step 31"),
    ]
    return cpu + ofat + loo + gpu + estimates, accuracy


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Built:
    from reports.build import build_reports

    root = tmp_path_factory.mktemp("reports")
    bench_rows, acc_rows = sample_rows()
    # Two files in a folder, one of them mixing kinds, as bench and ablations would leave them.
    f.write(root / "in" / "matrix-cpu.jsonl", bench_rows[:14])
    f.write(root / "in" / "sub" / "mixed.jsonl", bench_rows[14:] + acc_rows)
    files = build_reports([root / "in"], root / "out", ["md", "tex", "csv", "png"])
    return Built(root / "in", root / "out", files, bench_rows + acc_rows)
