"""configs/: each file is a valid config for the command its first line names, the cells and sizes it
asks for resolve, and the README points at every one of them (and at none that is missing)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from ablations.run import override_size
from ablations.variants import cells_from_args
from bench.config import load_config, parse_with_config
from bench.design import expand
from models import get_size

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
COMMAND = re.compile(r"^# python -m ([\w.]+) --config (configs/[\w.-]+\.yaml)")


def _command(path: Path) -> str:
    match = COMMAND.match(path.read_text().splitlines()[0])
    assert match, f"{path.name}: the first line must be the command that runs it"
    assert match.group(2) == f"configs/{path.name}"
    return match.group(1)


def test_there_are_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_for_its_command(path, capsys):
    module = importlib.import_module(_command(path))
    parser = module.build_parser()
    values = load_config(path, parser)  # raises ConfigError on an unknown key or a bad value
    if module.__name__ == "bench.run":
        assert module.main(["--config", str(path), "--list", "--device", "cpu"]) == 0
        n_cells = len(expand(values["design"], values.get("only", []), values.get("exclude", []),
                             values.get("precision")))
        assert f"design {values['design']}, {n_cells} cells" in capsys.readouterr().err
    elif module.__name__ == "bench.estimate":
        assert expand(values["design"], values.get("only", []), values.get("exclude", []), values.get("precision"))
        get_size(values["size"])
    elif module.__name__ == "ablations.run":
        extra = [] if "data" in values else ["--data", "CT-RATE"]  # a file may leave --data to the user
        args = parse_with_config(module.build_parser(), ["--config", str(path), *extra])
        cells = cells_from_args(args.design, args.variants, args.only, args.exclude, args.precision)
        assert cells and all(c.variant.precision == (args.precision or c.variant.precision) for c in cells)
        override_size(get_size(args.size), args.size_set, args.text_max_len)
    else:
        pytest.fail(f"{path.name}: no check for {module.__name__}")


def test_readme_names_every_config_and_no_missing_one():
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"configs/[\w.-]+\.yaml", readme))
    assert named == {f"configs/{p.name}" for p in CONFIGS}
