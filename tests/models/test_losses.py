import math

import torch
import torch.nn.functional as F

from models import Variant, build, example_batch
from models.losses import LOSSES, siglip_loss, softmax_clip_loss


def _latents(b=5, d=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(b, d, generator=gen), dim=-1) for _ in range(2))


def _upstream_softmax_loss(text, image, temperature):
    """CT_CLIP/ct_clip.py: -log(exp(diag)) + log(sum exp(row)), eps 1e-20, both directions averaged."""
    def log(t, eps=1e-20):
        return torch.log(t.clamp(min=eps))

    sim = text @ image.t() * temperature.exp()
    t2i, i2t = sim.exp(), sim.t().exp()
    t2i_loss = (-log(t2i.diag()) + log(t2i.sum(-1))).mean()
    i2t_loss = (-log(i2t.diag()) + log(i2t.sum(-1))).mean()
    return (t2i_loss + i2t_loss) / 2


def test_softmax_loss_equals_upstream_formula():
    text, image = _latents()
    for t in (0.0, 1.0, 2.5):
        temperature = torch.tensor(t)
        torch.testing.assert_close(softmax_clip_loss(text, image, temperature),
                                   _upstream_softmax_loss(text, image, temperature))


def test_siglip_loss_equals_pairwise_sum():
    text, image = _latents(b=4)
    t, b = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    expected = 0.0
    for i in range(4):
        for j in range(4):
            label = 1.0 if i == j else -1.0
            logit = math.exp(t.item()) * float(text[i] @ image[j]) + b.item()
            expected += -math.log(1 / (1 + math.exp(-label * logit)))
    torch.testing.assert_close(siglip_loss(text, image, t, b), torch.tensor(expected / 4, dtype=torch.float32))


def test_loss_initialisation():
    softmax = build(Variant(), "tiny")
    assert softmax.temperature.item() == 1.0 and softmax.logit_bias is None
    assert math.isclose(softmax.logit_scale.item(), math.e, rel_tol=1e-6)
    siglip = build(Variant(loss="siglip"), "tiny")
    assert math.isclose(siglip.temperature.item(), math.log(10.0), rel_tol=1e-6)
    assert siglip.logit_bias.item() == -10.0
    assert set(LOSSES.names()) == {"softmax", "siglip"}


def test_forward_returns_latents_scale_bias_and_loss():
    model = build(Variant(loss="siglip"), "tiny")
    out = model(*example_batch("tiny", batch=3))
    assert out.text_latents.shape == out.image_latents.shape == (3, 16)
    torch.testing.assert_close(out.text_latents.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.image_latents.norm(dim=-1), torch.ones(3))
    expected = siglip_loss(out.text_latents, out.image_latents, model.temperature, model.logit_bias)
    torch.testing.assert_close(out.loss, expected)
    assert out.logit_bias is model.logit_bias
