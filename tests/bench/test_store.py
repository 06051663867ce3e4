"""Result schema round trip, JSONL appends, truncated-line handling and the CSV."""

import csv
import json

import pytest

from bench import store
from bench.result import SCHEMA_VERSION, Memory, Result, StageStats, cell_key


def make(key="faithful", status="ok", **kw):
    stages = {"step": StageStats(0.02, 0.001, 0.019, 0.022, 3, [0.02, 0.019, 0.022])} if status == "ok" else {}
    return Result(cell_key=cell_key(key, "tiny", 4, "cpu"), variant_key=key, variant={"loss": "softmax"},
                  size="tiny", size_config={"dim": 32}, batch=4, device={"type": "cpu"}, status=status,
                  stages=stages, memory=Memory(param_bytes=100, saved_activations_bytes=50), **kw)


def test_round_trip_and_schema_version(tmp_path):
    path = tmp_path / "r.jsonl"
    store.append(path, make())
    store.append(path, make("loss=siglip", status="unsupported", reason="no kernel"))
    report = store.read(path)
    assert report.problems == []
    assert [r.variant_key for r in report.results] == ["faithful", "loss=siglip"]
    first = report.results[0]
    assert first == make() and first.schema_version == SCHEMA_VERSION
    assert first.stages["step"].samples == [0.02, 0.019, 0.022]
    with pytest.raises(ValueError, match="schema_version"):
        Result.from_dict(dict(make().to_dict(), schema_version=999))
    with pytest.raises(ValueError, match="status"):
        make(status="fine")


def test_truncated_last_line_is_reported_skipped_and_repaired(tmp_path):
    path = tmp_path / "r.jsonl"
    store.append(path, make())
    line = json.dumps(make("loss=siglip").to_dict())
    with open(path, "a") as fh:
        fh.write(line[: len(line) // 2])  # a writer killed mid-line
    report = store.read(path)
    assert len(report.results) == 1 and len(report.problems) == 1
    assert "truncated last line" in report.problems[0]
    message = store.repair(path)
    assert message and "truncated" in message
    assert path.read_text().endswith("\n") and store.read(path).problems == []
    assert (tmp_path / "r.jsonl.partial").exists()
    assert store.repair(path) is None


def test_csv_has_one_row_per_result_without_samples(tmp_path):
    results = [make(), make("loss=siglip", status="error", message="boom")]
    store.write_csv(tmp_path / "r.csv", results)
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 2
    assert rows[0]["stages.step.median"] == "0.02" and rows[0]["memory.param_bytes"] == "100"
    assert not any("samples" in column for column in rows[0])
    assert rows[1]["message"] == "boom"


def test_flatten_joins_keys_skips_and_encodes_lists_as_asked():
    row = {"a": 1, "m": {"x": 2, "samples": [1.0], "deep": {"y": None}}, "flags": ["p", "q"], "empty": {}}
    assert store.flatten(row) == {"a": 1, "m.x": 2, "m.deep.y": None, "flags": "p;q"}
    as_json = store.flatten(row, skip=("m",), encode_list=json.dumps)
    assert as_json == {"a": 1, "flags": '["p", "q"]'}
    # The accuracy rows use the JSON form and leave their curves out.
    from ablations.result import flatten as accuracy_flatten

    assert accuracy_flatten({"seed": 0, "loss_curve": [{"step": 1}], "classes": ["A", "B"]}) == {
        "seed": 0, "classes": '["A", "B"]'}
