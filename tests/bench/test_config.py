"""bench.config on a parser with every kind of flag the CLIs use: each YAML value becomes what argparse
would have made of the same flags on the command line, and a bad one is refused with its key named."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.config import ConfigError, load_config, parse_with_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--variants", nargs="+", default=None)
    p.add_argument("--seed-list", type=int, nargs="*", default=None)
    p.add_argument("--protocols", nargs="+", choices=["ctclip", "clean"], default=["ctclip"])
    p.add_argument("--only", action="append", default=[])
    p.add_argument("--size-set", nargs="*", default=[])
    p.add_argument("--resume", nargs="?", const="latest", default=None)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--quiet", action="store_true")
    return p


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_values_match_the_same_flags_on_the_command_line(tmp_path):
    cfg = _config(tmp_path, "data: d\nvariants: [faithful, 'modern,loss=softmax']\nseed-list: [0, 2]\n"
                            "protocols: clean\nonly: {vq: off, attention: [math, sdpa]}\nsize-set: text_dropout=0\n"
                            "resume: true\nlr: 1.0e-4\nquiet: true\n")
    from_file = parse_with_config(_parser(), ["--config", cfg])
    from_flags = _parser().parse_args(["--data", "d", "--variants", "faithful", "modern,loss=softmax",
                                       "--seed-list", "0", "2", "--protocols", "clean", "--only", "vq=off",
                                       "--only", "attention=math,sdpa", "--size-set", "text_dropout=0",
                                       "--resume", "--lr", "1e-4", "--quiet"])
    assert vars(from_file) == dict(vars(from_flags), config=cfg)  # parse_with_config adds --config
    assert from_file.seed_list == [0, 2] and from_file.data == Path("d") and from_file.resume == "latest"


def test_the_command_line_wins_and_a_required_flag_may_come_from_the_file(tmp_path):
    cfg = _config(tmp_path, "data: from-file\nseed-list: [1]\n")
    args = parse_with_config(_parser(), ["--config", cfg, "--seed-list", "3", "4"])
    assert args.data == Path("from-file") and args.seed_list == [3, 4]
    args = parse_with_config(_parser(), ["--config", cfg, "--data", "from-flag"])
    assert args.data == Path("from-flag")


def test_a_yaml_number_or_date_is_the_word_written_as_on_the_command_line(tmp_path):
    cfg = _config(tmp_path, "data: d\nout: 2026-11-29\nsteps: 16\nsize-set: [7]\n")
    from_file = parse_with_config(_parser(), ["--config", cfg])
    from_flags = _parser().parse_args(["--data", "d", "--out", "2026-11-29", "--steps", "16", "--size-set", "7"])
    assert vars(from_file) == dict(vars(from_flags), config=cfg)
    assert from_file.out == "2026-11-29" and from_file.steps == 16


@pytest.mark.parametrize("text, needle", [
    ("protocols: [ctclip, roc]\n", "'roc' is not one of ctclip, clean"),
    ("seed-list: [0, one]\n", "key 'seed-list': 'one' is not a valid int"),
    ("variants: []\n", "key 'variants' needs at least one value"),
    ("variants: [{a: 1}]\n", "key 'variants' must be a value or a list of values"),
    ("lr: [1, 2]\n", "key 'lr' must be a single value"),
    ("steps: 1.5\n", "key 'steps': 1.5 is not a valid int"),
    ("quiet: yes please\n", "key 'quiet' must be true or false"),
])
def test_bad_values_name_their_key(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_config(_config(tmp_path, text), _parser())


def test_a_required_flag_missing_from_both_is_still_demanded(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_with_config(_parser(), ["--config", _config(tmp_path, "lr: 0.1\n")])
    assert "--data" in capsys.readouterr().err
