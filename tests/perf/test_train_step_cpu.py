"""One training step per key variant at the tiny size (bench.step.TrainStep, as every matrix cell runs it).

Before timing, one step of a fresh model is checked against AdamW's first-step rule worked out here:
with bias-corrected moments m = g and v = g^2, every parameter moves by
-lr * (g / (|g| + eps) + weight_decay * p), so a step that skipped the backward or the update fails.
"""

from __future__ import annotations

import pytest
import torch

from bench.memory import SavedBytes
from bench.perf_gate import SAVED_KEY
from bench.step import TrainStep
from models import Variant, build, example_batch, supports
from tests.perf.helpers import CPU_ROUNDS, CPU_WARMUP_ROUNDS

VARIANTS = {
    "faithful": Variant.faithful(),
    "modern": Variant.modern(),
    "cpb_table": Variant.faithful().replace(position="cpb_table"),
    "rope": Variant.modern().replace(position="rope"),
}
BATCH = 2


def _fresh_step(variant: Variant) -> TrainStep:
    torch.manual_seed(0)
    return TrainStep(build(variant, "tiny"), example_batch("tiny", batch=BATCH))


def _check_first_adamw_step(step: TrainStep) -> None:
    group = step.optimizer.param_groups[0]
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    before = {n: p.detach().clone() for n, p in step.model.named_parameters()}
    loss = step()
    assert torch.isfinite(loss), loss
    moved = 0
    for name, p in step.model.named_parameters():
        if p.grad is None:
            torch.testing.assert_close(p.detach(), before[name], msg=f"{name} has no gradient but changed")
            continue
        g, old = p.grad, before[name]
        expected = -lr * (g / (g.abs() + eps) + wd * old)
        # fp32 rounds p + delta to the spacing of p: allow two ulps of p plus 5 % of the step.
        slack = 0.05 * lr + 2 * torch.finfo(old.dtype).eps * old.abs()
        worst = ((p.detach() - old) - expected).abs() - slack
        assert worst.max() <= 0, f"{name}: not an AdamW first step (off by {worst.max().item():.3g} beyond slack)"
        moved += int((g != 0).any())
    assert moved > 0.8 * sum(1 for _ in step.model.parameters()), "most parameters got no gradient"
    step.zero_grad()


@pytest.mark.parametrize("name", VARIANTS)
def test_train_step_tiny(benchmark, name):
    variant = VARIANTS[name]
    if reason := supports(variant, "cpu"):
        pytest.skip(reason)
    step = _fresh_step(variant)
    _check_first_adamw_step(step)
    with SavedBytes(step.resident()) as saved:
        step.forward()
    step.zero_grad()
    benchmark.extra_info.update({"variant": variant.key, "size": "tiny", "batch": BATCH, SAVED_KEY: saved.bytes})
    loss = benchmark.pedantic(step, setup=step.zero_grad, rounds=CPU_ROUNDS, warmup_rounds=CPU_WARMUP_ROUNDS)
    assert torch.isfinite(loss)
    assert saved.bytes > 0
