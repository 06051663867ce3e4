"""The gated feed-forward with its gate in the matmul epilogues (kernels/gated_linear.py) against an fp64
evaluation of the layer, under FlashAttention's rule (see accuracy.py), and against the unfused layer
it replaces in the model (mlp=swiglu_triton / geglu_triton).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import supports
from tests.kernels.accuracy import assert_fa_rule
from tests.kernels.oplog import OpLog
from tests.kernels.test_gated import pytorch_geglu, pytorch_swiglu, reference_geglu, reference_swiglu

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rows, dim, F): odd sizes that leave partial tiles along every axis (rows, F and the reduction), one
# row, F = 1, a reduction shorter than tl.dot's 16, and a tile-aligned case.
SHAPES = [(37, 24, 21), (1, 16, 85), (70, 48, 1), (9, 5, 7), (64, 32, 64)]
GATES = {"swiglu": (reference_swiglu, pytorch_swiglu), "geglu": (reference_geglu, pytorch_geglu)}

pytestmark = pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))


def layer(gate, x, w_in, w_out):
    return F.linear(gate(F.linear(x, w_in)), w_out)


def fused(activation):
    from kernels.gated_linear import triton_gated_mlp

    return lambda x, w_in, w_out: triton_gated_mlp(x, w_in, w_out, activation)


def make_inputs(rows, dim, inner, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Weights at 2x nn.Linear's scale: pre-activations reach both tails of the gates.
    x = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    w_in = (torch.rand(2 * inner, dim, generator=gen, dtype=torch.float64) * 2 - 1) * 2 / dim ** 0.5
    w_out = (torch.rand(dim, inner, generator=gen, dtype=torch.float64) * 2 - 1) / inner ** 0.5
    dout = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    return [t.to(DEVICE, dtype) for t in (x, w_in, w_out, dout)]


def run(fn, x, w_in, w_out, dout):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w_in, w_out)]
    out = fn(*leaves)
    out.backward(dout.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("activation", list(GATES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_fp64_layer(shape, dtype, activation):
    reference_gate, pytorch_gate = GATES[activation]
    tensors = make_inputs(*shape, dtype)
    reference = run(lambda *t: layer(reference_gate, *t), *[t.double() for t in tensors])
    pytorch = run(lambda *t: layer(pytorch_gate, *t), *tensors)
    got = run(fused(activation), *tensors)
    for name, g, p, r in zip(("out", "dx", "dw_in", "dw_out"), got, pytorch, reference, strict=True):
        assert g.dtype == dtype, name
        assert_fa_rule(g, p, r, f"{activation} {dtype} {shape} {name}")


@pytest.mark.parametrize("activation", list(GATES))
def test_equals_the_unfused_triton_layer_under_autocast(activation):
    """What the model switches between: fp32 weights and input under bf16 autocast, the gate a kernel of its
    own (mlp=*_triton) or in the epilogues. The same roundings in the same places: only the order of fp32
    sums differs, so results agree to a bf16 ulp of the largest values."""
    from kernels.swiglu import triton_geglu, triton_swiglu

    separate_gate = triton_swiglu if activation == "swiglu" else triton_geglu
    x, w_in, w_out, dout = make_inputs(45, 40, 27, torch.float32, seed=1)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = run(fused(activation), x, w_in, w_out, dout)
        want = run(lambda *t: layer(separate_gate, *t), x, w_in, w_out, dout)
    for name, g, w in zip(("out", "dx", "dw_in", "dw_out"), got, want, strict=True):
        assert g.dtype == w.dtype, name
        torch.testing.assert_close(g.float(), w.float(), rtol=0, atol=2 ** -7 * w.float().abs().max().item(),
                                   msg=name)


def test_strided_3d_input_and_halves_not_swapped():
    x, w_in, w_out, dout = make_inputs(30, 16, 11, torch.float32)
    x3 = x.view(5, 6, 16).transpose(0, 1)  # non-contiguous [6, 5, 16]
    got = run(fused("swiglu"), x3, w_in, w_out, dout.view(5, 6, 16).transpose(0, 1))
    want = run(lambda *t: layer(pytorch_swiglu, *t), x3, w_in, w_out, dout.view(5, 6, 16).transpose(0, 1))
    assert got[0].shape == (6, 5, 16)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    # Gate and value play different roles: with the halves of w_in swapped the result must change.
    swapped = torch.cat([w_in[11:], w_in[:11]])
    assert (fused("swiglu")(x, swapped, w_out) - fused("swiglu")(x, w_in, w_out)).abs().max() > 0.1


def test_launches_two_kernels_and_never_materialises_the_gate_gradient():
    x, w_in, w_out, dout = make_inputs(33, 16, 21, torch.bfloat16)
    leaves = [t.requires_grad_(True) for t in (x, w_in, w_out)]
    with OpLog() as forward:
        out = fused("swiglu")(*leaves)
    with OpLog() as backward:
        out.backward(dout)
    assert forward.names.count("ctclip_kernels.gated_up_forward") == 1
    assert forward.names.count("aten.mm") == 1  # the down projection
    assert backward.names.count("ctclip_kernels.gated_down_grad") == 1
    assert backward.names.count("aten.mm") == 3  # dW_out, dx, dW_in
    # No [rows, F] gradient of h: no zeros written for it, no gate kernel run on its own.
    assert not {"aten.zeros", "aten.zero_", "aten.fill_", "aten.new_zeros", "ctclip_kernels.gated_backward",
                "ctclip_kernels.gated_forward"} & set(forward.names + backward.names)


def test_checkpointed_layer_gives_the_same_gradients():
    from torch.utils.checkpoint import checkpoint

    x, w_in, w_out, dout = make_inputs(21, 16, 13, torch.float32)
    plain = run(fused("geglu"), x, w_in, w_out, dout)
    recomputed = run(lambda *t: checkpoint(fused("geglu"), *t, use_reentrant=False), x, w_in, w_out, dout)
    for p, r in zip(plain, recomputed, strict=True):
        torch.testing.assert_close(p, r, rtol=0, atol=0)


def test_bad_inputs_are_named():
    from kernels.gated_linear import gated_up_forward

    x = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="activation must be one of"):
        gated_up_forward(x, torch.randn(6, 8, device=DEVICE), "relu", torch.float32)
    with pytest.raises(ValueError, match=r"weight \(2F, K\)"):
        gated_up_forward(x, torch.randn(5, 8, device=DEVICE), "swiglu", torch.float32)
    with pytest.raises(TypeError, match="share a dtype"):
        gated_up_forward(x, torch.randn(6, 8, device=DEVICE).bfloat16(), "swiglu", torch.float32)


def test_opcheck_and_empty_rows():
    from kernels.gated_linear import gated_down_grad, gated_up_forward

    ops = torch.ops.ctclip_kernels
    checks = ("test_schema", "test_faketensor")
    for dtype in (torch.float32, torch.bfloat16):
        x, w_in, w_out, dout = make_inputs(19, 16, 9, dtype)
        gu, _ = gated_up_forward(x, w_in, "geglu", dtype)
        torch.library.opcheck(ops.gated_up_forward.default, (x, w_in, "geglu", dtype), test_utils=checks)
        torch.library.opcheck(ops.gated_down_grad.default, (dout, w_out, gu, "geglu", dtype), test_utils=checks)
    gu, h = gated_up_forward(x[:0], w_in, "swiglu", dtype)
    assert gu.shape == (0, 18) and h.shape == (0, 9)
    assert gated_down_grad(dout[:0], w_out, gu, "swiglu", dtype).shape == (0, 18)


class _FeedForward(torch.nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj_in = torch.nn.Linear(dim, 2 * inner, bias=False)
        self.proj_out = torch.nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused("swiglu")(torch.tanh(x), self.proj_in.weight, self.proj_out.weight) + x


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_compiled_layer_keeps_the_kernels_in_one_graph(autocast):
    from tests.kernels.accuracy import assert_compiled_grads_match_eager

    torch.manual_seed(0)
    assert_compiled_grads_match_eager(_FeedForward(24, 13).to(DEVICE), torch.randn(3, 7, 24, device=DEVICE), autocast)
