"""Reading result files: a malformed or wrong-schema line is an error naming the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports import schema
from reports.build import main
from reports.load import ResultFileError, load
from tests.reports import factory as f


def _file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps(f.eff_row(baseline=True))


@pytest.mark.parametrize(
    "bad, words",
    [
        ('{"schema_version": 1, "kind": "measured", ', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps(dict(f.eff_row(), schema_version=2)), "schema_version 2"),
        (json.dumps({k: v for k, v in f.eff_row().items() if k != "schema_version"}), "schema_version None"),
        (json.dumps(dict(f.eff_row(), kind="guess")), "kind 'guess'"),
        (json.dumps(dict(f.eff_row(), status="fine")), "status 'fine'"),
        (json.dumps({k: v for k, v in f.eff_row().items() if k != "variant_key"}), "'variant_key'"),
        (json.dumps(dict(f.eff_row(), batch="two")), "'batch'"),
        (json.dumps(dict(f.eff_row(), stages={"step": {"median": 1.0}})), "stage 'step'"),
        (json.dumps(dict(f.eff_row(), stages={"step": dict(f.stage(1.0), samples="many")})), "stages.step.samples"),
        (json.dumps(dict(f.eff_row(), stages={"step": dict(f.stage(1.0), samples=[1.0, "x"])})),
         "stages.step.samples"),
        (
            json.dumps(dict(f.eff_row(), memory={"gpu_allocated_peak_bytes": "lots"})),
            "memory.gpu_allocated_peak_bytes",
        ),
        (json.dumps(dict(f.acc_row(), status="ok", seed=None)), "'seed'"),
        (json.dumps(dict(f.eff_row(), device={"name": "x"})), "'device'"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, bad: str, words: str) -> None:
    path = _file(tmp_path, [GOOD, "", bad, GOOD])  # the blank line counts: the bad one is line 3
    with pytest.raises(ResultFileError) as err:
        load([path])
    assert str(err.value).startswith(f"{path}:3: "), str(err.value)
    assert words in str(err.value)
    assert err.value.line == 3 and err.value.path == path


def test_cli_reports_the_error_and_exits_2(tmp_path: Path, capsys) -> None:
    path = _file(tmp_path, [GOOD, "not json"])
    assert main([str(path), "--out", str(tmp_path / "out"), "--format", "md"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2:" in err and "not valid JSON" in err


def test_missing_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(ResultFileError, match="no such file"):
        load([tmp_path / "nope.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultFileError, match="no \\*.jsonl"):
        load([tmp_path / "empty"])
    with pytest.raises(ResultFileError, match="no result rows"):
        load([_file(tmp_path, [""])])


def test_raw_samples_are_read_and_optional(tmp_path: Path) -> None:
    with_samples = f.eff_row(baseline=True)
    with_samples["stages"]["step"]["samples"] = [0.1, 0.2, 0.3]
    without = f.eff_row(dict(f.FAITHFUL, loss="siglip"))
    for stats in without["stages"].values():
        del stats["samples"]
    rows = load([_file(tmp_path, [json.dumps(with_samples), json.dumps(without)])]).efficiency
    assert rows[0].stages["step"].samples == (0.1, 0.2, 0.3)
    assert rows[1].stages["step"].samples == ()


def test_kinds_are_split_and_unknown_fields_ignored(tmp_path: Path) -> None:
    rows = [dict(f.eff_row(), future_field={"x": 1}), f.eff_row(kind="estimate"), f.acc_row()]
    results = load([_file(tmp_path, [json.dumps(r) for r in rows])])
    assert [r.kind for r in results.efficiency] == ["measured", "estimate"]
    assert len(results.accuracy) == 1 and results.accuracy[0].seed == 0
    assert results.efficiency[0].source.endswith("r.jsonl:1")


def test_schema_mirror_matches_bench() -> None:
    """reports copies the schema constants (it may not import bench); they must not drift."""
    result = pytest.importorskip("bench.result")
    memory_fields = [fld for fld in result.Memory.__dataclass_fields__]
    assert schema.SCHEMA_VERSION == result.SCHEMA_VERSION
    assert schema.EFFICIENCY_STATUSES == result.STATUSES and schema.EFFICIENCY_KINDS == result.KINDS
    assert schema.STAGES == result.STAGES and schema.ALL_STAGES == result.ALL_STAGES
    byte_fields = {name for name in memory_fields if name.endswith("_bytes")}
    assert set(schema.MEMORY_FIELDS) == byte_fields
    # The one text field (where bench.estimate's predicted peak is reached) is not a figure reports load.
    assert set(memory_fields) - byte_fields == {"predicted_peak_at"}


def test_schema_mirror_matches_ablations() -> None:
    result = pytest.importorskip("ablations.result")
    assert schema.SCHEMA_VERSION == result.SCHEMA_VERSION and schema.ACCURACY_KIND == result.KIND
    assert schema.ACCURACY_STATUSES == result.STATUSES


def test_rows_written_by_bench_are_read(tmp_path: Path) -> None:
    """A row made by bench's own dataclass loads (skipped when bench is absent)."""
    result = pytest.importorskip("bench.result")
    r = result.Result(
        cell_key="faithful|tiny|b2|cpu|measured",
        variant_key="faithful",
        variant=f.FAITHFUL,
        size="tiny",
        size_config={},
        batch=2,
        device=f.CPU,
        status="ok",
        stages={"step": result.StageStats(0.1, 0.01, 0.09, 0.11, 30, [0.1])},
    )
    loaded = load([_file(tmp_path, [json.dumps(r.to_dict())])]).efficiency[0]
    assert loaded.stages["step"].median == 0.1 and loaded.device.count == 2
