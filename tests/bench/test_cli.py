"""Flags and YAML configs: every flag readable from a file, and bad input fails before any cell runs."""

import pytest

from bench import run as bench_run
from bench.config import ConfigError, load_config


@pytest.fixture
def no_cells(monkeypatch):
    """Replace the sweep so a test fails if any cell would run; records the settings it was given."""
    calls = []

    def fake_sweep(cells, settings, path, done, **kw):
        calls.append((cells, settings, path, done))
        return []

    monkeypatch.setattr(bench_run, "run_sweep", fake_sweep)
    return calls


def _fails(argv, capsys, needle):
    with pytest.raises(SystemExit) as exc:
        bench_run.main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_yaml_config_supplies_flags_and_cli_overrides(tmp_path, no_cells, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("matrix: true\ndesign: ofat\nonly: {attention: [math, sdpa], loss: softmax}\nexclude: vq=off\n"
                   "repeats: 7\nwarmup-time: 0.5\nthreads: 1\nout: " + str(tmp_path / "res") + "\n")
    assert bench_run.main(["--config", str(cfg), "--repeats", "9", "--no-progress"]) == 0
    cells, settings, path, done = no_cells[0]
    assert {c.variant.attention for c in cells} == {"math", "sdpa"}
    assert all(c.variant.vq and c.variant.loss == "softmax" for c in cells)
    assert settings.timing["repeats"] == 9 and settings.timing["warmup_time_s"] == 0.5
    assert path.parent == tmp_path / "res" and settings.size == "tiny"
    assert "picked defaults size=tiny" in capsys.readouterr().err


@pytest.mark.parametrize("text, needle", [
    ("repeats: 5\ncolour: red\n", "unknown key 'colour'"),
    ("repeats: many\n", "key 'repeats'"),
    ("- just\n- a list\n", "must be a mapping"),
    ("design: [paper\n", "not valid YAML"),
    ("design: diagonal\n", "not one of"),
    ("only: {attention: {math: 1}}\n", "key 'only'"),
    ("only: [attention=math,sdpa]\n", "axis filter 'sdpa'"),
])
def test_malformed_configs_fail_before_any_cell(tmp_path, no_cells, capsys, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    _fails(["--matrix", "--config", str(cfg), "--out", str(tmp_path)], capsys, needle)
    assert no_cells == [] and not list(tmp_path.glob("*.jsonl"))


@pytest.mark.parametrize("argv, needle", [
    (["--only", "attention=flashy"], "invalid value 'flashy' for axis 'attention'"),
    (["--exclude", "colour=red"], "unknown axis 'colour'"),
    (["--only", "loss=hinge"], "valid values: softmax, siglip"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--device", "tpu"], "--device"),
])
def test_bad_flags_fail_before_any_cell(tmp_path, no_cells, capsys, argv, needle):
    _fails(["--matrix", "--out", str(tmp_path), *argv], capsys, needle)
    assert no_cells == []


def test_missing_config_file_and_no_action(tmp_path, capsys):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", bench_run.build_parser())
    _fails([], capsys, "nothing to do")


def test_help_works(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_run.main(["--help"])
    assert exc.value.code == 0 and "--matrix" in capsys.readouterr().out
