"""The residual add fused into the PEG's convolution (kernels/peg_add_conv.py) against the add followed by
the PEG: upstream's pad + Conv3d in fp64 (FlashAttention's rule), and the unfused Triton PEG, which
rounds the same values and sums in the same order, so under autocast every output and gradient must
be bit-equal to it. Both outputs (the sum and the convolution) take part in the loss, as in the model,
where the sum also feeds the next norm."""

from __future__ import annotations

import pytest
import torch

from kernels import supports
from tests.kernels.accuracy import assert_compiled_grads_match_eager, assert_fa_rule
from tests.kernels.test_peg_conv import GRIDS, channel_strided, conv3d_peg, triton_peg

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))


def fused(x, branch, weight, bias):
    from kernels.peg_add_conv import triton_peg_add_conv

    return triton_peg_add_conv(x, branch, weight, bias)


def unfused(peg):
    def add_then_convolve(x, branch, weight, bias):
        total = x + branch
        return total, peg(total, weight, bias)
    return add_then_convolve


def make_inputs(shape, seed=0):
    """(x, branch, weight, bias, dsum, dout) in fp64 on DEVICE."""
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2)]
    tensors += [torch.randn(shape[-1], 1, 3, 3, 3, generator=gen, dtype=torch.float64) / 3,
                torch.randn(shape[-1], generator=gen, dtype=torch.float64)]
    tensors += [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2)]
    return [t.to(DEVICE) for t in tensors]


def run(fn, inputs, x_dtype, branch_dtype, autocast=False, view=None):
    """(sum, out) and the gradients of x, branch, weight and bias, on fresh leaves; `view` maps a leaf
    to the grid the PEG sees."""
    x, branch, weight, bias, dsum, dout = inputs
    dtypes = (x_dtype, branch_dtype, x_dtype, x_dtype)
    leaves = [t.detach().to(d).requires_grad_(True) for t, d in zip((x, branch, weight, bias), dtypes)]
    grid = (lambda t: t) if view is None else view
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        total, out = fn(grid(leaves[0]), grid(leaves[1]), leaves[2], leaves[3])
    loss = (total.float() * dsum.to(total.dtype).float()).sum() + (out.float() * dout.to(out.dtype).float()).sum()
    loss.backward()
    return [total.detach(), out.detach()] + [leaf.grad for leaf in leaves]


NAMES = ("sum", "out", "dx", "dbranch", "dweight", "dbias")


@pytest.mark.parametrize("shape", GRIDS, ids=str)
def test_fp32_matches_the_fp64_add_and_conv3d(shape):
    inputs = make_inputs(shape)
    reference = run(unfused(conv3d_peg), inputs, torch.float64, torch.float64)
    baseline = run(unfused(conv3d_peg), inputs, torch.float32, torch.float32)
    got = run(fused, inputs, torch.float32, torch.float32)
    for name, g, b, r in zip(NAMES, got, baseline, reference):
        assert g.dtype == b.dtype, f"{name}: {g.dtype} where the unfused path gives {b.dtype}"
        assert_fa_rule(g, b, r, f"fp32 {shape} {name}")


@pytest.mark.parametrize("shape", GRIDS[:2], ids=str)
def test_bf16_autocast_is_bit_equal_to_the_add_then_the_triton_peg(shape):
    # The model's case: an fp32 stream, a bf16 FF output, bf16 compute. Same roundings, same fp32 sums.
    inputs = make_inputs(shape, seed=1)
    got = run(fused, inputs, torch.float32, torch.bfloat16, autocast=True)
    expected = run(unfused(triton_peg), inputs, torch.float32, torch.bfloat16, autocast=True)
    dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.bfloat16, torch.float32, torch.float32]
    for name, g, e, dtype in zip(NAMES, got, expected, dtypes):
        assert g.dtype == e.dtype == dtype, f"{name}: {g.dtype}, unfused {e.dtype}, expected {dtype}"
        assert torch.equal(g, e), f"{name}: max difference {(g.double() - e.double()).abs().max().item():.3e}"


def test_a_16_bit_stream_rounds_its_sum_as_the_add_stores_it():
    inputs = make_inputs(GRIDS[0], seed=2)
    got = run(fused, inputs, torch.bfloat16, torch.bfloat16)
    expected = run(unfused(triton_peg), inputs, torch.bfloat16, torch.bfloat16)
    for name, g, e in zip(NAMES, got, expected):
        assert g.dtype == e.dtype and torch.equal(g, e), name


def test_permuted_grids():
    # The corrected temporal layout: both the stream and the branch are (b h w) t c tokens seen as
    # (b, t, h, w, c) grids; the sum comes back in their memory order.
    b, t, h, w, c = 2, 5, 3, 4, 37
    inputs = make_inputs((b * h * w, t, c), seed=3)
    x, branch, weight, bias, dsum, dout = inputs
    grid_shape = (b, t, h, w, c)
    to_grid = lambda tokens: tokens.reshape(b, h, w, t, c).permute(0, 3, 1, 2, 4)  # noqa: E731
    grid_inputs = [x, branch, weight, bias, to_grid(dsum).contiguous(), to_grid(dout).contiguous()]
    reference = run(unfused(conv3d_peg), grid_inputs, torch.float64, torch.float64, view=to_grid)
    baseline = run(unfused(conv3d_peg), grid_inputs, torch.float32, torch.float32, view=to_grid)
    got = run(fused, grid_inputs, torch.float32, torch.float32, view=to_grid)
    assert got[0].shape == grid_shape and got[0].stride() == to_grid(x.float()).stride()
    for name, g, bl, r in zip(NAMES, got, baseline, reference):
        assert_fa_rule(g, bl, r, f"permuted {name}")


def test_fake_outputs_are_laid_out_as_the_real_ones_for_channel_strided_grids():
    import kernels.peg_add_conv  # noqa: F401  (registers the ops)

    ops = torch.ops.ctclip_kernels
    x, branch, weight, bias, dsum, dout = (t.float() for t in make_inputs((2, 3, 4, 7, 5)))
    x, branch, dsum, dout = (channel_strided(t) for t in (x, branch, dsum, dout))
    assert x.stride(-1) != 1
    w27, checks = weight.reshape(-1, 27), ("test_faketensor",)
    torch.library.opcheck(ops.peg_add_conv_forward.default, (x, branch.bfloat16(), w27, bias, torch.bfloat16, True),
                          test_utils=checks)
    args = (dout, dsum, x, w27, torch.float32, torch.float32, torch.bfloat16, torch.float32)
    torch.library.opcheck(ops.peg_add_conv_backward.default, args, test_utils=checks)


def test_opcheck_and_one_op_each_way_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tests.kernels.oplog import OpLog

    ops = torch.ops.ctclip_kernels
    checks = ("test_schema", "test_faketensor")
    x, branch, weight, bias, dsum, dout = (t.float() for t in make_inputs(GRIDS[0]))
    w27 = weight.reshape(-1, 27)
    torch.library.opcheck(ops.peg_add_conv_forward.default, (x, branch.bfloat16(), w27, bias, torch.bfloat16, True),
                          test_utils=checks)
    for d_sum in (dsum, None):
        args = (dout.bfloat16(), d_sum, x.bfloat16(), w27, torch.float32, torch.float32, torch.bfloat16,
                torch.bfloat16)
        torch.library.opcheck(ops.peg_add_conv_backward.default, args, test_utils=checks)
    with FakeTensorMode():
        x = torch.randn(2, 3, 4, 5, 12, requires_grad=True)
        branch = torch.randn(2, 3, 4, 5, 12, dtype=torch.bfloat16, requires_grad=True)
        conv = torch.nn.Conv3d(12, 12, 3, groups=12)
        log = OpLog()
        with log, torch.autocast("cpu", dtype=torch.bfloat16):
            total, out = fused(x, branch, conv.weight, conv.bias)
            (total.sum() + out.float().sum()).backward()
        assert (total.dtype, out.dtype, x.grad.dtype, branch.grad.dtype) == (torch.float32, torch.bfloat16,
                                                                             torch.float32, torch.bfloat16)
    kernel_ops = [n for n in log.names if n.startswith("ctclip_kernels.")]
    assert kernel_ops == ["ctclip_kernels.peg_add_conv_forward", "ctclip_kernels.peg_add_conv_backward"]


class _Block(torch.nn.Module):
    """A projection as the FF branch, added to the stream inside the PEG, then both outputs summed."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(channels, channels)
        self.conv = torch.nn.Conv3d(channels, channels, 3, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total, out = fused(x, self.proj(x), self.conv.weight, self.conv.bias)
        return out + total


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_compiled_keeps_the_kernels_in_one_graph(autocast):
    torch.manual_seed(0)
    assert_compiled_grads_match_eager(_Block(12).to(DEVICE), torch.randn(2, 3, 4, 5, 12, device=DEVICE), autocast)
