"""TritonAddRMSNorm (residual add fused into RMSNorm) against an fp64 reference and the unfused path.

The reference is written out from the definition: s = residual + branch, y = s / sqrt(mean(s^2) + eps) * w,
with a loss that reads all three outputs (s, y and s's low-precision copy), so every gradient the
backward kernel sums is exercised. Shapes are odd and small (the Triton interpreter runs them on CPU).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import TritonAddRMSNorm, supports
from tests.kernels.accuracy import assert_fa_rule

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-6
# Width -> rows: a width that is not a power of two, one under the 64-row tile, FF-sized rows.
SHAPES = {37: 33, 100: 17, 512: 12}

pytestmark = pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))


def make_inputs(shape, seed=0):
    """(residual, branch, weight, ds, dy, ds_copy) in fp64 on DEVICE."""
    # Drawn on DEVICE: on one CPU thread, the fp64 draws of the GPU tests (paper sizes) took ~38 s.
    gen = torch.Generator(DEVICE).manual_seed(seed)
    residual = torch.randn(shape, generator=gen, dtype=torch.float64, device=DEVICE) * 2 + 0.5
    branch = torch.randn(shape, generator=gen, dtype=torch.float64, device=DEVICE)
    weight = torch.rand(shape[-1], generator=gen, dtype=torch.float64, device=DEVICE) + 0.5
    grads = [torch.randn(shape, generator=gen, dtype=torch.float64, device=DEVICE) for _ in range(3)]
    return [t.to(DEVICE) for t in (residual, branch, weight, *grads)]


def unfused(branch, residual, weight, out_dtype):
    """What the model computes without the fusion: the add, nn.RMSNorm's kernel, then casts."""
    total = branch + residual
    y = F.rms_norm(total, total.shape[-1:], weight.to(total.dtype), EPS).to(out_dtype)
    return total, y, total.to(out_dtype)


def fused(branch, residual, weight, out_dtype):
    """The module's add_and_norm with `weight` (a leaf of the test's) in place of its parameter."""
    module = TritonAddRMSNorm(residual.shape[-1], eps=EPS).to(DEVICE)
    del module.weight
    module.weight = weight
    return module.add_and_norm(branch, residual, sum_copy=True)


def grads_of(fn, residual, branch, weight, ds, dy, ds_copy, out_dtype):
    """Outputs and (d_residual, d_branch, d_weight) of fn on fresh leaves, for the loss
    <s, ds> + <y, dy> + <s_copy, ds_copy>."""
    residual, branch, weight = (t.detach().clone().requires_grad_(True) for t in (residual, branch, weight))
    total, y, copy = fn(branch, residual, weight, out_dtype)
    loss = (total * ds.to(total.dtype)).sum() + (y * dy.to(y.dtype)).float().sum()
    loss = loss + (copy * ds_copy.to(copy.dtype)).float().sum()
    loss.backward()
    return (total.detach(), y.detach(), copy.detach()), (residual.grad, branch.grad, weight.grad)


def check(residual, branch, weight, grads, out_dtype, what):
    """Kernel vs fp64 reference vs the unfused path in the same dtypes (FlashAttention's rule)."""
    reference = grads_of(unfused, residual.double(), branch.double(), weight.double(),
                         *(g.double() for g in grads), torch.float64)
    baseline = grads_of(unfused, residual, branch, weight, *grads, out_dtype)
    got = grads_of(fused, residual, branch, weight, *grads, out_dtype)
    names = ("s", "y", "s_copy", "d_residual", "d_branch", "d_weight")
    for name, g, b, r in zip(names, got[0] + got[1], baseline[0] + baseline[1], reference[0] + reference[1]):
        assert g.dtype == b.dtype, f"{what} {name}: dtype {g.dtype}, unfused gives {b.dtype}"
        assert_fa_rule(g, b, r, f"{what} {name}")
    return got


@pytest.mark.parametrize("width", list(SHAPES))
def test_fp32_matches_fp64_reference(width):
    residual, branch, weight, *grads = make_inputs((SHAPES[width], width))
    f32 = [t.float() for t in (residual, branch, weight, *grads)]
    (total, _, copy), _ = check(*f32[:3], f32[3:], torch.float32, f"fp32 {SHAPES[width]}x{width}")
    assert copy.data_ptr() == total.data_ptr(), "in fp32 the copy is the sum itself, not a second buffer"


@pytest.mark.parametrize("width", [37, 512])
def test_autocast_bf16_branch_on_fp32_stream(width):
    # The model's case under autocast: a bf16 matmul output added to the fp32 residual stream, the norm
    # written in bf16 for the next matmul, and a bf16 copy of the stream for the K/V projection.
    residual, branch, weight, ds, dy, ds_copy = make_inputs((3, SHAPES[width] // 3 + 1, width), seed=1)
    grads = [ds.float(), dy.bfloat16(), ds_copy.bfloat16()]
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        (total, y, copy), (d_residual, d_branch, _) = check(
            residual.float(), branch.bfloat16(), weight.float(), grads, torch.bfloat16, f"autocast {width}")
    assert (total.dtype, y.dtype, copy.dtype) == (torch.float32, torch.bfloat16, torch.bfloat16)
    assert (d_residual.dtype, d_branch.dtype) == (torch.float32, torch.bfloat16)
    # Rounded in the kernel exactly as autocast's cast rounds: to nearest even from the fp32 values.
    assert torch.equal(copy, total.bfloat16())
    assert torch.equal(d_branch, d_residual.bfloat16())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16_bit_stream_rounds_the_sum_before_normalising_it(dtype):
    # As the unfused add stores its result: the kernel's sum equals torch's 16-bit add bit for bit, and
    # the norm is of that rounded sum (so the model's loss does not move with the fusion).
    residual, branch, weight, *grads = make_inputs((21, 100), seed=2)
    (total, y, _), _ = check(residual.to(dtype), branch.to(dtype), weight.to(dtype),
                             [g.to(dtype) for g in grads], dtype, f"{dtype} stream")
    assert torch.equal(total, branch.to(dtype) + residual.to(dtype))
    expected = F.rms_norm(total.float(), (100,), weight.to(dtype).float(), EPS).to(dtype)
    assert (y.float() - expected.float()).abs().max() <= 2 ** -7 * expected.float().abs().max()
    assert (y == expected).float().mean() > 0.95


def test_a_copy_in_the_streams_own_dtype_is_the_stream_and_its_gradient_is_summed_in_the_kernel():
    # models/residual.py's `autocast` stream: s is bf16 already, so the K/V copy is s itself (no second
    # buffer), yet its consumers' gradient still reaches the backward kernel as d_sum_copy: autograd adds
    # nothing, and the backward is the kernel alone.
    from tests.kernels.oplog import OpLog

    residual, branch, _, ds, dy, ds_copy = make_inputs((13, 37), seed=5)
    module = TritonAddRMSNorm(37, eps=EPS).to(DEVICE)
    leaves = [t.bfloat16().requires_grad_(True) for t in (residual, branch)]
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        total, y, copy = module.add_and_norm(leaves[1], leaves[0], sum_copy=True)
    assert copy.dtype == total.dtype == y.dtype == torch.bfloat16 and copy.data_ptr() == total.data_ptr()
    loss = sum(((t * g.bfloat16()).float().sum() for t, g in ((total, ds), (y, dy), (copy, ds_copy))))
    with OpLog() as log:
        loss.backward(inputs=leaves)
    assert log.names.count("ctclip_kernels.add_rmsnorm_backward") == 1
    assert "aten.add" not in log.names and "aten.add_" not in log.names, log.names
    # The same gradient as the unfused bf16 path's, within FlashAttention's rule against fp64 (on the
    # same bf16-rounded inputs, the module's unit weight).
    inputs = [t.bfloat16() for t in (residual, branch)] + [module.weight.detach().bfloat16()]
    grads = [g.bfloat16() for g in (ds, dy, ds_copy)]
    exact = grads_of(unfused, *(t.double() for t in inputs), *(g.double() for g in grads), torch.float64)[1]
    baseline = grads_of(unfused, *inputs, *grads, torch.bfloat16)[1]
    assert_fa_rule(leaves[0].grad, baseline[0], exact[0], "d_residual")
    assert torch.equal(leaves[0].grad, leaves[1].grad)


def test_non_contiguous_inputs_and_gradients():
    residual, branch, _, *grads = make_inputs((5, 2 * 64, 9))
    weight = make_inputs((1, 64))[2]
    # Rows strided (a transpose), a column step, and gradients that are transposed views too.
    residual_t = residual.float().transpose(1, 2)[..., ::2]
    branch_t = branch.float().transpose(1, 2)[..., 1::2]
    grads_t = [g.float().transpose(1, 2)[..., :64] for g in grads]
    assert not residual_t.is_contiguous() and not branch_t.is_contiguous()
    check(residual_t, branch_t, weight.float(), grads_t, torch.float32, "non-contiguous")


def test_unused_outputs_contribute_no_gradient():
    residual, branch, _, ds, dy, _ = make_inputs((9, 100))
    module = TritonAddRMSNorm(100, eps=EPS).to(DEVICE)
    leaves = [t.float().requires_grad_(True) for t in (residual, branch)]
    total, y, copy = module.add_and_norm(leaves[1], leaves[0])
    assert copy is None
    (total * ds.float()).sum().backward()  # the norm's output unused: the add's gradient passes through
    torch.testing.assert_close(leaves[0].grad, ds.float(), rtol=0, atol=0)
    torch.testing.assert_close(leaves[1].grad, ds.float(), rtol=0, atol=0)
    assert not module.weight.grad.abs().any()

    leaves = [t.float().requires_grad_(True) for t in (residual, branch)]
    _, y, _ = module.add_and_norm(leaves[1], leaves[0])
    (y * dy.float()).sum().backward()  # only the norm's output used
    s = (residual + branch).requires_grad_(True)
    normed = F.rms_norm(s, (100,), module.weight.detach().double(), EPS)
    expected, = torch.autograd.grad((normed * dy).sum(), s)
    torch.testing.assert_close(leaves[0].grad, expected.float(), rtol=1e-5, atol=1e-6)
    assert torch.equal(leaves[1].grad, leaves[0].grad)


def test_an_output_norm_keeps_the_stream_dtype_under_autocast():
    # A stage's output norm (models/transformer.py) feeds the next stage's stream, not a matmul: with
    # out_dtype the fp32 stream's, y is what the plain Triton norm gives on the unfused sum, bit for bit,
    # and the bf16 branch's gradient is the stream's cast once, as autograd's add would cast it.
    from kernels import TritonRMSNorm

    residual, branch, _, _, dy, _ = make_inputs((9, 100), seed=4)
    module = TritonAddRMSNorm(100, eps=EPS).to(DEVICE)
    plain = TritonRMSNorm(100, eps=EPS).to(DEVICE)
    leaves = [residual.float().requires_grad_(True), branch.bfloat16().requires_grad_(True)]
    expected = [t.detach().clone().requires_grad_(True) for t in leaves]
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        _, y, _ = module.add_and_norm(leaves[1], leaves[0], out_dtype=torch.float32)
        y_plain = plain(expected[0] + expected[1])
    assert y.dtype == y_plain.dtype == torch.float32 and torch.equal(y, y_plain)
    (y * dy.float()).sum().backward()
    (y_plain * dy.float()).sum().backward()
    for got, want in zip(leaves, expected):
        assert got.grad.dtype == want.grad.dtype and torch.equal(got.grad, want.grad)
    assert torch.equal(module.weight.grad, plain.weight.grad)


def test_bad_arguments_are_named():
    module = TritonAddRMSNorm(8).to(DEVICE)
    with pytest.raises(ValueError, match="differ in shape"):
        module.add_and_norm(torch.randn(2, 3, 8, device=DEVICE), torch.randn(2, 8, device=DEVICE))
    with pytest.raises(ValueError, match="shape"):
        module.add_and_norm(torch.randn(2, 9, device=DEVICE), torch.randn(2, 9, device=DEVICE))
    with pytest.raises(TypeError, match="float32"):
        module.add_and_norm(torch.ones(2, 8, dtype=torch.float64, device=DEVICE),
                            torch.ones(2, 8, device=DEVICE))


def test_empty_input():
    module = TritonAddRMSNorm(16).to(DEVICE)
    residual = torch.randn(0, 16, device=DEVICE, requires_grad=True)
    branch = torch.randn(0, 16, device=DEVICE, requires_grad=True)
    total, y, _ = module.add_and_norm(branch, residual)
    (total.sum() + y.sum()).backward()
    assert residual.grad.shape == (0, 16) and branch.grad.shape == (0, 16)
    assert torch.equal(module.weight.grad, torch.zeros(16, device=DEVICE))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(55296, 512), (2, 4096, 1365)], ids=str)
def test_large_shapes_on_gpu(shape):
    residual, branch, weight, ds, dy, ds_copy = make_inputs(shape)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        check(residual.float(), branch.bfloat16(), weight.float(),
              [ds.float(), dy.bfloat16(), ds_copy.bfloat16()], torch.bfloat16, f"autocast {shape}")
