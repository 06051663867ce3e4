"""TritonQKNormRope (fused F.normalize * scale + rotary) against an fp64 reference, under FlashAttention's
rule (see accuracy.py), with PyTorch's own expression from models/attention.py in the same dtype as the
baseline.

On a machine without CUDA these run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET),
so shapes stay small: B*H*N of a few dozen rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from kernels import TritonQKNormRope, supports
from kernels.qknorm_rope import qk_norm_rope_backward, qk_norm_rope_forward, triton_qk_norm_rope
from tests.kernels.accuracy import assert_fa_rule
from tests.kernels.oplog import OpLog

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-12
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPE = (2, 3, 5)  # B, H, N: all odd or not a power of two
CHECKS = ("test_schema", "test_faketensor")
ops = torch.ops.ctclip_kernels

needs_kernels = pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))


def reference(t: torch.Tensor, scale: torch.Tensor, rope, eps: float = EPS) -> torch.Tensor:
    """Written out from the definition (not models' code), meant for fp64 inputs."""
    y = t / t.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(eps) * scale
    if rope is None:
        return y
    cos, sin = (c.to(y.dtype) for c in rope)
    half = y.shape[-1] // 2
    rotated = torch.cat([-y[..., half:], y[..., :half]], dim=-1)
    return y * cos + rotated * sin


def pytorch_expression(t: torch.Tensor, scale: torch.Tensor, rope, eps: float = EPS) -> torch.Tensor:
    """What models/attention.py runs: F.normalize in t's dtype, the fp32 scale promotes, apply_rotary."""
    y = F.normalize(t, dim=-1, eps=eps) * scale
    if rope is None:
        return y
    cos, sin = (c.to(y.dtype) for c in rope)
    first, second = y.chunk(2, dim=-1)
    return y * cos + torch.cat([-second, first], dim=-1) * sin


def model_view(batch: int, heads: int, n_seq: int, dim: int, dtype: torch.dtype,
               seed: int = 0) -> torch.Tensor:
    """(B, H, N, D) exactly as the model makes q and k: rearrange of a (B, N, H*D) projection (a view)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n_seq, heads * dim, generator=gen, dtype=torch.float64) * 2 + 0.5
    x = x.to(DEVICE, dtype)
    return x.view(batch, n_seq, heads, dim).permute(0, 2, 1, 3)


def make_rope(n_seq: int, dim: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    angles = torch.rand(n_seq, dim, generator=gen, dtype=torch.float64) * 6.3
    return angles.cos().float().to(DEVICE), angles.sin().float().to(DEVICE)


def make_scale(dim: int, dtype: torch.dtype = torch.float32, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(dim, generator=gen, dtype=torch.float64) + 0.5).to(DEVICE, dtype)


def transposed_dout(shape, dtype: torch.dtype, seed: int = 3) -> torch.Tensor:
    """A (B, H, N, D) gradient laid out (B, N, H, D): unit stride along D, h and n swapped."""
    gen = torch.Generator().manual_seed(seed)
    b, h, n, d = shape
    return torch.randn(b, n, h, d, generator=gen, dtype=torch.float64).to(DEVICE, dtype).transpose(1, 2)


def laid_out_like(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor whose (B, H, N) dimensions lie in memory in the order t's do, D unit-stride."""
    order = sorted(range(3), key=lambda d: -t.stride(d))
    dense = torch.empty([t.shape[d] for d in order] + [t.shape[3]])
    return dense.permute(*[order.index(d) for d in range(3)], 3)


def run(fn, t: torch.Tensor, scale: torch.Tensor, dout: torch.Tensor):
    """(out, dt, dscale) of fn on fresh leaf copies (same strides) of t and scale."""
    t = t.detach().clone().requires_grad_(True)
    scale = scale.detach().clone().requires_grad_(True)
    out = fn(t, scale)
    out.backward(dout.to(out.dtype))
    return out.detach(), t.grad, scale.grad


def check(t, scale, rope, dout, what, eps=EPS):
    """Kernel vs fp64 reference vs PyTorch in t's dtype, for out, dt and dscale."""
    rope64 = None if rope is None else tuple(c.double() for c in rope)
    ref = run(lambda a, s: reference(a, s, rope64, eps), t.double(), scale.double(), dout.double())
    base = run(lambda a, s: pytorch_expression(a, s, rope, eps), t, scale, dout)
    base = (base[0].to(t.dtype),) + base[1:]  # the output compared in t's dtype, what the kernel writes
    got = run(lambda a, s: triton_qk_norm_rope(a, s, rope, eps), t, scale, dout)
    # Written in t's layout: for the model's (B, N, H, D)-ordered view, so is the output (see
    # test_model_view_is_read_in_place for why).
    assert got[0].dtype == t.dtype and got[0].stride() == laid_out_like(t).stride()
    assert got[1].dtype == t.dtype and got[2].dtype == scale.dtype
    for name, g, b, r in zip(("out", "dt", "dscale"), got, base, ref):
        assert_fa_rule(g, b, r, f"{what} {name}")
    return got


@needs_kernels
@pytest.mark.parametrize("use_rope", [True, False], ids=["rope", "norope"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [16, 32, "odd"])
def test_matches_fp64_reference(dim, dtype, use_rope):
    if dim == "odd":  # rope needs an even D; D=6 still pads each half (3 of 4 lanes)
        dim = 6 if use_rope else 7
    t = model_view(*SHAPE, dim, dtype)
    assert not t.is_contiguous() and t.stride(-1) == 1
    rope = make_rope(SHAPE[2], dim) if use_rope else None
    check(t, make_scale(dim), rope, transposed_dout(t.shape, dtype), f"{dtype} D={dim} rope={use_rope}")


@needs_kernels
@pytest.mark.parametrize("layout", ["contiguous", "expanded", "column-step"])
def test_gradient_layouts(layout):
    t = model_view(*SHAPE, 16, torch.float32)
    gen = torch.Generator().manual_seed(4)
    if layout == "contiguous":
        dout = torch.randn(t.shape, generator=gen)
    elif layout == "expanded":  # stride 0 along B: read in place
        dout = torch.randn(1, *t.shape[1:], generator=gen).expand(t.shape)
    else:  # non-unit stride along D: the one layout that is copied
        dout = torch.randn(*t.shape[:-1], 32, generator=gen)[..., ::2]
    check(t, make_scale(16), make_rope(SHAPE[2], 16), dout.to(DEVICE), layout)


@needs_kernels
def test_several_programs_and_deterministic_dscale():
    # D=200 tiles 16 rows x 2 x 128 lanes: 78 rows make 5 tiles, 2 per program in the interpreter, so the
    # last program has a fully masked tile and dscale sums 3 partials.
    t = model_view(2, 3, 13, 200, torch.float32)
    scale, rope, dout = make_scale(200), make_rope(13, 200), transposed_dout(t.shape, torch.float32)
    first = check(t, scale, rope, dout, "D=200 78 rows")
    second = run(lambda a, s: triton_qk_norm_rope(a, s, rope), t, scale, dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@needs_kernels
def test_scale_in_the_input_dtype():
    t = model_view(*SHAPE, 16, torch.bfloat16)
    dout = transposed_dout(t.shape, torch.bfloat16)
    check(t, make_scale(16, torch.bfloat16), make_rope(SHAPE[2], 16), dout, "bf16 t, bf16 scale")


@needs_kernels
@pytest.mark.parametrize("use_rope", [True, False], ids=["rope", "norope"])
def test_zero_and_tiny_vectors_follow_f_normalize(use_rope):
    # ||x|| < eps: F.normalize divides by eps, and its autograd stops at the clamp, so dt = g / eps. A
    # zero vector alone would not tell (its xhat is 0), so one vector is tiny but not zero.
    t = model_view(*SHAPE, 16, torch.float32)
    t.data[1, 2, 3].zero_()
    t.data[0, 1, 4] *= 1e-14
    rope = make_rope(SHAPE[2], 16) if use_rope else None
    dout = transposed_dout(t.shape, torch.float32)
    got = run(lambda a, s: triton_qk_norm_rope(a, s, rope), t, make_scale(16), dout)
    want = run(lambda a, s: pytorch_expression(a, s, rope), t, make_scale(16), dout)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert got[1][1, 2, 3].abs().max() > 1e9  # the 1/eps branch was taken, not a zero
    assert got[0][0, 1, 4].abs().max() > 1e-3  # the tiny vector is scaled by 1/eps, not normalised


@needs_kernels
def test_model_view_is_read_in_place():
    t = model_view(*SHAPE, 16, torch.float32).requires_grad_(True)
    rope, scale = make_rope(SHAPE[2], 16), make_scale(16)
    with OpLog() as log:
        out = triton_qk_norm_rope(t, scale, rope)
    # Written back in the view's (B, N, H, D) order: SDPA's output follows q's layout, so attention's
    # `b h n d -> b n (h d)` before the output projection is then a view rather than a copy.
    assert out.transpose(1, 2).is_contiguous() and out.stride() == t.stride()
    assert not {"aten.clone", "aten.copy_", "aten._to_copy"} & set(log.names), log.names
    # A non-unit stride along D is copied once, and the result is still right.
    wide = torch.randn(*t.shape[:-1], 32, device=DEVICE)[..., ::2]
    with OpLog() as log:
        strided = triton_qk_norm_rope(wide, scale, rope)
    assert "aten.clone" in log.names
    torch.testing.assert_close(strided, pytorch_expression(wide, scale, rope), rtol=1e-5, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("use_rope", [True, False], ids=["rope", "norope"])
def test_opcheck(use_rope):
    t = model_view(*SHAPE, 16, torch.bfloat16)
    scale = make_scale(16)
    cos, sin = make_rope(SHAPE[2], 16) if use_rope else (None, None)
    torch.library.opcheck(ops.qk_norm_rope_forward.default, (t, scale, cos, sin, EPS), test_utils=CHECKS)
    out, r = qk_norm_rope_forward(t, scale, cos, sin, EPS)
    assert (out.shape, out.dtype, r.shape, r.dtype) == (t.shape, t.dtype, (30,), torch.float32)
    dout = transposed_dout(t.shape, torch.bfloat16)
    torch.library.opcheck(ops.qk_norm_rope_backward.default, (dout, t, scale, r, cos, sin, EPS),
                          test_utils=CHECKS)
    dt, dscale = qk_norm_rope_backward(dout, t, scale, r, cos, sin, EPS)
    assert (dt.shape, dt.dtype, dscale.shape, dscale.dtype) == (t.shape, t.dtype, (16,), torch.float32)


def test_fake_tensors_launch_nothing():
    # Fake tensors have no data, so a real launch would fail: passing shows the fake paths ran. No
    # interpreter or GPU is needed for that, so this test runs everywhere.
    with FakeTensorMode():
        module = TritonQKNormRope(16)
        x = torch.randn(3, 7, 4 * 16, dtype=torch.bfloat16)
        t = x.view(3, 7, 4, 16).permute(0, 2, 1, 3).requires_grad_(True)
        rope = (torch.randn(7, 16), torch.randn(7, 16))
        with OpLog() as log:
            out = module(t, rope)
            out.sum().backward()
        assert (out.shape, out.dtype) == ((3, 4, 7, 16), torch.bfloat16)
        assert t.grad.shape == t.shape and module.scale.grad.shape == (16,)
    kernel_ops = [n for n in log.names if n.startswith("ctclip_kernels.")]
    assert kernel_ops == ["ctclip_kernels.qk_norm_rope_forward", "ctclip_kernels.qk_norm_rope_backward"]


@needs_kernels
def test_module():
    module = TritonQKNormRope(16).to(DEVICE)
    assert torch.equal(module.scale.detach(), torch.ones(16, device=DEVICE))
    assert list(module.state_dict()) == ["scale"] and "16, eps=1e-12" in repr(module)
    t = model_view(*SHAPE, 16, torch.float32)
    rope = make_rope(SHAPE[2], 16)
    expected = pytorch_expression(t, module.scale, rope)
    torch.testing.assert_close(module(t, rope), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(module(t), F.normalize(t, dim=-1), rtol=1e-5, atol=1e-6)


@needs_kernels
def test_bad_arguments_are_named():
    t = model_view(*SHAPE, 16, torch.float32)
    with pytest.raises(ValueError, match="even"):
        triton_qk_norm_rope(model_view(*SHAPE, 7, torch.float32), make_scale(7), make_rope(SHAPE[2], 7))
    with pytest.raises(ValueError, match="scale"):
        triton_qk_norm_rope(t, make_scale(8))
    with pytest.raises(ValueError, match="cos/sin"):
        triton_qk_norm_rope(t, make_scale(16), make_rope(SHAPE[2] + 1, 16))
    with pytest.raises(ValueError, match="B, H, N, D"):
        triton_qk_norm_rope(t[0], make_scale(16))
    with pytest.raises(ValueError, match="256"):
        TritonQKNormRope(258)
    with pytest.raises(ValueError, match="shape"):
        TritonQKNormRope(8).to(DEVICE)(t)
    with pytest.raises(TypeError, match="float32"):
        triton_qk_norm_rope(t.double(), make_scale(16))


@needs_kernels
def test_empty_input():
    module = TritonQKNormRope(16).to(DEVICE)
    t = torch.randn(2, 3, 0, 16, device=DEVICE, requires_grad=True)
    module(t, make_rope(0, 16)).sum().backward()
    assert t.grad.shape == t.shape and torch.equal(module.scale.grad, torch.zeros(16, device=DEVICE))


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_nan_spreads_over_its_row_as_in_pytorch(dtype):
    # Compiled, tl.maximum drops a NaN unless told not to: the clamp would then scale the row's other
    # elements by 1/eps instead of making them NaN. (The interpreter's maximum keeps NaNs either way, so
    # on a CPU this pins the expected behaviour; on a GPU it checks the compiled kernel.)
    t = model_view(*SHAPE, 16, dtype)
    t[1, 2, 3, 5] = float("nan")
    rope = make_rope(SHAPE[2], 16)
    expected = pytorch_expression(t, make_scale(16), rope).isnan()
    got = triton_qk_norm_rope(t, make_scale(16), rope).isnan()
    assert expected[1, 2, 3].all() and expected.sum() == 16
    assert torch.equal(got, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("use_rope", [True, False], ids=["rope", "norope"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_paper_shape_on_gpu(dtype, use_rope):
    t = model_view(4, 8, 576, 32, dtype)
    rope = make_rope(576, 32) if use_rope else None
    check(t, make_scale(32), rope, transposed_dout(t.shape, dtype), f"paper {dtype} rope={use_rope}")
