"""FlopCounterMode against the analytic attention formulas (forward 4·B·H·S²·D, flash backward 2.5x)."""

import pytest
import torch
import torch.nn.functional as F

from bench.flops import counter, peak_entry, throughput
from models.attention import Attention

B, H, S, D = 2, 3, 40, 16


def _count(fn):
    with counter() as fc:
        out = fn()
    return fc.get_total_flops(), out


def test_cpu_sdpa_forward_and_backward_match_formula():
    q, k, v = (torch.randn(B, H, S, D, requires_grad=True) for _ in range(3))
    fwd, out = _count(lambda: F.scaled_dot_product_attention(q, k, v))
    bwd, _ = _count(lambda: out.sum().backward())
    attn = 4 * B * H * S * S * D
    assert fwd == attn  # zero without bench.flops' CPU flash registration
    assert bwd == 2.5 * attn


@pytest.mark.parametrize("backend, bwd_factor", [("sdpa", 2.5), ("math", 2.0)])
def test_one_attention_layer(backend, bwd_factor):
    dim, inner = 24, H * D
    layer = Attention(dim, heads=H, dim_head=D, norm="layernorm", backend=backend)
    x = torch.randn(B, S, dim, requires_grad=True)
    fwd, out = _count(lambda: layer(x))
    bwd, _ = _count(lambda: out.sum().backward())
    linear = 2 * B * S * dim * inner * 4  # to_q (1x), to_kv (2x), to_out (1x)
    attn = 4 * B * H * S * S * D
    assert fwd == linear + attn
    # Each linear's backward makes the input and the weight gradient: twice its forward. Math attention is
    # two bmm, each twice in backward; the flash formula adds the recomputed scores: 2.5x.
    assert bwd == 2 * linear + bwd_factor * attn


def test_peak_table_and_mfu():
    entry = peak_entry("NVIDIA H100 80GB HBM3", "bf16", "cuda")
    assert entry == {"entry": "H100 SXM", "precision": "bf16", "tflops": 989.4}
    assert peak_entry("NVIDIA H100 PCIe", "fp16", "cuda")["entry"] == "H100 PCIe"
    assert peak_entry("Intel Xeon", "fp32", "cpu") is None
    tflops, mfu = throughput(989.4e12 * 0.5, 1.0, entry)
    assert tflops == pytest.approx(494.7) and mfu == pytest.approx(0.5)
    assert throughput(1e12, 1.0, None) == (pytest.approx(1.0), None)


@pytest.mark.parametrize("groups", [1, 4, 12])
def test_conv3d_backward_counts_groups(groups):
    # Reference: each of forward, grad-input and grad-weight is 2·B·C_out·(C_in/groups)·K³·out voxels.
    c, k, grid = 12, 3, (4, 5, 6)
    conv = torch.nn.Conv3d(c, c, k, padding=1, groups=groups, bias=False)
    x = torch.randn(2, c, *grid, requires_grad=True)
    fwd, out = _count(lambda: conv(x))
    bwd, _ = _count(lambda: out.sum().backward())
    ref = 2 * 2 * c * (c // groups) * k**3 * 4 * 5 * 6
    assert fwd == ref
    assert bwd == 2 * ref
