"""The model with the Triton switches matches the model with the PyTorch switches (same weights), on a
tiny forward and backward: loss and every parameter gradient."""

from __future__ import annotations

import pytest
import torch

from kernels import TritonAddRMSNorm, TritonGEGLU, TritonRMSNorm, TritonSwiGLU, supports
from tests.kernels.accuracy import assert_fa_rule

models = pytest.importorskip("models")
from models.transformer import Layer  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))


def loss_and_grads(model: torch.nn.Module, batch) -> "tuple[torch.Tensor, dict[str, torch.Tensor]]":
    model.train()
    torch.manual_seed(0)  # the same dropout masks in both models
    out = model(*batch)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mlp, module", [("swiglu", TritonSwiGLU), ("geglu", TritonGEGLU)])
def test_triton_switches_match_pytorch_switches(mlp, module):
    pytorch_variant = models.Variant().replace(norm="rmsnorm", mlp=mlp)
    triton_variant = models.Variant().replace(norm="rmsnorm_triton", mlp=f"{mlp}_triton")
    reference = models.build(pytorch_variant, "tiny", device=DEVICE)
    model = models.build(triton_variant, "tiny", device=DEVICE)
    model.load_state_dict(reference.state_dict())

    # The switches really put the kernels in: every block norm and every activation.
    kinds = [type(m) for m in model.modules()]
    assert kinds.count(TritonRMSNorm) >= 3 and kinds.count(module) >= 2
    assert torch.nn.RMSNorm not in kinds

    batch = models.example_batch("tiny", device=DEVICE)
    loss_ref, grads_ref = loss_and_grads(reference, batch)
    loss, grads = loss_and_grads(model, batch)
    assert_same_training_signal(loss, grads, loss_ref, grads_ref)


@pytest.mark.parametrize("precision, peg_impl", [("fp32", "conv3d"), ("bf16", "conv3d"), ("fp32", "triton"),
                                                ("bf16", "triton")])
def test_fused_residual_add_matches_the_unfused_triton_norm(precision, peg_impl, monkeypatch):
    # The same computation with the adds moved into the norms' kernel (and, with the Triton PEG, each
    # layer's last add into the next layer's PEG kernel), so the same loss and gradients; in bf16 (a bf16
    # residual stream under the CPU's autocast) the kernels round as the unfused stores do.
    reference_variant = models.Variant.modern().replace(norm="rmsnorm_triton", attention="math",
                                                        precision=precision, peg_impl=peg_impl)
    reference = models.build(reference_variant, "tiny", device=DEVICE)
    model = models.build(reference_variant.replace(norm="add_rmsnorm_triton"), "tiny", device=DEVICE)
    model.load_state_dict(reference.state_dict())
    layers = [m for m in model.modules() if isinstance(m, Layer)]
    assert layers and all(layer.fused_add_norm for layer in layers)
    assert sum(isinstance(m, TritonAddRMSNorm) for m in model.modules()) == 2 * len(layers) + 2

    batch = models.example_batch("tiny", device=DEVICE)
    calls = []
    original = TritonAddRMSNorm.add_and_norm
    monkeypatch.setattr(TritonAddRMSNorm, "add_and_norm",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    peg_adds = []
    from kernels import peg_add_conv

    original_peg_add = peg_add_conv.triton_peg_add_conv
    monkeypatch.setattr(peg_add_conv, "triton_peg_add_conv",
                        lambda *a: peg_adds.append(1) or original_peg_add(*a))
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, grads = loss_and_grads(model, batch)
    monkeypatch.undo()
    # Two fused adds per layer, and each stage's last add in its output norm.
    assert len(calls) == 2 * len(layers) + 2
    # Every layer but each stage's first takes the previous layer's last add into its PEG kernel.
    assert len(peg_adds) == (len(layers) - 2 if peg_impl == "triton" else 0)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss_ref, grads_ref = loss_and_grads(reference, batch)
    if precision == "fp32":
        assert_same_training_signal(loss, grads, loss_ref, grads_ref)
        return
    # The forward rounds exactly as the unfused stores do, so the loss is the same. The backward sums a
    # layer's gradients in fp32 and rounds once where autograd rounds each bf16 accumulation, so the
    # gradients differ in bf16's noise: FlashAttention's rule, per tensor, against the fp32 model.
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    exact = models.build(reference_variant.replace(precision="fp32"), "tiny", device=DEVICE)
    exact.load_state_dict(reference.state_dict())
    _, grads_exact = loss_and_grads(exact, batch)
    for name, grad in grads.items():
        assert_fa_rule(grad, grads_ref[name], grads_exact[name], name)


@pytest.mark.parametrize("position", ["rope", "cpb", "none"])
def test_triton_qk_norm_matches_eager(position):
    # Every attention layer's q/k prologue through the kernel: with the rotary table (spatial layers under
    # RoPE), without it (temporal layers, and every layer under cpb's additive bias or none).
    reference_variant = models.Variant.modern().replace(position=position, attention="math")
    reference = models.build(reference_variant, "tiny", device=DEVICE)
    model = models.build(reference_variant.replace(qk_norm="triton"), "tiny", device=DEVICE)
    model.load_state_dict(reference.state_dict())
    batch = models.example_batch("tiny", device=DEVICE)
    loss_ref, grads_ref = loss_and_grads(reference, batch)
    loss, grads = loss_and_grads(model, batch)
    assert_same_training_signal(loss, grads, loss_ref, grads_ref)
    assert any("q_scale" in name for name in grads)


def test_triton_vq_search_matches_the_chunked_vq():
    # The same codes (fp32 in the interpreter), so the same loss, gradients and EMA-updated codebook.
    reference_variant = models.Variant.modern().replace(vq_impl="chunked", attention="math")
    reference = models.build(reference_variant, "tiny", device=DEVICE)
    model = models.build(reference_variant.replace(vq_impl="triton"), "tiny", device=DEVICE)
    model.load_state_dict(reference.state_dict())
    assert type(model.visual_encoder.vq).__name__ == "TritonCosineVQ"
    before = model.visual_encoder.vq.embed.clone()
    batch = models.example_batch("tiny", device=DEVICE)
    loss_ref, grads_ref = loss_and_grads(reference, batch)
    loss, grads = loss_and_grads(model, batch)
    assert_same_training_signal(loss, grads, loss_ref, grads_ref)
    assert not torch.equal(model.visual_encoder.vq.embed, before)  # the EMA moved the codebook
    torch.testing.assert_close(model.visual_encoder.vq.embed, reference.visual_encoder.vq.embed)


@pytest.mark.parametrize("peg_layout, precision", [("upstream", "fp32"), ("corrected", "fp32"),
                                                    ("corrected", "bf16")])
def test_triton_peg_matches_the_conv3d_peg(peg_layout, precision):
    # Every layer's PEG through the kernel, on both stages' grids (the corrected temporal one is a
    # permuted view of the tokens); under bf16 autocast both compute in bf16 and sum in fp32 in their own
    # order, so each gradient meets FlashAttention's rule against the fp32 model.
    reference_variant = models.Variant.modern().replace(attention="math", peg_layout=peg_layout,
                                                        precision=precision)
    grads = assert_switch_keeps_the_training_signal(reference_variant, peg_impl="triton")
    assert any(".peg.conv.weight" in name for name in grads)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_triton_patch_norm_matches_the_eager_patch_embedding(precision):
    # The volume read in place and normalised in one kernel; the same `norm_in` parameters. Under bf16
    # autocast both write the same once-rounded bf16 patches, so each gradient meets FlashAttention's rule
    # against the fp32 model.
    reference_variant = models.Variant.modern().replace(attention="math", precision=precision)
    grads = assert_switch_keeps_the_training_signal(reference_variant, patch_embed="triton")
    assert grads["visual_encoder.patch_embed.norm_in.weight"].abs().sum() > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_triton_projections_match_the_eager_linears(precision):
    # Both latent projections through the split-K kernels, on the same nn.Linear weights; under bf16
    # autocast both round operands and products alike, so each gradient meets FlashAttention's rule
    # against the fp32 model, the projections' own included.
    reference_variant = models.Variant.modern().replace(attention="math", precision=precision)
    grads = assert_switch_keeps_the_training_signal(reference_variant, projection="triton")
    assert grads["to_visual_latent.weight"].abs().sum() > 0 and grads["to_text_latent.weight"].abs().sum() > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("gate", ["swiglu", "geglu"])
def test_gate_in_the_gemm_epilogues_matches_the_separate_gate_kernel(gate, precision):
    # Every feed-forward through the fused matmuls, on the same proj_in/proj_out weights (the state dict
    # loads unchanged); under bf16 autocast both round gu, h and dh where the unfused stores do, so each
    # gradient meets FlashAttention's rule against the fp32 model.
    from models.mlp import GemmFusedGate

    reference_variant = models.Variant.modern().replace(attention="math", mlp=f"{gate}_triton", precision=precision)
    grads = assert_switch_keeps_the_training_signal(reference_variant, mlp=f"{gate}_gemm")
    model = models.build(reference_variant.replace(mlp=f"{gate}_gemm"), "tiny", device=DEVICE)
    fused = [m for m in model.modules() if isinstance(m, GemmFusedGate)]
    assert len(fused) >= 2 and all(m.activation == gate for m in fused)
    assert all(grads[name].abs().sum() > 0 for name in grads if ".ff.proj_" in name)


@pytest.mark.slow
def test_checkpointed_fastest_candidate_trains_as_the_plain_one():
    # Checkpointed, the layers with every add fused finish their last add between them (a checkpointed
    # layer keeps its inputs: one stream costs less than a stream and a branch); unchecked, the next
    # PEG kernel takes it. Same roundings either way, so under autocast the same loss and gradients.
    from bench.design import fastest_candidate

    variant = fastest_candidate().replace(attention="math", precision="bf16")
    plain = models.build(variant, "tiny", device=DEVICE)
    checkpointed = models.build(variant.replace(checkpointing=True), "tiny", device=DEVICE)
    checkpointed.load_state_dict(plain.state_dict())
    batch = models.example_batch("tiny", device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss, grads = loss_and_grads(plain, batch)
        loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, batch)
    assert torch.equal(loss, loss_ckpt)
    assert all(torch.equal(grads[name], grads_ckpt[name]) for name in grads)


def assert_switch_keeps_the_training_signal(reference_variant, **switch) -> dict:
    """The tiny model with `switch` against `reference_variant` (same weights, same batch): in fp32 the
    same loss and gradients; under bf16 autocast (both compute in bf16 and sum in fp32 in their own
    order) the loss and each gradient meet FlashAttention's rule against the fp32 model. Returns the
    switched model's gradients."""
    reference = models.build(reference_variant, "tiny", device=DEVICE)
    model = models.build(reference_variant.replace(**switch), "tiny", device=DEVICE)
    model.load_state_dict(reference.state_dict())
    batch = models.example_batch("tiny", device=DEVICE)
    autocast = reference_variant.precision == "bf16"
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        loss, grads = loss_and_grads(model, batch)
        loss_ref, grads_ref = loss_and_grads(reference, batch)
    if not autocast:
        assert_same_training_signal(loss, grads, loss_ref, grads_ref)
        return grads
    exact = models.build(reference_variant.replace(precision="fp32"), "tiny", device=DEVICE)
    exact.load_state_dict(reference.state_dict())
    loss_exact, grads_exact = loss_and_grads(exact, batch)
    assert_fa_rule(loss, loss_ref, loss_exact, "loss")
    for name, grad in grads.items():
        assert_fa_rule(grad, grads_ref[name], grads_exact[name], name)
    return grads


def assert_same_training_signal(loss, grads, loss_ref, grads_ref) -> None:
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_ref.keys() and len(grads) > 50
    # Some gradients are ~0 in exact arithmetic (a bias feeding a softmax), so the absolute tolerance
    # is set by the largest gradient anywhere, not by each tensor's own.
    scale = max(g.abs().max().item() for g in grads_ref.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], rtol=1e-3, atol=2e-5 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")
