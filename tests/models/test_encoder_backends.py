"""The whole tiny CT-ViT encoder gives the same output and the same gradient for every parameter
whichever CPU-capable attention backend computes it (FlashAttention's rule against fp64 `math`)."""

import pytest
import torch

from models import SIZES, Variant, supports
from models.attention_backends import ATTENTION
from models.ctvit import CTViT
from tests.models.fa_rule import assert_fa_rule

TINY = SIZES["tiny"]


def _encoder_run(variant: Variant, state: dict, dtype: torch.dtype, volume: torch.Tensor):
    torch.manual_seed(0)
    encoder = CTViT(variant, TINY)
    encoder.load_state_dict(state)
    encoder = encoder.to(dtype).train()
    tokens = encoder(volume.to(dtype))
    # A fixed random projection of the tokens so every position contributes to the gradient.
    weights = torch.linspace(-1, 1, tokens.numel(), dtype=torch.float64).reshape(tokens.shape)
    (tokens.double() * weights).sum().backward()
    return tokens.detach(), {n: p.grad.detach() for n, p in encoder.named_parameters()}


@pytest.mark.parametrize("position", ["cpb", "cpb_table", "rope", "none"])
def test_every_cpu_backend_matches_math_on_outputs_and_parameter_gradients(position):
    base = Variant(position=position, vq=False)  # VQ's argmax would amplify rounding into code flips
    state = CTViT(base, TINY).state_dict()
    volume = torch.rand(2, *TINY.volume_shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    reference_out, reference_grads = _encoder_run(base, state, torch.float64, volume)
    baseline_out, baseline_grads = _encoder_run(base, state, torch.float32, volume)
    tested = []
    for name in ATTENTION.names():
        variant = base.replace(attention=name)
        if name == "math" or supports(variant, "cpu") is not None:
            continue
        out, grads = _encoder_run(variant, state, torch.float32, volume)
        assert_fa_rule(out, baseline_out, reference_out, f"{name}/{position} tokens")
        for param, grad in grads.items():
            assert_fa_rule(grad, baseline_grads[param], reference_grads[param], f"{name}/{position} d{param}")
        tested.append(name)
    expected = {"sdpa"} | ({"sdpa_flash"} if position in ("rope", "none") else set())
    assert set(tested) == expected
