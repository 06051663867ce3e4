"""The residual axis: the visual stream in fp32 (upstream) or in autocast's dtype, and nothing else changes."""

import pytest
import torch

from bench.cuda_autocast import cuda_autocast_policy
from models import Variant, build, example_batch, supports
from models.transformer import Layer, Transformer
from tests.models.fa_rule import max_abs_error


def _stream_dtypes(model: torch.nn.Module, batch) -> list[torch.dtype]:
    """The dtype of the stream entering each layer, in call order (the model runs its variant's autocast)."""
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
             for m in model.modules() if isinstance(m, Layer)]
    model(*batch)
    for hook in hooks:
        hook.remove()
    return seen


def _loss_and_grads(model: torch.nn.Module, batch):
    model.train()
    torch.manual_seed(0)  # the same dropout masks in every model
    loss = model(*batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_the_stream_in_autocast_dtype_needs_autocast():
    reason = supports(Variant(residual="autocast"), "cpu")
    assert reason is not None and reason.startswith("residual=autocast") and "precision=fp32" in reason
    assert supports(Variant(residual="autocast", precision="bf16"), "cpu") is None
    assert Variant(residual="autocast", precision="bf16").key == "res=autocast,prec=bf16"
    with pytest.raises(ValueError, match="valid values: fp32, autocast"):
        Variant(residual="bf16")


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_every_layer_receives_the_stream_in_the_chosen_dtype(norm):
    # Under CUDA's autocast policy (emulated on these CPU tensors): upstream's stream is fp32 at every
    # layer, as the patch embedding's and the spatial stage's output norms write it; the switched one is
    # bf16 at every layer, the temporal stage casting again at its entry. (The CPU's own policy keeps
    # LayerNorm in bf16, so there upstream's stream is bf16 already.)
    variant = Variant(norm=norm, precision="bf16")
    upstream = build(variant, "tiny")
    lean = build(variant.replace(residual="autocast"), "tiny")
    lean.load_state_dict(upstream.state_dict())
    batch = example_batch("tiny")
    layers = sum(len(m.layers) for m in upstream.modules() if isinstance(m, Transformer))

    with cuda_autocast_policy():
        assert _stream_dtypes(upstream, batch) == [torch.float32] * layers
        assert _stream_dtypes(lean, batch) == [torch.bfloat16] * layers


def test_a_16_bit_stream_stays_within_bf16_rounding_of_the_fp32_model():
    # An fp32 model is the reference; the bf16 model with an fp32 stream is what autocast alone costs.
    # Rounding the stream too adds error of the same order (8-bit mantissa per add): the loss and every
    # gradient stay within a small multiple of autocast's own error, where a wrong cast or a dropped
    # add would be off by the size of the values themselves.
    variant = Variant.modern().replace(attention="math", precision="bf16")
    exact = build(variant.replace(precision="fp32"), "tiny")
    upstream = build(variant, "tiny")
    lean = build(variant.replace(residual="autocast"), "tiny")
    upstream.load_state_dict(exact.state_dict())
    lean.load_state_dict(exact.state_dict())
    batch = example_batch("tiny")
    loss_exact, grads_exact = _loss_and_grads(exact, batch)
    with cuda_autocast_policy():  # the CPU's own policy would keep upstream's stream in bf16 already
        loss_upstream, grads_upstream = _loss_and_grads(upstream, batch)
        loss_lean, grads_lean = _loss_and_grads(lean, batch)

    assert max_abs_error(loss_lean, loss_exact) <= 4 * max_abs_error(loss_upstream, loss_exact) + 1e-3
    visual = [n for n in grads_exact if n.startswith("visual_encoder.")]
    assert len(visual) > 20
    for name in visual:
        scale = grads_exact[name].abs().max().item()
        error_upstream = max_abs_error(grads_upstream[name], grads_exact[name])
        error_lean = max_abs_error(grads_lean[name], grads_exact[name])
        assert error_lean <= 4 * error_upstream + 0.05 * scale, (name, error_lean, error_upstream, scale)
    # And the stream really was rounded: the two bf16 models differ.
    assert not all(torch.equal(grads_lean[n], grads_upstream[n]) for n in visual)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_16_bit_stream_trains_in_either_autocast_dtype(precision):
    # test_every_variant trains each switch at fp32, where this one is unsupported: one step here, under
    # CUDA's casts, with every gradient finite and the stream in the precision's own 16-bit dtype.
    variant = Variant(residual="autocast", precision=precision)
    model = build(variant, "tiny").train()
    want = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with cuda_autocast_policy():
        assert set(_stream_dtypes(model, example_batch("tiny"))) == {want}
        loss = model(*example_batch("tiny")).loss
        loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) > 50 and all(torch.isfinite(g).all() for g in grads)
