"""Which row the efficiency tables compare with: at bf16/fp16 the faithful variant's key is `prec=bf16`,
not `faithful`, and rows with no baseline at all get no ratios rather than ratios against whichever
row came first. Also the notes column's words for a timed-out cell and for long flags."""

from __future__ import annotations

import pytest

from reports import efficiency, labels
from reports.load import load
from tests.reports import factory as f

BF16 = dict(f.FAITHFUL, precision="bf16")
MODERN_BF16 = dict(f.MODERN, precision="bf16")
CANDIDATE_BF16 = dict(MODERN_BF16, position="rope")


def _rows(tmp_path, rows):
    f.write(tmp_path / "r.jsonl", rows)
    return load([tmp_path / "r.jsonl"]).efficiency


def test_the_faithful_row_at_bf16_is_the_baseline_when_none_is_marked(tmp_path) -> None:
    rows = _rows(tmp_path, [f.eff_row(CANDIDATE_BF16, design="targets", step=0.05),
                            f.eff_row(BF16, design="targets", step=0.10),
                            f.eff_row(MODERN_BF16, design="targets", step=0.08)])
    base = efficiency.pick_baseline(rows)
    assert base is not None and base.variant_key == "prec=bf16"
    table = efficiency.efficiency_table(rows, "g")
    step = next(c for c in table.columns if c.header == "total step (ms)")
    assert step.change == [pytest.approx(0.5), None, pytest.approx(0.8)]


def test_without_a_baseline_or_the_faithful_row_there_are_no_ratios(tmp_path) -> None:
    rows = _rows(tmp_path, [f.eff_row(CANDIDATE_BF16, design="targets", step=0.05),
                            f.eff_row(MODERN_BF16, design="targets", step=0.08)])
    assert efficiency.pick_baseline(rows) is None
    table = efficiency.efficiency_table(rows, "g")
    step = next(c for c in table.columns if c.header == "total step (ms)")
    assert step.change == [None, None]
    names = next(c for c in table.columns if c.header == "architecture").values
    assert not any("(baseline)" in n for n in names)
    assert any("No ratios" in n for n in table.notes)


def test_a_marked_baseline_still_comes_first(tmp_path) -> None:
    rows = _rows(tmp_path, [f.eff_row(BF16, design="targets", step=0.10),
                            f.eff_row(MODERN_BF16, design="paper", baseline=True, step=0.08)])
    assert efficiency.pick_baseline(rows).variant_key == f.key(MODERN_BF16)


def test_a_timeout_note_keeps_the_end_of_its_log_tail() -> None:
    message = "no result after 90 s; process group killed. Log tail:\nimporting\ntiming step 3 of 6\n\n"
    assert labels.note("timeout", None, message) == (
        "no result after 90 s; process group killed. Log tail: timing step 3 of 6")
    assert labels.note("error", None, "RuntimeError: boom\nTraceback ...") == "RuntimeError: boom"
    long_flag = "accounting_failed: " + "x" * 300
    assert len(labels.note("ok", None, None, [long_flag, "noisy:step"], limit=50)) == 50 + len("; noisy: step")
