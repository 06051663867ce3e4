"""Matrix designs: which variants a sweep runs.

- `paper`: the seed's four rows, SA+GEGLU+LN (`Variant.faithful()`) and FA+SwiGLU+RMSNorm
  (`Variant.modern()`), each with the softmax and the SigLIP loss. Baseline: faithful + softmax.
- `ofat`: one factor at a time: the faithful baseline plus every single-axis change from it (every
  value of every axis).
- `loo`: leave one out: `Variant.modern()` plus, for each axis where modern differs from faithful, modern
  with that axis set back to its faithful value. Reverting `position` gives cpb with sdpa_flash, which
  the flash kernel cannot take: that cell is recorded `unsupported`, a correct outcome.
- `full`: the product of the values chosen with `--only AXIS=V1,V2`; axes not named stay at their
  faithful value (the full product of every axis would be ~37k cells).
- `targets`: the faithful baseline, `Variant.modern()`, and the candidates for the GPU targets, which
  keep a position signal (RoPE or the cached bias table): a ladder that adds one switch at a time up to
  the fastest candidate, the leanest (the fastest, checkpointed), and one without Triton that keeps
  CT-CLIP's learned bias. The README's roofline table is this design estimated at paper size in bf16.

Filters: `--only AXIS=V1,V2` keeps cells whose axis value is one of those (for `full` it defines the
product); `--exclude AXIS=V` drops cells with that value; `--precision P` sets the precision of every
cell. Every name and value is validated before anything runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable

from models.variant import AXES, Variant, parse_axis_value

DESIGNS = ("paper", "ofat", "loo", "full", "targets")


@dataclass(frozen=True)
class Cell:
    variant: Variant
    design: str
    baseline: bool = False

    @property
    def key(self) -> str:
        return self.variant.key


def parse_axis_spec(spec: str) -> tuple[str, tuple[Any, ...]]:
    """'attention=math,sdpa' -> ('attention', ('math', 'sdpa')); a bad axis or value raises ValueError."""
    if "=" not in spec:
        raise ValueError(f"axis filter {spec!r} must look like AXIS=V1,V2 (axes: {', '.join(AXES)})")
    axis, _, values = spec.partition("=")
    axis = axis.strip()
    texts = [v.strip() for v in values.split(",") if v.strip()]
    if not texts:
        raise ValueError(f"axis filter {spec!r} names no values")
    return axis, tuple(parse_axis_value(axis, t) for t in texts)


def _merge(specs: Iterable[str]) -> dict[str, tuple[Any, ...]]:
    merged: dict[str, list[Any]] = {}
    for spec in specs:
        axis, values = parse_axis_spec(spec)
        merged.setdefault(axis, [])
        merged[axis] += [v for v in values if v not in merged[axis]]
    return {axis: tuple(values) for axis, values in merged.items()}


def _paper() -> list[Cell]:
    faithful, modern = Variant.faithful(), Variant.modern()
    return [
        Cell(faithful.replace(loss="softmax"), "paper", baseline=True),
        Cell(faithful.replace(loss="siglip"), "paper"),
        Cell(modern.replace(loss="softmax"), "paper"),
        Cell(modern.replace(loss="siglip"), "paper"),
    ]


def _ofat() -> list[Cell]:
    base = Variant.faithful()
    cells = [Cell(base, "ofat", baseline=True)]
    for axis, values in AXES.items():
        for value in values:
            if value != getattr(base, axis):
                cells.append(Cell(base.replace(**{axis: value}), "ofat"))
    return cells


def _loo() -> list[Cell]:
    modern, faithful = Variant.modern(), Variant.faithful()
    cells = [Cell(modern, "loo", baseline=True)]
    for axis in AXES:
        if getattr(modern, axis) != getattr(faithful, axis):
            cells.append(Cell(modern.replace(**{axis: getattr(faithful, axis)}), "loo"))
    return cells


def target_ladder() -> list[Variant]:
    """From the seed's modern row with RoPE, the Triton norm and SwiGLU and the one-hot-free VQ, one switch
    added per step; the last is the fastest candidate."""
    ladder = [Variant.modern().replace(position="rope", norm="rmsnorm_triton", mlp="swiglu_triton",
                                       vq_impl="chunked")]
    for step in ({"optimizer": "adamw_fused"}, {"qk_norm": "triton"}, {"vq_impl": "triton"},
                 {"norm": "add_rmsnorm_triton"}, {"projection": "triton"}, {"peg_impl": "triton"},
                 {"patch_embed": "triton"}, {"residual": "autocast"}, {"mlp": "swiglu_gemm"}):
        ladder.append(ladder[-1].replace(**step))
    return ladder


def fastest_candidate() -> Variant:
    return target_ladder()[-1]


def leanest_candidate() -> Variant:
    return fastest_candidate().replace(checkpointing=True)


def learned_bias_candidate() -> Variant:
    """Without Triton, keeping CT-CLIP's learned position bias (through the memory-efficient kernel)."""
    return Variant.modern().replace(attention="sdpa_efficient", position="cpb_table", vq_impl="chunked")


def _targets() -> list[Cell]:
    variants = [Variant.modern(), *target_ladder(), leanest_candidate(), learned_bias_candidate()]
    return [Cell(Variant.faithful(), "targets", baseline=True)] + [Cell(v, "targets") for v in variants]


def _full(only: dict[str, tuple[Any, ...]]) -> list[Cell]:
    base = Variant.faithful()
    axes = list(AXES)
    choices = [only.get(axis, (getattr(base, axis),)) for axis in axes]
    cells = [Cell(Variant(**dict(zip(axes, combo))), "full") for combo in itertools.product(*choices)]
    # The baseline is the cell closest to faithful: the first of the product, since every axis lists
    # its faithful value first when it is chosen.
    return [Cell(cells[0].variant, "full", baseline=True)] + cells[1:] if cells else cells


def expand(design: str, only: Iterable[str] = (), exclude: Iterable[str] = (),
           precision: str | None = None) -> list[Cell]:
    """The cells of `design` after filters, deduplicated by variant key, in design order."""
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; valid designs: {', '.join(DESIGNS)}")
    only_map, exclude_map = _merge(only), _merge(exclude)
    if precision is not None:
        precision = parse_axis_value("precision", precision)
    if design == "full":
        if precision is not None:
            only_map["precision"] = (precision,)
        cells = _full(only_map)
    else:
        cells = {"paper": _paper, "ofat": _ofat, "loo": _loo, "targets": _targets}[design]()
        if precision is not None:
            cells = [Cell(c.variant.replace(precision=precision), c.design, c.baseline) for c in cells]
        cells = [c for c in cells if all(getattr(c.variant, a) in vals for a, vals in only_map.items())]
    cells = [c for c in cells if not any(getattr(c.variant, a) in vals for a, vals in exclude_map.items())]
    seen: set[str] = set()
    unique = []
    for cell in cells:
        if cell.key not in seen:
            seen.add(cell.key)
            unique.append(cell)
    return unique
