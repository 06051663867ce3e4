"""Design expansion: paper, ofat, loo, full, targets, and the --only/--exclude/--precision filters."""

import pytest

from bench.design import expand, fastest_candidate, parse_axis_spec, target_ladder
from bench.gpu_plan import target_variants
from models import AXES, Variant


def test_paper_is_faithful_and_modern_times_both_losses():
    cells = expand("paper")
    got = {(c.variant.replace(loss="softmax"), c.variant.loss) for c in cells}
    assert got == {(Variant.faithful(), "softmax"), (Variant.faithful(), "siglip"),
                   (Variant.modern().replace(loss="softmax"), "softmax"),
                   (Variant.modern().replace(loss="softmax"), "siglip")}
    assert [c.baseline for c in cells] == [True, False, False, False]
    assert cells[0].variant == Variant.faithful()


def test_ofat_covers_every_value_of_every_axis_with_single_changes():
    cells = expand("ofat")
    assert cells[0].variant == Variant.faithful() and cells[0].baseline
    for axis, values in AXES.items():
        assert {getattr(c.variant, axis) for c in cells} == set(values), axis
    assert all(len(c.variant.changed_axes()) <= 1 for c in cells)
    assert len(cells) == 1 + sum(len(v) - 1 for v in AXES.values())


def test_loo_reverts_one_modern_switch_at_a_time():
    cells = expand("loo")
    modern, faithful = Variant.modern(), Variant.faithful()
    assert cells[0].variant == modern
    changed = [c.variant.changed_axes(modern) for c in cells[1:]]
    assert all(len(ch) == 1 for ch in changed)
    assert {next(iter(ch)) for ch in changed} == set(modern.changed_axes(faithful))
    # Reverting position gives cpb under sdpa_flash: kept, so it can be recorded unsupported.
    assert modern.replace(position="cpb") in [c.variant for c in cells]


def test_full_is_the_product_of_only_values():
    cells = expand("full", only=["attention=math,sdpa", "mlp=geglu,swiglu", "precision=bf16"])
    assert len(cells) == 4
    assert {(c.variant.attention, c.variant.mlp) for c in cells} == {
        ("math", "geglu"), ("math", "swiglu"), ("sdpa", "geglu"), ("sdpa", "swiglu")}
    assert all(c.variant.precision == "bf16" and c.variant.norm == "layernorm" for c in cells)
    assert len(expand("full", only=["attention=math,sdpa"], exclude=["attention=sdpa"])) == 1


def test_targets_is_a_one_switch_ladder_to_the_fastest_plus_the_candidates():
    cells = expand("targets", precision="bf16")
    variants = [c.variant for c in cells]
    assert cells[0].baseline and variants[0] == Variant.faithful().replace(precision="bf16")
    assert variants[1] == Variant.modern().replace(precision="bf16")
    ladder = [v.replace(precision="bf16") for v in target_ladder()]
    assert variants[2:2 + len(ladder)] == ladder
    assert ladder[-1] == fastest_candidate().replace(precision="bf16")
    assert all(len(b.changed_axes(a)) == 1 for a, b in zip(ladder, ladder[1:]))
    # Every candidate keeps a position signal (the condition on the targets).
    assert all(v.position in ("rope", "cpb_table") for v in variants[2:])
    # What the GPU check measures as targets is what this design estimates.
    assert set(target_variants(dry_run=False)) <= set(variants)
    assert len({c.key for c in cells}) == len(cells)


def test_filters_and_precision_override():
    assert {c.variant.loss for c in expand("paper", only=["loss=siglip"])} == {"siglip"}
    assert all(c.variant.attention != "sdpa_flash" for c in expand("paper", exclude=["attention=sdpa_flash"]))
    assert all(c.variant.precision == "bf16" for c in expand("paper", precision="bf16"))
    assert parse_axis_spec("vq=off") == ("vq", (False,))


@pytest.mark.parametrize("spec, needle", [
    ("attention=flashy", "attention"), ("colour=red", "unknown axis"), ("attention", "AXIS=V1,V2"),
    ("loss=", "no values"),
])
def test_bad_filters_name_the_problem(spec, needle):
    with pytest.raises(ValueError, match=needle):
        expand("paper", only=[spec])


def test_unknown_design():
    with pytest.raises(ValueError, match="unknown design"):
        expand("fractional")
