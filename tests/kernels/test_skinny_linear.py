"""The skinny-linear kernels (kernels/skinny_linear.py) against F.linear: fp64, and autocast's own casts.

The reference is `F.linear` in fp64; in fp32 the kernels must meet FlashAttention's rule against it
next to F.linear in fp32. Under bf16 and fp16 autocast the kernels round operands and results as
autocast's casts and matmuls do, so they must agree with autocast's F.linear to within one unit in the
last place of the operand dtype (the fp32 sums' order differs), and meet the rule as well. Shapes catch
masking and indexing: batches of 3, 4 and 19 rows (below, at and above one 16-row block), output widths
that are not multiples of a block (70: two blocks of 64, 17, 33) and reductions that are not multiples of a tile (1000,
3000, 513).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from kernels import supports
from tests.kernels.accuracy import assert_compiled_grads_match_eager, assert_fa_rule

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))
# (batch rows, input width K, output width N)
CASES = [(4, 3000, 70), (3, 1000, 17), (19, 513, 33)]
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def skinny(x, weight):
    from kernels.skinny_linear import triton_skinny_linear

    return triton_skinny_linear(x, weight)


def make_inputs(rows, k, n, seed=0):
    """(x, weight, dout) in fp64 on DEVICE, scaled as the pooled tokens and an initialised Linear are."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=gen, dtype=torch.float64)
    weight = torch.randn(n, k, generator=gen, dtype=torch.float64) / k ** 0.5
    dout = torch.randn(rows, n, generator=gen, dtype=torch.float64)
    return [t.to(DEVICE) for t in (x, weight, dout)]


def run(fn, x, weight, dout, dtype, autocast=None, view=None):
    """Output and (dx, dweight) of fn on fresh leaves in `dtype`, under `autocast` (a dtype or None);
    `view` maps the leaf x to the tensor the projection reads."""
    x, weight = (t.detach().to(dtype).clone().requires_grad_(True) for t in (x, weight))
    with torch.autocast(DEVICE, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = fn(x if view is None else view(x), weight)
    (out.float() * dout.to(out.dtype).float()).sum().backward()
    return out.detach(), (x.grad, weight.grad)


def _ulp(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # One unit in the last place of dtype at |t|'s magnitude (at least the smallest normal's).
    mantissa = {torch.bfloat16: 7, torch.float16: 10}[dtype]
    exponent = torch.floor(torch.log2(t.abs().clamp_min(torch.finfo(dtype).tiny)))
    return torch.exp2(exponent - mantissa)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fp32_matches_fp64_linear(case):
    x, weight, dout = make_inputs(*case)
    reference = run(F.linear, x, weight, dout, torch.float64)
    baseline = run(F.linear, x, weight, dout, torch.float32)
    got = run(skinny, x, weight, dout, torch.float32)
    for name, g, b, r in zip(("out", "dx", "dweight"), (got[0], *got[1]), (baseline[0], *baseline[1]),
                             (reference[0], *reference[1])):
        assert g.dtype == torch.float32
        assert_fa_rule(g, b, r, f"{case} fp32 {name}")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_autocast_rounds_as_autocasts_linear(case, precision):
    # y in the operand dtype; dx and dweight in fp32 (x's and the weight's dtypes), holding values of
    # the operand dtype, as autocast's matmuls store them before their casts' backward.
    dtype = HALF[precision]
    x, weight, dout = make_inputs(*case)
    reference = run(F.linear, x, weight, dout, torch.float64)
    baseline = run(F.linear, x, weight, dout, torch.float32, dtype)
    got = run(skinny, x, weight, dout, torch.float32, dtype)
    for name, g, b, r in zip(("out", "dx", "dweight"), (got[0], *got[1]), (baseline[0], *baseline[1]),
                             (reference[0], *reference[1])):
        assert g.dtype == b.dtype, f"{name}: dtype {g.dtype}, autocast's F.linear gives {b.dtype}"
        assert torch.equal(g.float().to(dtype).float(), g.float()), f"{name} holds values finer than {dtype}"
        assert ((g.float() - b.float()).abs() <= _ulp(b.float(), dtype)).all(), f"{name}: more than an ulp off"
        assert_fa_rule(g, b, r, f"{case} {precision} {name}")


def test_strided_and_batched_inputs():
    # x a slice of a wider tensor (row stride > K), then a (2, 2, K) batch; the weight transposed in
    # memory (column stride != 1: copied) and sliced along its rows.
    rows, k, n = CASES[1]
    x, weight, dout = make_inputs(rows + 1, k + 7, n + 3)
    for view in (lambda t: t[1:, 3:3 + k], lambda t: t[:4, :k].reshape(2, 2, k)):
        out_rows = view(x).reshape(-1, k).shape[0]
        w = weight[1:1 + n, 2:2 + k]
        wt = w.t().contiguous().t()  # same values, column-major
        d = dout[:out_rows, :n].reshape(*view(x).shape[:-1], n)
        reference = run(F.linear, x, w, d, torch.float64, view=view)
        for weight_layout in (w, wt):
            got = run(skinny, x, weight_layout, d, torch.float32, view=view)
            baseline = run(F.linear, x, weight_layout, d, torch.float32, view=view)
            for name, g, b, r in zip(("out", "dx", "dweight"), (got[0], *got[1]), (baseline[0], *baseline[1]),
                                     (reference[0], *reference[1])):
                assert_fa_rule(g, b, r, f"strided {name}")


class _WeightSized(TorchDispatchMode):
    """Counts the outputs of non-view ops with as many elements as the weight."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.count += sum(t.numel() == self.numel for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out


@pytest.mark.parametrize("fn, saved_weight_copies, weight_sized_outputs",
                         [(F.linear, 1, 3), (skinny, 0, 1)], ids=["autocast-linear", "kernel"])
def test_backward_keeps_and_allocates_no_weight_copy(fn, saved_weight_copies, weight_sized_outputs):
    # x needs a gradient, as the pooled tokens do. Under bf16 autocast F.linear casts the weight (an
    # output), keeps that copy for backward and writes the gradient in bf16 before casting it to fp32
    # (two more); the kernel keeps x and the weight themselves and writes only the fp32 gradient.
    x, weight, dout = (t.float().requires_grad_(True) for t in make_inputs(*CASES[0]))
    saved = []
    counter = _WeightSized(weight.numel())
    with counter, torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out = fn(x, weight)
        (out.float() * dout).sum().backward()
    copies = [t for t in saved if t.numel() == weight.numel() and t is not weight]
    assert len(copies) == saved_weight_copies
    assert counter.count == weight_sized_outputs
    assert weight.grad.dtype == x.grad.dtype == torch.float32


def test_unrequested_gradients_are_not_computed():
    from kernels.skinny_linear import skinny_linear_backward

    x, weight, dout = (t.float() for t in make_inputs(*CASES[2]))
    dx, dweight = skinny_linear_backward(dout.bfloat16(), x, weight, torch.bfloat16, False, True)
    assert dx.numel() == 0 and dweight.shape == weight.shape
    dx, dweight = skinny_linear_backward(dout.bfloat16(), x, weight, torch.bfloat16, True, False)
    assert dx.shape == x.shape and dweight.numel() == 0
    frozen = weight.detach()
    leaf = x.detach().clone().requires_grad_(True)
    from tests.kernels.oplog import OpLog

    log = OpLog()
    with log:
        (skinny(leaf, frozen).float() * dout.float()).sum().backward()
    assert [n for n in log.names if n.startswith("ctclip_kernels.")] == [
        "ctclip_kernels.skinny_linear_forward", "ctclip_kernels.skinny_linear_backward"]
    assert frozen.grad is None and leaf.grad.shape == x.shape


def test_opcheck_empty_inputs_and_bad_shapes():
    from kernels.skinny_linear import skinny_linear_backward, skinny_linear_forward

    ops = torch.ops.ctclip_kernels
    checks = ("test_schema", "test_faketensor")
    x, weight, dout = (t.float() for t in make_inputs(*CASES[1]))
    for dtype in (torch.float32, torch.bfloat16):
        torch.library.opcheck(ops.skinny_linear_forward.default, (x, weight, dtype), test_utils=checks)
        for wants in ((True, True), (True, False), (False, True)):
            torch.library.opcheck(ops.skinny_linear_backward.default, (dout.to(dtype), x, weight, dtype, *wants),
                                  test_utils=checks)
    out = skinny_linear_forward(x[:0], weight, torch.float32)
    dx, dweight = skinny_linear_backward(out, x[:0], weight, torch.float32, True, True)
    assert out.shape == (0, weight.shape[0]) and dx.shape == (0, x.shape[1])
    assert dweight.shape == weight.shape and not dweight.any()
    with pytest.raises(ValueError, match="needs x"):
        skinny_linear_forward(x[:, :-1], weight, torch.float32)
    with pytest.raises(ValueError, match="operand dtype"):
        skinny_linear_forward(x, weight, torch.float64)


class _ProjectionBlock(torch.nn.Module):
    """Mean over a token axis, flatten, project without bias: CT-CLIP's encode_image tail."""

    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(k, n, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return skinny(tokens.mean(dim=1).flatten(1), self.proj.weight)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_compiled_projection_keeps_the_kernels_in_one_graph(autocast):
    torch.manual_seed(0)
    assert_compiled_grads_match_eager(_ProjectionBlock(6 * 5 * 7, 24).to(DEVICE),
                                      torch.randn(3, 4, 6, 5, 7, device=DEVICE), autocast)


def test_on_fake_tensors_it_is_one_op_each_way_with_linears_flops_at_bf16():
    # What bench.estimate sees of projection=triton at the paper's image projection: one op each way,
    # FlopCounterMode's count for the Linear it replaces, and the roofline's bf16 peak.
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from bench.gpu_specs import find_gpu
    from bench.roofline import RooflineMode

    with FakeTensorMode():
        x = torch.randn(4, 294912, requires_grad=True)
        weight = torch.randn(512, 294912, requires_grad=True)
        counts = []
        for fn in (F.linear, skinny):
            counter = FlopCounterMode(display=False)
            with counter, RooflineMode(find_gpu("H100")) as roofline, torch.autocast("cpu", dtype=torch.bfloat16):
                fn(x, weight).float().sum().backward()
            counts.append(counter.get_total_flops())
        assert counts[0] == counts[1] == 3 * 2 * 4 * 294912 * 512
        names = sorted(n for n in roofline.costs if n.startswith("ctclip_kernels"))
        assert names == ["ctclip_kernels.skinny_linear_backward[bf16]", "ctclip_kernels.skinny_linear_forward[bf16]"]
        assert weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def test_a_gpu_nan_stays_nan_when_operands_round_to_bf16():
    # NVIDIA arithmetic makes NaNs with bits 0x7FFFFFFF; the round-to-nearest-even carry of the kernels'
    # shared bf16 rounding once turned those into -0.0, hiding a diverged input as a finite output.
    from kernels.skinny_linear import skinny_linear_forward

    x, weight, _ = make_inputs(5, 24, 7)
    x = x.float()
    x[1, 3] = torch.tensor(0x7FFFFFFF, dtype=torch.int32).view(torch.float32)
    expected = x.bfloat16().float() @ weight.bfloat16().float().t()
    got = skinny_linear_forward(x, weight.float(), torch.bfloat16)
    assert expected[1].isnan().all() and not expected[[0, 2, 3, 4]].isnan().any()
    assert torch.equal(got.isnan(), expected.isnan())
