"""bench.recompute: the FLOPs checkpointing reruns, so MFU counts model FLOPs (PaLM) and HFU all of them.

The independent reference is the same model without checkpointing: its step executes exactly the model's
FLOPs, so a checkpointed step's executed FLOPs less the counted recomputation must equal them exactly.
"""

import functools

import pytest
import torch
from torch.utils.checkpoint import noop_context_fn

from bench.cell import _accounting_step
from bench.estimate import estimate_variant
from bench.flops import model_flops
from bench.recompute import counting_recomputation
from bench.step import TrainStep
from models import SIZES, Variant, build, example_batch


def accounting_flops(variant: Variant) -> dict:
    torch.manual_seed(0)
    step = TrainStep(build(variant, "tiny"), example_batch("tiny", batch=2))
    return _accounting_step(step)[1]


@pytest.mark.parametrize("variant", [Variant.faithful(), Variant.modern().replace(attention="math")],
                         ids=lambda v: v.key)
def test_model_flops_of_a_checkpointed_step_equal_the_plain_steps(variant):
    plain = accounting_flops(variant)
    checkpointed = accounting_flops(variant.replace(checkpointing=True))
    assert plain["recomputed"] == 0 and model_flops(plain) == plain["total"]
    assert checkpointed["forward"] == plain["forward"]  # the forward pass never recomputes
    # Every checkpointed region (patch embedding, both transformer stages, BERT's layers) reruns part of
    # its forward in backward; all of it is counted, so the difference is exact.
    assert checkpointed["recomputed"] > 0.1 * plain["forward"]
    assert checkpointed["total"] == plain["total"] + checkpointed["recomputed"]
    assert model_flops(checkpointed) == plain["total"]


def test_the_no_op_context_is_restored_after_counting():
    model = build(Variant.faithful().replace(checkpointing=True), "tiny")
    holders = [m for m in model.modules() if hasattr(m, "checkpoint_context_fn")]
    assert len(holders) == 3  # CT-ViT (patch embedding) and its two transformer stages
    with counting_recomputation(model) as recomputed:
        assert all(h.checkpoint_context_fn == recomputed.context_fn for h in holders)
    assert all(h.checkpoint_context_fn is noop_context_fn for h in holders)
    # transformers binds its checkpoint function per layer (a partial of torch's): the no-op is back too.
    bound = [m._gradient_checkpointing_func for m in model.text_encoder.modules()
             if isinstance(getattr(m, "_gradient_checkpointing_func", None), functools.partial)]
    assert bound and all("context_fn" not in f.keywords for f in bound)


def test_estimate_counts_the_recomputation_and_bounds_mfu_on_model_flops():
    size = SIZES["tiny"]
    plain = estimate_variant(Variant.faithful().replace(precision="bf16"), size, batch=2)
    checkpointed = estimate_variant(Variant.faithful().replace(precision="bf16", checkpointing=True), size,
                                    batch=2)
    assert checkpointed["flops"]["recomputed"] > 0 and plain["flops"]["recomputed"] == 0
    assert model_flops(checkpointed["flops"]) == plain["flops"]["total"]
    roof = checkpointed["roofline"]
    peak = roof["peak_tflops"]["bf16"] * 1e12
    assert roof["mfu_bound"] == pytest.approx(plain["flops"]["total"] / roof["step_s"] / peak)
    # The bound's own FLOPs are what runs, recomputation included.
    assert roof["flops"] == pytest.approx(checkpointed["flops"]["total"])
    # On fake tensors under the CPU build's dispatch, every count equals the real step's.
    variant = Variant.faithful().replace(checkpointing=True)
    assert estimate_variant(variant, size, batch=2, dispatch="cpu")["flops"] == accounting_flops(variant)
