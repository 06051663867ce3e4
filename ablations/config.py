"""`--config FILE.yaml` for every ablations CLI: each key is a flag name (dashes or underscores), and
flags given on the command line override the file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence


def parse_with_config(parser: argparse.ArgumentParser, argv: "Sequence[str] | None" = None) -> argparse.Namespace:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file whose keys are any of these flags (command-line flags win)")
    # A separate parser finds --config first, so flags the file supplies are not reported missing.
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--config", type=Path, default=None)
    pre, _ = finder.parse_known_args(argv)
    if pre.config is not None:
        import yaml

        if not pre.config.exists():
            parser.error(f"--config {pre.config}: file not found")
        values = yaml.safe_load(pre.config.read_text()) or {}
        if not isinstance(values, dict):
            parser.error(f"--config {pre.config}: expected a mapping of flag names to values")
        known = {a.dest: a for a in parser._actions}
        defaults = {}
        for key, value in values.items():
            dest = str(key).replace("-", "_")
            if dest not in known or dest in ("help", "config"):
                parser.error(f"--config {pre.config}: unknown key {key!r}; valid keys: "
                             f"{', '.join(sorted(k for k in known if k not in ('help', 'config')))}")
            action = known[dest]
            if action.nargs in ("+", "*") and not isinstance(value, list):
                value = [value]
            if action.type is not None and value is not None and not isinstance(value, bool):
                value = [action.type(v) for v in value] if isinstance(value, list) else action.type(value)
            defaults[dest] = value
        parser.set_defaults(**defaults)
        # Required flags satisfied by the file must not be demanded again on the command line.
        for action in parser._actions:
            if action.dest in defaults:
                action.required = False
    return parser.parse_args(argv)
