"""TritonSwiGLU and TritonGEGLU against fp64 references, under FlashAttention's rule (see accuracy.py).

The semantics are the model's (models/mlp.py): SwiGLU a, b = x.chunk(2, -1) -> silu(a) * b;
GEGLU value, gate = x.chunk(2, -1) -> value * gelu(gate) with the exact erf GELU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernels import TritonGEGLU, TritonSwiGLU, supports
from tests.kernels.accuracy import assert_fa_rule

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# F -> rows: the widths (F = 85 is the tiny model's, 1365 the paper's), 1 to 64 rows.
SHAPES = {1: 64, 7: 33, 64: 5, 85: 17, 100: 17, 512: 8, 1365: 3}

pytestmark = pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))


def reference_swiglu(x: torch.Tensor) -> torch.Tensor:
    """From the definition, for fp64: a * sigmoid(a) * b."""
    a, b = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return a / (1 + torch.exp(-a)) * b


def reference_geglu(x: torch.Tensor) -> torch.Tensor:
    """From the definition, for fp64: value * gate * Phi(gate), Phi the normal CDF via erf."""
    value, gate = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return value * gate * 0.5 * (1 + torch.erf(gate / math.sqrt(2)))


def pytorch_swiglu(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return F.silu(a) * b


def pytorch_geglu(x: torch.Tensor) -> torch.Tensor:
    value, gate = x.chunk(2, dim=-1)
    return value * F.gelu(gate)


CASES = {
    "swiglu": (TritonSwiGLU, reference_swiglu, pytorch_swiglu),
    "geglu": (TritonGEGLU, reference_geglu, pytorch_geglu),
}


def run(fn, x: torch.Tensor, dout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward(dout)
    return out.detach(), x.grad


def check(kind: str, x: torch.Tensor, dout: torch.Tensor, what: str) -> None:
    module, reference, pytorch = CASES[kind]
    ref = run(reference, x.double(), dout.double())
    base = run(pytorch, x, dout)
    got = run(module(), x, dout)
    assert got[0].dtype == x.dtype and got[1].dtype == x.dtype
    for name, g, b, r in zip(("out", "dx"), got, base, ref):
        assert_fa_rule(g, b, r, f"{kind} {what} {name}")


def make_inputs(shape_2f: tuple[int, ...], dtype: torch.dtype, seed: int = 0):
    # Drawn on DEVICE: on one CPU thread, the fp64 draws of the GPU tests (paper sizes) took ~38 s.
    gen = torch.Generator(DEVICE).manual_seed(seed)
    # Scale 3 reaches both tails of the gates (saturated sigmoid / GELU) as well as the middle.
    x = torch.randn(shape_2f, generator=gen, dtype=torch.float64, device=DEVICE) * 3
    dout = torch.randn((*shape_2f[:-1], shape_2f[-1] // 2), generator=gen, dtype=torch.float64, device=DEVICE)
    return x.to(DEVICE, dtype), dout.to(DEVICE, dtype)


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", list(SHAPES))
def test_matches_fp64_reference(width, dtype, kind):
    x, dout = make_inputs((SHAPES[width], 2 * width), dtype)
    check(kind, x, dout, f"{dtype} {SHAPES[width]}x2*{width}")


@pytest.mark.parametrize("kind", list(CASES))
def test_3d_and_non_contiguous_inputs(kind):
    x, dout = make_inputs((3, 5, 4 * 85), torch.float32)
    # Row-strided (a slice of a wider projection: no copy), column-stepped (copy) and transposed.
    check(kind, x[..., : 2 * 85], dout[..., :85], "row-strided 3-D")
    check(kind, x[..., ::2], dout[..., 85:], "column step 3-D")
    check(kind, x[..., : 2 * 85].transpose(0, 1), dout[..., :85].transpose(0, 1), "transposed 3-D")


@pytest.mark.parametrize("kind", list(CASES))
def test_halves_are_not_swapped(kind):
    # Gate and value play different roles: swapping the halves must change the result.
    module, reference, _ = CASES[kind]
    x, _ = make_inputs((4, 2 * 7), torch.float32)
    swapped = torch.cat([x[..., 7:], x[..., :7]], dim=-1)
    out = module()(x)
    torch.testing.assert_close(out.double(), reference(x.double()), rtol=1e-5, atol=1e-6)
    assert (out - module()(swapped)).abs().max() > 0.1


@pytest.mark.parametrize("kind", list(CASES))
def test_gradients_accumulate_when_used_twice(kind):
    module, reference, _ = CASES[kind]
    x, dout = make_inputs((2, 6, 2 * 64), torch.float32)
    act = module()
    xk = x.clone().requires_grad_(True)
    xr = x.double().requires_grad_(True)
    # The same input through the module twice in one graph, once via a second, wider projection.
    (act(xk) * dout + act(torch.cat([act(xk), act(xk)], -1) * 2.0)).sum().backward()
    wider = torch.cat([reference(xr), reference(xr)], -1) * 2.0
    (reference(xr) * dout.double() + reference(wider)).sum().backward()
    torch.testing.assert_close(xk.grad.double(), xr.grad, rtol=1e-4, atol=1e-5)


def test_geglu_is_exact_erf_not_tanh():
    # At gate = -3 the exact and tanh GELUs differ by ~4e-4; fp32 resolves that easily.
    x = torch.tensor([[1.0, -3.0]], device=DEVICE)
    out = TritonGEGLU()(x).item()
    assert abs(out - F.gelu(torch.tensor(-3.0)).item()) < 1e-6
    assert abs(out - F.gelu(torch.tensor(-3.0), approximate="tanh").item()) > 3e-4


@pytest.mark.parametrize("module", [TritonSwiGLU, TritonGEGLU])
def test_bad_inputs_are_named(module):
    with pytest.raises(ValueError, match="even last dimension"):
        module()(torch.randn(2, 7, device=DEVICE))
    with pytest.raises(TypeError, match="float32"):
        module()(torch.randn(2, 8, dtype=torch.float64, device=DEVICE))
    assert list(module().parameters()) == []


@pytest.mark.gpu
@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(13824, 2 * 1365), (2, 4096, 2 * 85), (1000, 2 * 4096)], ids=str)
def test_large_shapes_on_gpu(shape, dtype, kind):
    x, dout = make_inputs(shape, dtype)
    check(kind, x, dout, f"{dtype} {shape}")
