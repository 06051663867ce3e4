"""Each kernel launch is a torch custom op: schema and fake implementation agree with the real kernel
(torch.library.opcheck), and on fake tensors the modules step without launching anything, showing one
op per launch to dispatch modes (what bench.estimate counts)."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from kernels import TritonRMSNorm, TritonSwiGLU, supports
from kernels.add_rmsnorm import add_rmsnorm_backward, add_rmsnorm_forward
from kernels.rmsnorm import rmsnorm_backward, rmsnorm_forward
from kernels.swiglu import gated_backward, gated_forward
from tests.kernels.accuracy import assert_compiled_grads_match_eager
from tests.kernels.oplog import OpLog

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ops = torch.ops.ctclip_kernels
# opcheck's schema and fake-tensor checks; autograd lives in the autograd.Functions around the ops.
CHECKS = ("test_schema", "test_faketensor")


def _x(*shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, device=DEVICE, dtype=dtype)


@pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_rmsnorm(dtype):
    x = _x(3, 5, 37, dtype=dtype)[:, ::2]  # non-contiguous rows
    w = _x(37, dtype=dtype)
    torch.library.opcheck(ops.rmsnorm_forward.default, (x, w, 1e-6, "outside"), test_utils=CHECKS)
    y, r = rmsnorm_forward(x, w, 1e-6, "outside")
    assert r.shape == (x.numel() // 37,) and r.dtype == torch.float32
    dy = torch.randn_like(y)
    torch.library.opcheck(ops.rmsnorm_backward.default, (dy, x, w, r, "outside"), test_utils=CHECKS)
    dx, dw = rmsnorm_backward(dy, x, w, r, "outside")
    assert (dx.shape, dx.dtype, dw.shape, dw.dtype) == (x.shape, dtype, w.shape, dtype)


@pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck_add_rmsnorm(out_dtype):
    residual = _x(3, 5, 37)[:, ::2]  # non-contiguous rows
    branch = _x(3, 3, 37, dtype=torch.bfloat16)
    w = _x(37)
    args = (branch, residual, w, 1e-6, out_dtype, True)
    torch.library.opcheck(ops.add_rmsnorm_forward.default, args, test_utils=CHECKS)
    total, y, copy, r = add_rmsnorm_forward(*args)
    assert (total.shape, total.dtype, y.dtype, copy.shape, r.shape) == ((9, 37), torch.float32, out_dtype,
                                                                         (9, 37), (9,))
    dy, d_sum = torch.randn_like(y), torch.randn_like(total)
    for d_copy in (None, torch.randn_like(copy)):
        back = (dy, d_sum, d_copy, total, w, r, torch.bfloat16)
        torch.library.opcheck(ops.add_rmsnorm_backward.default, back, test_utils=CHECKS)
    d_residual, d_branch, dw = add_rmsnorm_backward(*back)
    assert (d_residual.dtype, d_branch.shape, d_branch.dtype, dw.shape) == (torch.float32, (9, 37),
                                                                            torch.bfloat16, (37,))


@pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))
@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
def test_opcheck_gated(activation):
    x = _x(4, 3, 2 * 43)
    torch.library.opcheck(ops.gated_forward.default, (x, activation), test_utils=CHECKS)
    out = gated_forward(x, activation)
    assert out.shape == (4, 3, 43)
    dout = torch.randn_like(out)
    torch.library.opcheck(ops.gated_backward.default, (dout, x, activation), test_utils=CHECKS)
    assert gated_backward(dout, x, activation).shape == x.shape


def test_fake_tensors_launch_nothing_and_show_one_op_per_kernel():
    # Fake tensors have no data, so a real launch would fail: passing shows the fake paths ran.
    # No interpreter or GPU is needed for that, so this test runs everywhere.
    with FakeTensorMode():
        norm, act = TritonRMSNorm(24), TritonSwiGLU()
        x = torch.randn(5, 7, 48, dtype=torch.bfloat16, requires_grad=True)
        log = OpLog()
        with log:
            y = act(x)
            z = norm(y)
            z.sum().backward()
        assert (y.shape, z.shape, z.dtype) == ((5, 7, 24), (5, 7, 24), torch.bfloat16)
        assert x.grad.shape == x.shape and norm.weight.grad.shape == (24,)
    kernel_ops = [n for n in log.names if n.startswith("ctclip_kernels.")]
    assert kernel_ops == ["ctclip_kernels.gated_forward", "ctclip_kernels.rmsnorm_forward",
                          "ctclip_kernels.rmsnorm_backward", "ctclip_kernels.gated_backward"]


@pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))
def test_compiled_module_keeps_the_kernels_in_one_graph():
    # torch.compile sees each launch as one opaque op: no graph break (fullgraph), eager's numbers.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 34), TritonSwiGLU(), TritonRMSNorm(17)).to(DEVICE)
    assert_compiled_grads_match_eager(model, _x(6, 5, 16))


class _AddNormBlock(torch.nn.Module):
    """A pre-norm residual block on TritonAddRMSNorm, as models.transformer.Layer uses it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        from kernels import TritonAddRMSNorm

        self.branch, self.norm, self.out = (torch.nn.Linear(width, width), TritonAddRMSNorm(width),
                                            torch.nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total, normed, copy = self.norm.add_and_norm(self.branch(x), x, sum_copy=True)
        return self.out(normed) + copy * total


def test_fused_add_norm_on_fake_tensors_is_one_op_each_way():
    # What bench.estimate sees of norm=add_rmsnorm_triton: one forward and one backward op per call, with
    # the outputs' dtypes autocast gives (fp32 stream, bf16 norm and copy) and bf16 gradients for the branch.
    from kernels import TritonAddRMSNorm

    with FakeTensorMode():
        norm = TritonAddRMSNorm(24)
        residual = torch.randn(5, 7, 24, requires_grad=True)
        branch = torch.randn(5, 7, 24, dtype=torch.bfloat16, requires_grad=True)
        log = OpLog()
        with log, torch.autocast("cpu", dtype=torch.bfloat16):
            total, y, copy = norm.add_and_norm(branch, residual, sum_copy=True)
            (total.sum() + y.float().sum() + copy.float().sum()).backward()
        assert (total.dtype, y.dtype, copy.dtype) == (torch.float32, torch.bfloat16, torch.bfloat16)
        assert (residual.grad.dtype, branch.grad.dtype) == (torch.float32, torch.bfloat16)
    kernel_ops = [n for n in log.names if n.startswith("ctclip_kernels.")]
    assert kernel_ops == ["ctclip_kernels.add_rmsnorm_forward", "ctclip_kernels.add_rmsnorm_backward"]


@pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_compiled_fused_add_norm_keeps_the_kernels_in_one_graph(autocast):
    # The GPU check compiles the fastest candidate, which runs the fused add under autocast: no graph
    # break (the autocast dtype is read while tracing), eager's numbers.
    torch.manual_seed(0)
    assert_compiled_grads_match_eager(_AddNormBlock(24).to(DEVICE), _x(5, 3, 24), autocast)
