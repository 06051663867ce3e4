"""The optimizer axis: fused AdamW makes the foreach update, with less memory traffic."""

from __future__ import annotations

import torch

from ablations.schedule import build_optimizer
from bench.step import TrainStep
from models import Variant, build, example_batch
from models.optimizers import OPTIMIZERS


def _trained(variant: Variant, steps: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build(variant, "tiny")
    model.eval()  # no dropout: both runs see the same gradients
    step = TrainStep(model, example_batch("tiny", batch=2), lr=1e-3)
    for _ in range(steps):
        step()
        step.zero_grad()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_fused_adamw_updates_as_foreach_does():
    # One step from the same weights and gradients: the updates (lr 1e-3 at most per element) agree to
    # fp32 rounding. Later steps would start from weights a rounding apart, and parameters whose gradient
    # is pure rounding noise (BERT's key bias, which softmax cancels) would then diverge by up to lr.
    foreach = _trained(Variant.faithful(), steps=1)
    fused = _trained(Variant.faithful().replace(optimizer="adamw_fused"), steps=1)
    initial = _trained(Variant.faithful(), steps=0)
    assert max((foreach[n] - initial[n]).abs().max().item() for n in initial) > 5e-4  # the step moved them
    assert foreach.keys() == fused.keys()
    for name in foreach:
        torch.testing.assert_close(fused[name], foreach[name], rtol=1e-6, atol=1e-7, msg=name)


def test_trainers_build_the_variants_optimizer():
    model = build(Variant.modern().replace(optimizer="adamw_fused"), "tiny")
    assert build_optimizer(model, 1e-3).defaults["fused"] is True
    assert TrainStep(model, example_batch("tiny", batch=2)).optimizer.defaults["fused"] is True
    assert not build_optimizer(build(Variant.modern(), "tiny"), 1e-3).defaults["fused"]


def test_fused_supports_names_the_devices_it_lacks():
    variant = Variant().replace(optimizer="adamw_fused")
    assert OPTIMIZERS.supports("adamw_fused", variant, "cpu") is None
    assert "not meta" in OPTIMIZERS.supports("adamw_fused", variant, "meta")
