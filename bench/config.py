"""Every command-line flag can also come from a YAML file (`--config FILE`); explicit flags win.

Used by every bench and ablations command a user runs (not by gpu_check's helpers gpu_probe and
pytest_table, whose arguments it computes, nor by the reports, models and kernels tools: those packages
do not import bench); `configs/` holds the runs the README reports. The YAML file is a mapping from flag
names (`repeats`, `warmup-time` or `warmup_time`, `matrix: true`) to values. Repeatable and multi-value
flags (`only`, `variants`, `seed-list`) take one value, a list, or for `only`/`exclude` a mapping
`{attention: [math, sdpa], vq: off}`. Beware YAML flow lists: `[attention=math,sdpa]` is two items.
Unknown keys, values of the wrong type or outside a flag's choices, and files that are not a mapping are
rejected before anything runs, with a message naming the key and the file. A required flag the file
supplies need not be given again on the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A user-caused configuration problem; the message says what and where."""


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}


def _word(value: Any) -> str:
    # YAML reads on/off/yes/no as booleans; the axes spell them on/off.
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _item(action: argparse.Action, value: Any, where: str) -> Any:
    """One value as argparse would have it from the command line: typed, then checked against choices."""
    # YAML reads 16, 1.5, on and dates as non-strings; argparse's types and choices see the word a user
    # would have typed, so `steps: 1.5` fails as `--steps 1.5` does instead of int(1.5) quietly giving 1.
    word = _word(value)
    try:
        converted = action.type(word) if action.type is not None else word
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {value!r} is not a valid {getattr(action.type, '__name__', 'value')} ({exc})")
    if action.choices is not None and converted not in action.choices:
        raise ConfigError(f"{where}: {converted!r} is not one of {', '.join(map(str, action.choices))}")
    return converted


def _items(action: argparse.Action, value: Any, where: str) -> list[Any]:
    """A repeatable (`--only A --only B`) or multi-value (`--variants A B`) flag's list of values."""
    if isinstance(value, dict):  # `only: {attention: [math, sdpa]}` -> ["attention=math,sdpa"]
        values = []
        for axis, vals in value.items():
            vals = vals if isinstance(vals, list) else [vals]
            if not all(isinstance(v, (str, int, float, bool)) for v in vals):
                raise ConfigError(f"{where}: values of {axis!r} must be strings, got {vals!r}")
            values.append(f"{axis}=" + ",".join(_word(v) for v in vals))
    else:
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise ConfigError(f"{where} must be a value or a list of values, got {value!r}")
    if action.nargs == "+" and not values:
        raise ConfigError(f"{where} needs at least one value")
    return [_item(action, v, where) for v in values]


def _coerce(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    where = f"{source}: key {key!r}"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*"):
        return _items(action, value, where)
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where} must be a single value, got {value!r}")
    if action.nargs == "?" and isinstance(value, bool):  # `resume: true` is the bare flag
        return action.const if value else None
    return _item(action, value, where)


def load_config(path: str | Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Parse and validate a YAML config into {dest: value} for `parser.set_defaults`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of flag names to values, got {type(data).__name__}")
    actions = _actions(parser)
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in actions:
            valid = ", ".join(sorted(d.replace("_", "-") for d in actions))
            raise ConfigError(f"{path}: unknown key {raw_key!r}; valid keys: {valid}")
        out[key] = _coerce(actions[key], str(raw_key), value, str(path))
    return out


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse argv, letting `--config FILE` supply defaults that explicit flags override.

    The parser gets its `--config` flag here, so every command that parses this way offers it."""
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="YAML file whose keys are these flags (explicit flags win); see configs/")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            values = load_config(known.config, parser)
        except ConfigError as exc:
            parser.error(str(exc))
        parser.set_defaults(**values)
        for action in parser._actions:  # a required flag the file supplies is not demanded again
            if action.dest in values:
                action.required = False
    return parser.parse_args(argv)
