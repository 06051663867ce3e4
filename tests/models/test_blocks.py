"""PEG, attention and VQ against independent re-statements of upstream CT-CLIP's code."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from models import Variant
from models.attention import Attention
from models.peg import PEG
from models import vq as vq_module
from models.vq import VQ_IMPLS, CosineVQ


def _upstream_peg(conv, x, shape):
    """transformer_maskgit PEG.forward with causal=True: raw reshape to `shape`, pad, conv, raw reshape back."""
    orig_shape = x.shape
    g = x.reshape(*shape, -1)
    g = rearrange(g, "b ... d -> b d ...")
    g = F.pad(g, (1, 1, 1, 1, 2, 0), value=0.0)
    g = conv(g)
    g = rearrange(g, "b d ... -> b ... d")
    return g.reshape(orig_shape)


def test_peg_reproduces_upstream_in_both_stages_and_corrects_the_temporal_layout():
    b, t, h, w, d = 2, 3, 4, 5, 6  # a non-cubic grid makes any axis mix-up visible
    grid = (b, t, h, w)
    tokens = torch.randn(b, t, h, w, d)
    spatial_in = rearrange(tokens, "b t h w d -> (b t) (h w) d")
    temporal_in = rearrange(tokens, "b t h w d -> (b h w) t d")

    spatial = PEG(d, "spatial", "upstream")
    torch.testing.assert_close(spatial(spatial_in, grid), _upstream_peg(spatial.conv, spatial_in, grid))

    quirk = PEG(d, "temporal", "upstream")
    quirk.load_state_dict(spatial.state_dict())
    torch.testing.assert_close(quirk(temporal_in, grid), _upstream_peg(quirk.conv, temporal_in, grid))

    corrected = PEG(d, "temporal", "corrected")
    corrected.load_state_dict(spatial.state_dict())
    # On the true grid the temporal PEG must equal the spatial PEG's result, re-laid out.
    expected = rearrange(rearrange(spatial(spatial_in, grid), "(b t) (h w) d -> b t h w d", b=b, h=h),
                         "b t h w d -> (b h w) t d")
    torch.testing.assert_close(corrected(temporal_in, grid), expected)
    assert not torch.allclose(quirk(temporal_in, grid), expected)


def test_peg_never_lets_a_slab_see_later_slabs():
    b, t, h, w, d = 1, 4, 3, 3, 2
    peg = PEG(d, "spatial", "upstream")
    tokens = torch.randn(b, t, h, w, d)
    changed = tokens.clone()
    changed[:, -1] += 1.0  # perturb the last depth slab
    run = lambda x: peg(rearrange(x, "b t h w d -> (b t) (h w) d"), (b, t, h, w))  # noqa: E731
    delta = (run(changed) - run(tokens)).reshape(b, t, h * w, d)
    assert delta[:, :-1].abs().max() == 0  # earlier slabs never see later ones


def _upstream_attention(attn: Attention, x, bias):
    """transformer_maskgit Attention.forward for self-attention (no null kv, no mask, not causal)."""
    h = attn.heads
    kv_input = x
    x = F.layer_norm(x, x.shape[-1:], attn.norm.weight, torch.zeros_like(attn.norm.weight))
    q, k, v = attn.to_q(x), *attn.to_kv(kv_input).chunk(2, dim=-1)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=h) for t in (q, k, v))
    q, k = F.normalize(q, dim=-1) * attn.q_scale, F.normalize(k, dim=-1) * attn.k_scale
    sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * 8
    sim = sim + bias
    out = torch.einsum("b h i j, b h j d -> b h i d", sim.softmax(dim=-1), v)
    return attn.to_out(rearrange(out, "b h n d -> b n (h d)"))


def test_attention_normalises_queries_only_and_uses_scale_eight():
    attn = Attention(dim=12, heads=3, dim_head=4, norm="layernorm", backend="math")
    with torch.no_grad():
        attn.norm.weight.uniform_(0.5, 1.5)
        attn.q_scale.uniform_(0.5, 2.0)
        attn.k_scale.uniform_(0.5, 2.0)
    x = torch.randn(2, 7, 12) * 3 + 1  # far from normalised, so a K/V norm would show
    bias = torch.randn(3, 7, 7)
    from models.position import SpatialPosition

    torch.testing.assert_close(attn(x, SpatialPosition(bias=bias)), _upstream_attention(attn, x, bias))


def _upstream_vq_step(embed, cluster_size, x, decay=0.8):
    """vector_quantize_pytorch 1.1.2 CosineSimCodebook.forward in training, one codebook."""
    flat = F.normalize(x.reshape(-1, x.shape[-1]), dim=-1)
    normed = F.normalize(embed, dim=-1)
    ind = torch.einsum("n d, c d -> n c", flat, normed).argmax(dim=-1)
    onehot = F.one_hot(ind, embed.shape[0]).float()
    quantize = embed[ind]
    bins = onehot.sum(dim=0)
    cluster_size = cluster_size.lerp(bins, 1 - decay)
    zero = bins == 0
    embed_sum = torch.einsum("n d, n c -> c d", flat, onehot)
    embed_normalized = F.normalize(embed_sum / bins.masked_fill(zero, 1.0)[:, None], dim=-1)
    embed_normalized = torch.where(zero[:, None], normed, embed_normalized)
    return quantize.reshape(x.shape), embed.lerp(embed_normalized, 1 - decay), cluster_size


@pytest.mark.parametrize("impl", ["onehot", "chunked", "triton"])
def test_vq_forward_ema_update_and_straight_through_gradient(impl, monkeypatch):
    # triton's tf32 search is fp32 in the interpreter, so it must give upstream's codes exactly here.
    if reason := VQ_IMPLS.supports(impl, Variant(vq_impl=impl), "cpu"):
        pytest.skip(reason)
    monkeypatch.setattr(vq_module, "CHUNK_TOKENS", 5)  # 22 tokens: slices of 5, 5, 5, 5 and 2
    vq = VQ_IMPLS.get(impl).impl(dim=8, codebook_size=16).train()
    # Non-contiguous input; 22 tokens over 16 codes leave some codes empty (the EMA keeps those).
    x = torch.randn(2, 8, 11).transpose(1, 2).requires_grad_()
    expected_q, expected_embed, expected_sizes = _upstream_vq_step(vq.embed[0].clone(), vq.cluster_size[0].clone(),
                                                                   x.detach())
    out = vq(x)
    torch.testing.assert_close(out, expected_q)
    torch.testing.assert_close(vq.embed[0], expected_embed)
    torch.testing.assert_close(vq.cluster_size[0], expected_sizes)
    assert (expected_sizes == 0).any()
    upstream_grad = torch.randn_like(out)
    out.backward(upstream_grad)
    torch.testing.assert_close(x.grad, upstream_grad)  # straight-through: identity to the input


def test_vq_memory_onehot_holds_upstreams_matrices_and_chunked_does_not(monkeypatch):
    """Live bytes of one training forward (bench.allocations): upstream's fp32 scores, int64 one-hot and
    fp32 one-hot are alive together; the chunked VQ never holds a (tokens x codes) matrix."""
    from bench.allocations import AllocationTracker

    monkeypatch.setattr(vq_module, "CHUNK_TOKENS", 256)
    tokens, codes = 3000, 512
    x = torch.randn(1, tokens, 8, requires_grad=True)
    peaks = {}
    for impl in ("onehot", "chunked"):
        vq = VQ_IMPLS.get(impl).impl(dim=8, codebook_size=codes).train()
        tracker = AllocationTracker(block_bytes=1)
        with tracker:
            vq(x)
        peaks[impl] = tracker.peak_bytes
    assert peaks["onehot"] >= tokens * codes * (4 + 8 + 4)
    assert peaks["chunked"] < tokens * codes * 4 / 4


def test_vq_eval_returns_codes_without_gradient_or_update():
    vq = CosineVQ(dim=8, codebook_size=16).eval()
    before = vq.embed.clone()
    x = torch.randn(1, 5, 8, requires_grad=True)
    out = vq(x)
    assert not out.requires_grad
    assert torch.equal(vq.embed, before)
    codes = F.normalize(vq.embed[0], dim=-1)
    expected = vq.embed[0][(F.normalize(x.detach().reshape(-1, 8), dim=-1) @ codes.t()).argmax(-1)]
    torch.testing.assert_close(out.reshape(-1, 8), expected)
