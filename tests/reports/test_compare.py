"""`python -m reports.compare BEFORE AFTER`: verdicts, device matching and the gate's exit codes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reports.compare import main
from reports.stats import median_ratio_ci
from tests.reports import factory as f

SIGLIP = dict(f.FAITHFUL, loss="siglip")


def _timed(variant: dict, step: float, rng: np.random.Generator, **kw) -> dict:
    row = f.eff_row(variant, step=step, **kw)
    for stats in row["stages"].values():
        stats["samples"] = list(rng.normal(stats["median"], 0.01 * stats["median"], stats["n"]))
        stats["median"] = float(np.median(stats["samples"]))
    return row


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    before = [_timed(f.FAITHFUL, 0.100, rng, baseline=True), _timed(f.MODERN, 0.090, rng),
              _timed(SIGLIP, 0.100, rng), f.eff_row(dict(f.FAITHFUL, norm="rmsnorm"), step=0.1)]
    after = [_timed(f.FAITHFUL, 0.100, rng, baseline=True),  # unchanged
             _timed(f.MODERN, 0.099, rng, mem=1.2),            # 10 % slower, 20 % more memory
             _timed(SIGLIP, 0.080, rng),                       # 20 % faster
             f.eff_row(f.MODERN, device=f.H100)]               # another device: never compared
    f.write(tmp_path / "before.jsonl", before)
    f.write(tmp_path / "after.jsonl", after)
    return tmp_path, before, after


def test_verdicts_ratios_and_intervals(runs, capsys) -> None:
    path, before, after = runs
    assert main([str(path / "before.jsonl"), str(path / "after.jsonl"), "--csv", str(path / "c.csv")]) == 0
    table = capsys.readouterr().out
    assert r"faithful\|tiny\|b2\|cpu\|measured" in table  # key bars escaped for Markdown
    frame = pd.read_csv(path / "c.csv").set_index("cell")
    modern = frame.loc[f"{f.key(f.MODERN)}|tiny|b2|cpu|measured"]
    expected = median_ratio_ci(after[1]["stages"]["step"]["samples"], before[1]["stages"]["step"]["samples"])
    assert modern["verdict"] == "slower"
    assert modern["step after / before"] == pytest.approx(
        after[1]["stages"]["step"]["median"] / before[1]["stages"]["step"]["median"])
    assert (modern["CI low"], modern["CI high"]) == pytest.approx(expected)
    # CPU memory is the accounting: saved activations scale with `mem` in the factory.
    acc = [sum(r["memory"][k] for k in ("param_bytes", "grad_bytes", "optimizer_state_bytes",
                                        "saved_activations_bytes")) for r in (before[1], after[1])]
    assert modern["memory after / before"] == pytest.approx(acc[1] / acc[0])
    assert frame.loc[f"{f.key(SIGLIP)}|tiny|b2|cpu|measured", "verdict"] == "faster"
    assert frame.loc["faithful|tiny|b2|cpu|measured", "verdict"] == "unresolved"
    assert frame.loc["norm=rmsnorm|tiny|b2|cpu|measured", "verdict"] == "only before"
    other = frame.loc[f"{f.key(f.MODERN)}|tiny|b2|cuda|measured"]
    assert other["verdict"] == "only after" and other["device"] == "NVIDIA H100 80GB HBM3"


def test_gate_exit_codes(runs, capsys) -> None:
    path, _, _ = runs
    argv = [str(path / "before.jsonl"), str(path / "after.jsonl")]
    assert main(argv + ["--fail-slower-than", "1.05"]) == 1  # a resolved ~10 % slowdown
    assert "regression" in capsys.readouterr().err
    assert main(argv + ["--fail-slower-than", "1.5"]) == 0
    assert main(argv + ["--fail-memory-above", "1.05"]) == 1
    assert main(argv + ["--fail-memory-above", "1.5"]) == 0


def test_a_device_change_is_not_comparable(tmp_path, capsys) -> None:
    other_cpu = dict(f.CPU, name="Another CPU")
    f.write(tmp_path / "a.jsonl", [f.eff_row(baseline=True)])
    f.write(tmp_path / "b.jsonl", [f.eff_row(baseline=True, device=other_cpu)])
    assert main([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--fail-slower-than", "1.0"]) == 0
    assert "not comparable: measured on CPU, 2 cores, 1 torch thread (Test CPU 9000) before" in capsys.readouterr().out


def test_unreadable_input_exits_2(tmp_path, capsys) -> None:
    (tmp_path / "bad.jsonl").write_text("not json\n")
    f.write(tmp_path / "good.jsonl", [f.eff_row(baseline=True)])
    assert main([str(tmp_path / "bad.jsonl"), str(tmp_path / "good.jsonl")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
