"""TritonRMSNorm against an fp64 reference, under FlashAttention's rule (see accuracy.py).

On a machine without CUDA these run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET),
so shapes stay small: at most 64 rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import TritonAddRMSNorm, TritonRMSNorm, supports
from kernels.rmsnorm import triton_rmsnorm
from tests.kernels.accuracy import assert_fa_rule

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-6
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Width -> rows: every width of the issue, row counts from 1 to 64 (9 rows at 1365 leaves the last
# backward program with a fully masked tile; 64 rows at 512 gives several tiles per program).
SHAPES = {1: 64, 7: 33, 64: 1, 100: 17, 512: 64, 1365: 9}

pytestmark = pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))


def reference_rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float, placement: str) -> torch.Tensor:
    """Written out from the definition (not torch's rms_norm), meant for fp64 inputs."""
    mean_sq = (x * x).sum(-1, keepdim=True) / x.shape[-1]
    if placement == "inside":
        return x / torch.sqrt(mean_sq + eps) * w
    return x * w / (torch.sqrt(mean_sq) + eps)


def pytorch_rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float, placement: str) -> torch.Tensor:
    """What a PyTorch user runs in the same dtype: nn.RMSNorm's kernel, or the seed project's formula."""
    if placement == "inside":
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    return x * w / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps)


def run(fn, x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor):
    """(y, dx, dw) of fn on fresh leaf copies of x and w."""
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    y = fn(x, w)
    y.backward(dy)
    return y.detach(), x.grad, w.grad


def triton_fn(placement: str, eps: float = EPS):
    return lambda x, w: triton_rmsnorm(x, w, eps, placement)


def check_against_reference(x, w, dy, placement, what, eps=EPS):
    """Kernel vs fp64 reference vs PyTorch in x's dtype, for y, dx and dw. Weight is a leaf per run."""
    ref = run(lambda a, b: reference_rmsnorm(a, b, eps, placement), x.double(), w.double(), dy.double())
    base = run(lambda a, b: pytorch_rmsnorm(a, b, eps, placement), x, w, dy)

    xk = x.detach().clone().requires_grad_(True)
    module = TritonRMSNorm(x.shape[-1], eps=eps, eps_placement=placement).to(device=x.device, dtype=w.dtype)
    with torch.no_grad():
        module.weight.copy_(w)
    y = module(xk)
    y.backward(dy)
    got = (y.detach(), xk.grad, module.weight.grad)

    assert got[0].dtype == x.dtype and got[1].dtype == x.dtype and got[2].dtype == w.dtype
    for name, g, b, r in zip(("y", "dx", "dw"), got, base, ref):
        assert_fa_rule(g, b, r, f"{what} {name}")


def make_inputs(shape, dtype, seed=0):
    # Drawn on DEVICE: on one CPU thread, the fp64 draws of the GPU tests (paper sizes) took ~38 s.
    gen = torch.Generator(DEVICE).manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, device=DEVICE) * 2 + 0.5
    w = torch.rand(shape[-1], generator=gen, dtype=torch.float64, device=DEVICE) + 0.5
    dy = torch.randn(shape, generator=gen, dtype=torch.float64, device=DEVICE)
    return (x.to(DEVICE, dtype), w.to(DEVICE, dtype), dy.to(DEVICE, dtype))


@pytest.mark.parametrize("placement", ["inside", "outside"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", list(SHAPES))
def test_matches_fp64_reference(width, dtype, placement):
    x, w, dy = make_inputs((SHAPES[width], width), dtype)
    check_against_reference(x, w, dy, placement, f"{placement} {dtype} {SHAPES[width]}x{width}")


@pytest.mark.parametrize("placement", ["inside", "outside"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_eps_placement_with_a_large_eps(dtype, placement):
    # At eps=1e-6 the two placements agree to ~1e-6; eps=0.25 on small inputs tells them apart.
    x, w, dy = make_inputs((16, 100), dtype)
    x = (x * 0.2).to(dtype)
    check_against_reference(x, w, dy, placement, f"eps=0.25 {placement} {dtype}", eps=0.25)
    other = "outside" if placement == "inside" else "inside"
    gap = (reference_rmsnorm(x.double(), w.double(), 0.25, placement)
           - reference_rmsnorm(x.double(), w.double(), 0.25, other)).abs().max().item()
    assert gap > 0.05, "the inputs must make the placements differ for this test to mean anything"


@pytest.mark.parametrize("placement", ["inside", "outside"])
def test_3d_and_non_contiguous_inputs(placement):
    x, w, dy = make_inputs((3, 6, 2 * 100), torch.float32)
    # A column slice keeps unit stride (rows strided by 200: no copy), a step slice needs a copy,
    # a transpose makes rows non-adjacent; the gradient is non-contiguous too.
    check_against_reference(x[..., :100], w[:100], dy[..., 100:], placement, "row-strided 3-D")
    check_against_reference(x[..., ::2], w[::2], dy[..., 1::2], placement, "column step 3-D")
    xt = x[..., :100].transpose(0, 1)
    check_against_reference(xt, w[:100], dy[..., :100].transpose(0, 1), placement, "transposed 3-D")


def test_mixed_dtypes_follow_nn_rmsnorm():
    # Under autocast the residual stream can be bf16 while the weight stays fp32: nn.RMSNorm returns
    # x's dtype and a weight gradient in the weight's dtype.
    x, _, dy = make_inputs((5, 64), torch.bfloat16)
    w = torch.rand(64, device=DEVICE) + 0.5
    check_against_reference(x, w, dy, "inside", "bf16 x, fp32 w")


def test_zero_row_gives_finite_gradients():
    x, w, dy = make_inputs((4, 64), torch.float32)
    x[1] = 0.0
    check_against_reference(x, w, dy, "inside", "zero row")
    # "outside" has no derivative at an all-zero row (PyTorch's autograd gives NaN there); the kernel
    # takes the one-sided value r * dy * w, which is what the reference gives on the other rows.
    _, dx, dw = run(triton_fn("outside"), x, w, dy)
    assert torch.isfinite(dx).all() and torch.isfinite(dw).all()
    torch.testing.assert_close(dx[1], dy[1] * w / EPS, rtol=1e-5, atol=0)


def test_gradients_accumulate_when_used_twice():
    x, w, dy = make_inputs((2, 9, 64), torch.float32)
    module = TritonRMSNorm(64).to(DEVICE)
    reference = torch.nn.RMSNorm(64, eps=EPS, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(w)
        reference.weight.copy_(w.double())
    xk = x.clone().requires_grad_(True)
    xr = x.double().requires_grad_(True)
    # Same module on two branches of one graph, one of them through its own output.
    (module(xk) * dy + module(module(xk) * 3.0)).sum().backward()
    (reference(xr) * dy.double() + reference(reference(xr) * 3.0)).sum().backward()
    torch.testing.assert_close(xk.grad, xr.grad.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(module.weight.grad, reference.weight.grad.float(), rtol=1e-4, atol=1e-5)
    # A second backward adds to what is there.
    first = module.weight.grad.clone()
    module(xk).mul(dy).sum().backward()
    expected = first + run(triton_fn("inside"), x, module.weight, dy)[2]
    torch.testing.assert_close(module.weight.grad, expected, rtol=1e-6, atol=1e-6)


def test_weight_gradient_is_deterministic():
    x, w, dy = make_inputs((64, 512), torch.float32)
    first = run(triton_fn("inside"), x, w, dy)
    second = run(triton_fn("inside"), x, w, dy)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# TritonAddRMSNorm is the same norm with a fused-add entry: its plain forward and state dict are these too.
@pytest.mark.parametrize("module_class", [TritonRMSNorm, TritonAddRMSNorm], ids=lambda c: c.__name__)
def test_module_interchanges_state_dict_with_nn_rmsnorm(module_class):
    torch_norm = torch.nn.RMSNorm(64, eps=EPS)
    with torch.no_grad():
        torch_norm.weight.uniform_(0.5, 1.5)
    triton_norm = module_class(64, eps=EPS)
    triton_norm.load_state_dict(torch_norm.state_dict())
    torch_norm.load_state_dict(triton_norm.state_dict())
    x = torch.randn(3, 64)
    y = triton_norm.to(DEVICE)(x.to(DEVICE)).cpu()
    torch.testing.assert_close(y, torch_norm(x), rtol=1e-5, atol=1e-6)
    assert "eps_placement='inside'" in repr(triton_norm)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="eps_placement"):
        TritonRMSNorm(8, eps_placement="middle")
    with pytest.raises(ValueError, match="shape"):
        TritonRMSNorm(8).to(DEVICE)(torch.randn(2, 9, device=DEVICE))
    with pytest.raises(TypeError, match="float32"):
        TritonRMSNorm(8).to(DEVICE)(torch.ones(2, 8, dtype=torch.float64, device=DEVICE))


def test_empty_input():
    module = TritonRMSNorm(16).to(DEVICE)
    x = torch.randn(0, 16, device=DEVICE, requires_grad=True)
    module(x).sum().backward()
    assert x.grad.shape == (0, 16) and torch.equal(module.weight.grad, torch.zeros(16, device=DEVICE))


@pytest.mark.gpu
@pytest.mark.parametrize("placement", ["inside", "outside"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(13824, 512), (2, 4096, 1365), (3000, 8192)], ids=str)
def test_large_shapes_on_gpu(shape, dtype, placement):
    x, w, dy = make_inputs(shape, dtype)
    check_against_reference(x, w, dy, placement, f"{placement} {dtype} {shape}")
