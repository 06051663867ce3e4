"""Per-module parameter table of a CT-CLIP variant, without allocating its weights.

    python -m models.summary --variant faithful --size paper
    python -m models.summary --variant modern --set attention=sdpa --depth 3

The model is built on PyTorch's meta device (shapes only), so the paper-size model (284 M parameters)
prints in about a second and uses no memory for weights.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
from tabulate import tabulate
from torch import nn

from models.ctclip import CTCLIP
from models.variant import AXES, SIZES, Variant, get_size, parse_axis_value


@dataclass
class ModuleRow:
    name: str
    kind: str
    params: int
    buffers: int


def _count(module: nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in module.parameters())
    buffers = sum(b.numel() for _, b in module.named_buffers() if b is not None)
    return params, buffers


def module_rows(model: nn.Module, depth: int) -> list[ModuleRow]:
    rows = []
    for name, module in model.named_modules():
        level = 0 if not name else name.count(".") + 1
        if 0 < level <= depth:
            params, buffers = _count(module)
            if params or buffers:
                rows.append(ModuleRow(name, type(module).__name__, params, buffers))
    return rows


def component_totals(model: CTCLIP) -> dict[str, int]:
    """The headline counts that must equal upstream's at paper size (see tests/models/test_param_counts)."""
    visual = model.visual_encoder
    encoder_path = sum(_count(m)[0] for m in (visual.patch_embed, visual.position, visual.spatial, visual.temporal))
    return {
        "visual encoder path (patch embed + position + both transformers)": encoder_path,
        "image projection": _count(model.to_visual_latent)[0],
        "text projection": _count(model.to_text_latent)[0],
        "text trunk": _count(model.text_encoder)[0],
        "loss (temperature, bias)": sum(p.numel() for n, p in model.named_parameters(recurse=False)),
        "total parameters": _count(model)[0],
        "VQ codebook (buffer, not trained by gradients)": visual.vq.embed.numel() if visual.vq is not None else 0,
    }


def variant_from_args(name: str, settings: list[str]) -> Variant:
    if name not in ("faithful", "modern"):
        raise ValueError(f"unknown --variant {name!r}; use faithful or modern, then --set AXIS=VALUE to change axes")
    variant = Variant.faithful() if name == "faithful" else Variant.modern()
    changes = {}
    for setting in settings:
        axis, sep, value = setting.partition("=")
        if not sep:
            raise ValueError(f"--set expects AXIS=VALUE, got {setting!r}")
        changes[axis] = parse_axis_value(axis, value)
    return variant.replace(**changes)


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="faithful", help="faithful or modern (default: faithful)")
    parser.add_argument("--set", action="append", default=[], metavar="AXIS=VALUE",
                        help=f"change one axis; axes: {', '.join(AXES)}")
    parser.add_argument("--size", default="paper", help=f"one of {', '.join(SIZES)} (default: paper)")
    parser.add_argument("--depth", type=int, default=3, help="module nesting depth to show (default: 3)")
    args = parser.parse_args(argv)
    try:
        variant = variant_from_args(args.variant, args.set)
        size = get_size(args.size)
    except ValueError as err:
        parser.error(str(err))
    with torch.device("meta"):
        model = CTCLIP(variant, size)
    print(f"variant: {variant.key}   size: {size.name} ({size.notes})")
    rows = [(r.name, r.kind, f"{r.params:,}", f"{r.buffers:,}" if r.buffers else "")
            for r in module_rows(model, args.depth)]
    print(tabulate(rows, headers=["module", "type", "parameters", "buffers"], tablefmt="github", disable_numparse=True))
    print()
    print(tabulate([(k, f"{v:,}") for k, v in component_totals(model).items()], headers=["component", "count"],
                   tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
