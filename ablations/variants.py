"""Which variants a sweep trains: a bench design (bench.design.expand) or an explicit `--variants` list.

An explicit item is comma-separated: an optional base (`faithful`, the default, or `modern`) and any
AXIS=VALUE changes, e.g. `modern,loss=softmax` or `attention=sdpa,vq=off`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from models.variant import Variant, parse_axis_value


@dataclass(frozen=True)
class CellSpec:
    variant: Variant
    design: "str | None" = None
    baseline: bool = False


def parse_variant(text: str) -> Variant:
    base, changes = Variant.faithful(), {}
    for token in (t.strip() for t in text.split(",") if t.strip()):
        if token in ("faithful", "modern"):
            base = getattr(Variant, token)()
        elif "=" in token:
            axis, _, value = token.partition("=")
            changes[axis.strip()] = parse_axis_value(axis.strip(), value.strip())
        else:
            raise ValueError(f"variant item {token!r} in {text!r}: expected faithful, modern or AXIS=VALUE")
    return base.replace(**changes)


def cells_from_args(design: "str | None", variants: "Sequence[str] | None", only: Sequence[str] = (),
                    exclude: Sequence[str] = (), precision: "str | None" = None) -> list[CellSpec]:
    if design and variants:
        raise ValueError("give either --design or --variants, not both")
    if variants:
        parsed = [parse_variant(v) for v in variants]
        if precision:
            parsed = [v.replace(precision=parse_axis_value("precision", precision)) for v in parsed]
        unique = list({v.key: v for v in parsed}.values())
        return [CellSpec(v, None, i == 0) for i, v in enumerate(unique)]
    from bench.design import expand  # the bench's designs, so both halves of the paper run the same cells

    return [CellSpec(c.variant, c.design, c.baseline) for c in expand(design or "paper", only, exclude, precision)]
