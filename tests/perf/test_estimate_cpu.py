"""The dry-run estimator (bench.estimate, FakeTensorMode) timed at the tiny size, with its memory
terms checked against figures computed here from a real model: parameter bytes from numel x itemsize,
AdamW's two fp32 moments per parameter (plus one step counter each), gradients the size of the weights."""

from __future__ import annotations

import torch

from bench.estimate import estimate_variant
from models import SIZES, Variant, build
from tests.perf.helpers import CPU_ROUNDS, CPU_WARMUP_ROUNDS

BATCH = 2


def test_estimate_faithful_tiny(benchmark):
    size = SIZES["tiny"]
    out = benchmark.pedantic(estimate_variant, args=(Variant.faithful(), size, BATCH), rounds=CPU_ROUNDS,
                             warmup_rounds=CPU_WARMUP_ROUNDS)
    memory = out["memory"]
    real = build(Variant.faithful(), size)
    params = list(real.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = [p for p in params if p.requires_grad]
    assert memory["param_bytes"] == weights
    assert memory["grad_bytes"] == sum(p.numel() * p.element_size() for p in trainable)
    steps = sum(torch.zeros(()).element_size() for _ in trainable)  # AdamW keeps a scalar step per tensor
    assert memory["optimizer_state_bytes"] == 2 * memory["grad_bytes"] + steps
    # At tiny size the optimizer step sets the peak: weights, gradients and both moments live at once.
    resident = memory["param_bytes"] + memory["grad_bytes"] + memory["optimizer_state_bytes"]
    assert memory["predicted_peak_bytes"] >= resident
    assert memory["saved_activations_bytes"] > 0 and memory["largest_transient_bytes"] > 0
    assert out["flops"]["backward"] > out["flops"]["forward"] > 0
    benchmark.extra_info.update({"variant": "faithful", "size": "tiny", "batch": BATCH,
                                 "predicted_peak_bytes": memory["predicted_peak_bytes"],
                                 "saved_for_backward_bytes": memory["saved_activations_bytes"]})
