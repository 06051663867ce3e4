"""configs/: each file is a valid config for the command its first line names, the cells and sizes it
asks for resolve, and the README points at every one of them (and at none that is missing); and every
bench and ablations command reads --config (DESIGN.md: every flag also readable from a YAML file)."""

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


def _design_cells(values: dict) -> list:
    """The cells a bench.run or bench.estimate config asks for, as bench.design expands them."""
    return expand(values["design"], values.get("only", []), values.get("exclude", []), values.get("precision"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_for_its_command(path, capsys, tmp_path):
    module = importlib.import_module(_command(path))
    parser = module.build_parser()
    values = load_config(path, parser)  # raises ConfigError on an unknown key or a bad value
    if module.__name__ == "bench.run":
        assert module.main(["--config", str(path), "--list", "--device", "cpu"]) == 0
        n_cells = len(_design_cells(values))
        assert f"design {values['design']}, {n_cells} cells" in capsys.readouterr().err
    elif module.__name__ == "bench.estimate":
        assert _design_cells(values)
        get_size(values["size"])
    elif module.__name__ == "ablations.run":
        extra = [] if "data" in values else ["--data", "CT-RATE"]  # a file may leave --data to the user
        args = parse_with_config(module.build_parser(), ["--config", str(path), *extra])
        cells = cells_from_args(args.design, args.variants, args.only, args.exclude, args.precision)
        assert cells and all(c.variant.precision == (args.precision or c.variant.precision) for c in cells)
        override_size(get_size(args.size), args.size_set, args.text_max_len)
    elif module.__name__ == "ablations.data.synthetic":
        assert any(f"data: {values['out']}" in c.read_text() for c in CONFIGS)  # some run reads them
        out = tmp_path / "phantoms"  # the file's flags, three volumes of them
        assert module.main(["--config", str(path), "--n", "3", "--workers", "1", "--out", str(out)]) == 0
        assert len(list((out / "dataset").rglob("*.nii.gz"))) == 3
    else:
        pytest.fail(f"{path.name}: no check for {module.__name__}")


def test_readme_names_every_config_and_no_missing_one():
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"configs/[\w.-]+\.yaml", readme))
    assert named == {f"configs/{p.name}" for p in CONFIGS}


# gpu_check computes their arguments
HELPERS = {"bench.config", "bench.gpu_estimates", "bench.gpu_probe", "bench.pytest_table"}
COMMANDS = sorted(
    ".".join(f.relative_to(ROOT).with_suffix("").parts)
    for package in ("bench", "ablations") for f in (ROOT / package).rglob("*.py")
    if "argparse.ArgumentParser(" in f.read_text()
)


def _bad_config(tmp_path: Path) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text("no-such-flag: 1\n")
    return str(path)


@pytest.mark.parametrize("name", [c for c in COMMANDS if c not in HELPERS])
def test_every_bench_and_ablations_command_takes_a_config(name, capsys, tmp_path):
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as exc:  # a key the command does not have: refused, naming the file
        module.main(["--config", _bad_config(tmp_path)])
    assert exc.value.code == 2 and "unknown key 'no-such-flag'" in capsys.readouterr().err
