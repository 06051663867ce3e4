"""bench.gpu_dispatch: the fake step follows a GPU's kernel for BERT's attention with dropout (one fused
SDPA kernel), not the CPU build's fp32 math path, and only where asked."""

from __future__ import annotations

import pytest

from bench.estimate import estimate_variant, fake_training_step
from bench.gpu_dispatch import fuse_attention_dropout
from models import SIZES, Variant, build
from tests.kernels.oplog import OpLog

FLASH_CPU = "aten._scaled_dot_product_flash_attention_for_cpu"


def test_only_the_attention_probability_dropout_is_set_to_zero():
    size = SIZES["tiny"]
    assert size.text_dropout > 0  # otherwise this test shows nothing
    model = build(Variant.faithful(), size)
    attention = [m for m in model.text_encoder.modules() if type(m).__name__ == "BertSelfAttention"]
    hidden = [m.dropout.p for m in model.text_encoder.modules() if type(m).__name__ == "BertSelfOutput"]
    assert fuse_attention_dropout(model) == len(attention) > 0
    assert all(m.dropout.p == 0.0 for m in attention)
    assert hidden and all(p == size.text_dropout for p in hidden)  # the residual-branch dropout stays
    assert fuse_attention_dropout(model) == 0


def _ops(kernels: str) -> list[str]:
    mode, step = fake_training_step(Variant.faithful(), SIZES["tiny"], 2, kernels)
    log = OpLog()
    with mode, log:
        step.backward(step.forward())
    return log.names


def test_gpu_choice_runs_bert_attention_as_one_fused_kernel():
    gpu, cpu = _ops("gpu"), _ops("cpu")
    layers = SIZES["tiny"].text_layers
    # The CPU build sends attention with dropout to the math path: a dropout mask per layer, no flash.
    assert cpu.count(FLASH_CPU) == 0 and cpu.count("aten.bernoulli_") >= layers
    assert gpu.count(FLASH_CPU) == layers and gpu.count(FLASH_CPU + "_backward") == layers
    # Only the hidden-state dropouts remain: two per layer and the embeddings'.
    assert gpu.count("aten.bernoulli_") == cpu.count("aten.bernoulli_") - layers


def test_estimates_differ_by_bert_attention_only():
    variant = Variant.faithful()
    gpu = estimate_variant(variant, SIZES["tiny"], 2, kernels="gpu")
    cpu = estimate_variant(variant, SIZES["tiny"], 2, kernels="cpu")
    for key in ("param_bytes", "grad_bytes", "optimizer_state_bytes"):
        assert gpu["memory"][key] == cpu["memory"][key]
    # The math path saves (B, heads, N, N) fp32 scores, probabilities and a dropout mask per layer.
    assert gpu["memory"]["saved_activations_bytes"] < cpu["memory"]["saved_activations_bytes"]
    assert gpu["roofline"]["step_s"] < cpu["roofline"]["step_s"]
    with pytest.raises(ValueError, match="kernels"):
        fake_training_step(variant, SIZES["tiny"], 2, "tpu")
