"""The PEG's Triton convolution (kernels/peg_conv.py) against PyTorch's pad + depthwise Conv3d in fp64.

The reference is upstream's own expression (models/peg.py's `conv3d`) run in fp64; the kernel must meet
FlashAttention's rule against it next to the same PyTorch expression in the kernel's dtypes. Grids are
odd-sized and small (the Triton interpreter runs them on CPU): a causal axis shorter than the filter,
rows and columns of 1, more channels than one channel block (64), and strided views: the corrected
temporal layout's permuted grid, a channel slice of a wider tensor, a non-contiguous gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kernels import supports
from tests.kernels.accuracy import assert_compiled_grads_match_eager, assert_fa_rule

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))
# (B, T, H, W, C): T below the filter's 3, H or W of 1, C over one 64-channel block and not a multiple.
GRIDS = [(2, 3, 4, 5, 37), (1, 1, 3, 2, 70), (3, 4, 1, 3, 5)]


def conv3d_peg(grid, weight, bias):
    from models.peg import conv3d

    conv = torch.nn.Conv3d(grid.shape[-1], grid.shape[-1], 3, groups=grid.shape[-1], device=grid.device,
                           dtype=weight.dtype)
    del conv.weight, conv.bias
    conv.weight, conv.bias = weight, bias
    return conv3d(grid, conv)


def conv3d_rounds_like_onednn() -> bool:
    """Whether bf16 Conv3d here is cuDNN or oneDNN, which sum in fp32 and round only the results."""
    return DEVICE == "cuda" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def triton_peg(grid, weight, bias):
    from kernels.peg_conv import triton_peg_conv

    return triton_peg_conv(grid, weight, bias)


def make_inputs(shape, seed=0):
    """(x, weight, bias, dout) in fp64 on DEVICE."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(shape[-1], 1, 3, 3, 3, generator=gen, dtype=torch.float64) / 3
    bias = torch.randn(shape[-1], generator=gen, dtype=torch.float64)
    dout = torch.randn(shape, generator=gen, dtype=torch.float64)
    return [t.to(DEVICE) for t in (x, weight, bias, dout)]


def run(fn, x, weight, bias, dout, dtype, autocast=False, view=None):
    """Output and (dx, dweight, dbias) of fn on fresh leaves in `dtype`; `view` maps the leaf x to the
    grid the PEG sees."""
    x, weight, bias = (t.detach().to(dtype).requires_grad_(True) for t in (x, weight, bias))
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        out = fn(x if view is None else view(x), weight, bias)
    (out.float() * dout.to(out.dtype).float()).sum().backward()
    return out.detach(), (x.grad, weight.grad, bias.grad)


def check(x, weight, bias, dout, dtype, what, autocast=False, view=None):
    reference = run(conv3d_peg, x, weight, bias, dout, torch.float64, view=view)
    baseline = run(conv3d_peg, x, weight, bias, dout, dtype, autocast, view)
    got = run(triton_peg, x, weight, bias, dout, dtype, autocast, view)
    names = ("out", "dx", "dweight", "dbias")
    for name, g, b, r in zip(names, (got[0], *got[1]), (baseline[0], *baseline[1]),
                             (reference[0], *reference[1])):
        assert g.dtype == b.dtype, f"{what} {name}: dtype {g.dtype}, the Conv3d path gives {b.dtype}"
        assert_fa_rule(g, b, r, f"{what} {name}")
    return got


@pytest.mark.parametrize("shape", GRIDS, ids=str)
def test_fp32_matches_fp64_conv3d(shape):
    x, weight, bias, dout = make_inputs(shape)
    check(x, weight, bias, dout, torch.float32, f"fp32 {shape}")


@pytest.mark.parametrize("shape", GRIDS[:2], ids=str)
def test_bf16_autocast_matches_fp64_conv3d(shape):
    # The stream stays fp32; under autocast the Conv3d path computes in bf16 and so must the kernel: bf16
    # output, fp32 gradients for the fp32 stream and parameters.
    x, weight, bias, dout = make_inputs(shape, seed=1)
    out, grads = check(x, weight, bias, dout, torch.float32, f"bf16 autocast {shape}", autocast=True)
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads)
    # It rounds where the Conv3d path does (x, w and bias to bf16 before the products; the output, dx and
    # dw to bf16), so only the order of the fp32 sums can tell them apart: almost every value is equal
    # (all of them on oneDNN; without the input's rounding a third of the outputs differ). A CPU without
    # oneDNN bf16 (AVX2 only) runs Conv3d's backward as slow_conv3d, which is less accurate than the
    # kernel (dx max error 4.4e-2 against 2.5e-2 on the first grid, measured), so there only the output
    # is compared; check() above bounds every gradient against fp64 either way.
    conv_out, conv_grads = run(conv3d_peg, x, weight, bias, dout, torch.float32, autocast=True)
    compared = ("out", "dx", "dweight", "dbias") if conv3d_rounds_like_onednn() else ("out",)
    for name, got, expected in zip(compared, (out, *grads), (conv_out, *conv_grads)):
        differing = (got != expected).float().mean().item()
        assert differing <= 0.01, f"{name}: {differing:.1%} of the values differ from the Conv3d path's"


def test_strided_grids_and_gradients():
    # The corrected temporal layout: tokens (b h w) t c seen as a (b, t, h, w, c) grid, a permuted view;
    # the output comes back in the tokens' memory order, so rearranging it back is a view.
    b, t, h, w, c = 2, 5, 3, 4, 37
    x, weight, bias, dout = make_inputs((b, t, h, w, c), seed=2)
    tokens = x.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, c)  # the stage's contiguous token layout

    def as_grid(leaf):
        return leaf.reshape(b, h, w, t, c).permute(0, 3, 1, 2, 4)

    check(tokens, weight, bias, dout, torch.float32, "permuted grid", view=as_grid)
    grid = as_grid(tokens.float())
    out = triton_peg(grid, weight.float(), bias.float())
    assert out.stride() == grid.stride()

    # A channel slice of a wider stream (rows 53 apart) and a transposed, non-contiguous gradient.
    wide = torch.cat([x, torch.randn_like(x)[..., :16]], dim=-1)
    check(wide, weight, bias, dout, torch.float32, "channel slice", view=lambda leaf: leaf[..., :c])
    leaf = x.float().requires_grad_(True)
    out = triton_peg(leaf, weight.float(), bias.float())
    odd_grad = dout.float().transpose(1, 3).contiguous().transpose(1, 3)
    assert not odd_grad.is_contiguous()
    out.backward(odd_grad)
    expected = x.float().requires_grad_(True)
    conv3d_peg(expected, weight.float(), bias.float()).backward(dout.float())
    torch.testing.assert_close(leaf.grad, expected.grad, rtol=1e-5, atol=1e-5)


def test_autocast_saves_the_bf16_copy_not_the_stream():
    # What the backward keeps under autocast: x in bf16 (half the fp32 stream, and less than the Conv3d
    # path's padded copy) and the rounded (C, 27) weight, nothing else.
    x, weight, bias, _ = (t.float() for t in make_inputs(GRIDS[0]))
    x.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            triton_peg(x, weight, bias)
    assert sorted((tuple(t.shape), t.dtype) for t in saved) == sorted(
        [(tuple(x.shape), torch.bfloat16), ((x.shape[-1], 27), torch.float32)], key=str)


def test_flops_count_as_the_conv3d():
    # MFU's numerator must not change with peg_impl: the ops' formulas give the Conv3d's count, forward
    # and backward, as bench.flops counts it (torch's own formula ignores groups for the weight gradient).
    import bench.flops  # noqa: F401

    x, weight, bias, dout = (t.float() for t in make_inputs(GRIDS[0]))
    counts = []
    for fn in (conv3d_peg, triton_peg):
        leaf = x.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as counter:
            fn(leaf, weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)).backward(dout)
        counts.append(counter.get_total_flops())
    b, t, h, w, c = GRIDS[0]
    assert counts[0] == counts[1] == 3 * 2 * 27 * b * t * h * w * c


def channel_strided(t: torch.Tensor) -> torch.Tensor:
    """t's values in a dense layout whose channels (last dim) are not unit-stride."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def test_fake_outputs_are_laid_out_as_the_real_ones_for_channel_strided_grids():
    import kernels.peg_conv  # noqa: F401  (registers the ops)

    # The real ops copy such a grid to unit channel stride before allocating their outputs; torch.compile
    # plans with the fake ops' strides, so theirs must be the same (opcheck compares them).
    ops = torch.ops.ctclip_kernels
    x, weight, bias, dout = (t.float() for t in make_inputs((2, 3, 4, 7, 5)))
    x, dout = channel_strided(x), channel_strided(dout)
    assert x.stride(-1) != 1
    w27 = weight.reshape(-1, 27)
    checks = ("test_faketensor",)
    torch.library.opcheck(ops.peg_conv_forward.default, (x, w27, bias, torch.bfloat16, True), test_utils=checks)
    torch.library.opcheck(ops.peg_conv_backward.default, (dout, x, w27, torch.float32, torch.float32, torch.float32),
                          test_utils=checks)


def test_opcheck_and_empty_grid():
    from kernels.peg_conv import peg_conv_backward, peg_conv_forward

    ops = torch.ops.ctclip_kernels
    checks = ("test_schema", "test_faketensor")
    x, weight, bias, dout = (t.float() for t in make_inputs(GRIDS[0]))
    w27 = weight.reshape(-1, 27)
    for out_dtype, copy in ((torch.float32, False), (torch.bfloat16, True)):
        torch.library.opcheck(ops.peg_conv_forward.default, (x, w27, bias, out_dtype, copy),
                              test_utils=checks)
    args = (dout.to(torch.bfloat16), x.to(torch.bfloat16), w27, torch.float32, torch.float32, torch.bfloat16)
    torch.library.opcheck(ops.peg_conv_backward.default, args, test_utils=checks)
    dx, dw, dbias = peg_conv_backward(*args)
    assert (dx.dtype, dw.shape, dbias.shape) == (torch.float32, (x.shape[-1], 27), (x.shape[-1],))
    empty = x[:0]
    out, _ = peg_conv_forward(empty, w27, bias, torch.float32, False)
    dx, dw, dbias = peg_conv_backward(empty, empty, w27, torch.float32, torch.float32, torch.float32)
    assert out.shape == empty.shape and dx.shape == empty.shape
    assert not dw.any() and not dbias.any()


class _PEGBlock(torch.nn.Module):
    """A projection, then the PEG on its (B, T, H, W, C) grid, added back as models.transformer.Layer does."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(channels, channels)
        self.conv = torch.nn.Conv3d(channels, channels, 3, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return triton_peg(x, self.conv.weight, self.conv.bias) + x


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_compiled_peg_keeps_the_kernels_in_one_graph(autocast):
    # The GPU check compiles the fastest candidate, which runs the PEG kernel under autocast: no graph
    # break (the autocast dtype is read while tracing), eager's gradients. Every rounding to bf16 happens
    # inside the ops: inductor removes a cast to bf16 and back around them as a no-op, and when the
    # parameters were rounded that way the compiled block's gradients were 2 % off eager's.
    torch.manual_seed(0)
    assert_compiled_grads_match_eager(_PEGBlock(12).to(DEVICE), torch.randn(2, 3, 4, 5, 12, device=DEVICE),
                                      autocast)


def test_on_fake_tensors_it_is_one_op_each_way():
    # What bench.estimate sees of peg_impl=triton: one forward and one backward op, with autocast's
    # dtypes (bf16 output on the fp32 stream, fp32 gradients for the stream and the parameters).
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tests.kernels.oplog import OpLog

    with FakeTensorMode():
        x = torch.randn(2, 3, 4, 5, 12, requires_grad=True)
        conv = torch.nn.Conv3d(12, 12, 3, groups=12)
        log = OpLog()
        with log, torch.autocast("cpu", dtype=torch.bfloat16):
            out = triton_peg(x, conv.weight, conv.bias)
            out.float().sum().backward()
        assert out.dtype == torch.bfloat16 and out.shape == x.shape
        assert (x.grad.dtype, conv.weight.grad.dtype, conv.bias.grad.dtype) == (torch.float32,) * 3
        assert conv.weight.grad.shape == conv.weight.shape
    kernel_ops = [n for n in log.names if n.startswith("ctclip_kernels.")]
    assert kernel_ops == ["ctclip_kernels.peg_conv_forward", "ctclip_kernels.peg_conv_backward"]
