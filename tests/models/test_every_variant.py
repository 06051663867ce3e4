"""Every value of every axis either trains one step at `tiny` on this CPU or says why it cannot."""

import pytest
import torch

from models import AXES, SIZES, Variant, build, example_batch, supports


def _single_switch_variants() -> list[Variant]:
    variants = [Variant.faithful(), Variant.modern()]
    for axis, values in AXES.items():
        for value in values[1:]:
            variant = Variant().replace(**{axis: value})
            # Flash kernels cannot take the faithful learned bias; pair them with no bias as well.
            variants.append(variant)
            if axis == "attention":
                variants.append(variant.replace(position="none"))
    return variants


def _train_one_step(variant: Variant) -> None:
    model = build(variant, "tiny").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model(*example_batch("tiny"))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    optimizer.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p.detach())]
    assert not unchanged, f"parameters the optimizer did not move: {unchanged[:5]}"


@pytest.mark.parametrize("variant", _single_switch_variants(), ids=lambda v: v.key)
def test_variant_trains_or_reports_unsupported(variant):
    reason = supports(variant, "cpu")
    if reason is None:
        _train_one_step(variant)
        return
    assert isinstance(reason, str) and len(reason) > 10
    with pytest.raises(ValueError, match="cannot run on cpu"):
        build(variant, "tiny")


def test_cpu_runs_the_faithful_and_modern_rows():
    assert supports(Variant.faithful(), "cpu") is None
    assert supports(Variant.modern(), "cpu") is None
    # The tiny size really is tiny: one step must stay cheap for CI.
    assert SIZES["tiny"].grid == (3, 5, 5)
