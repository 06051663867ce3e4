"""bench.gpu_dispatch: the fake step follows the CUDA build where the CPU build dispatches otherwise (BERT's
attention with dropout as one fused SDPA kernel, rms_norm as one `_fused_rms_norm`, CUDA's autocast
policy), and only where asked."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from bench.estimate import dispatch_context, estimate_variant, fake_training_step
from bench.gpu_dispatch import dropout_as_on_cuda, foreach_as_on_cuda, fuse_attention_dropout, fused_rms_norm
from models import SIZES, Variant, build
from tests.kernels.oplog import OpLog

FLASH_CPU = "aten._scaled_dot_product_flash_attention_for_cpu"
EFFICIENT = "aten._scaled_dot_product_efficient_attention"


def test_only_the_attention_probability_dropout_is_set_to_zero():
    size = SIZES["tiny"]
    assert size.text_dropout > 0  # otherwise this test shows nothing
    model = build(Variant.faithful(), size)
    attention = [m for m in model.text_encoder.modules() if type(m).__name__ == "BertSelfAttention"]
    hidden = [m.dropout.p for m in model.text_encoder.modules() if type(m).__name__ == "BertSelfOutput"]
    assert fuse_attention_dropout(model) == len(attention) > 0
    assert all(m.dropout.p == 0.0 for m in attention)
    assert hidden and all(p == size.text_dropout for p in hidden)  # the residual-branch dropout stays
    assert fuse_attention_dropout(model) == 0


def _ops(dispatch: str, variant: Variant = Variant.faithful()) -> list[str]:
    mode, step = fake_training_step(variant, SIZES["tiny"], 2, dispatch)
    log = OpLog()
    with mode, dispatch_context(dispatch), log:
        step.backward(step.forward())
    return log.names


def test_gpu_choice_runs_bert_attention_as_one_fused_kernel():
    gpu, cpu = _ops("cuda"), _ops("cpu")
    layers = SIZES["tiny"].text_layers
    # The CPU build sends attention with dropout to the math path: a dropout mask per layer, no flash.
    assert cpu.count(FLASH_CPU) == 0 and cpu.count("aten.bernoulli_") >= layers
    # The CUDA build runs it fused; BERT's padding mask rules out flash, so memory-efficient.
    assert gpu.count(FLASH_CPU) == 0
    assert gpu.count(EFFICIENT) == layers and gpu.count(EFFICIENT + "_backward") == layers
    # The hidden-state dropouts (two per layer and the embeddings') run as CUDA's native_dropout.
    assert gpu.count("aten.bernoulli_") == 0
    assert gpu.count("aten.native_dropout") == cpu.count("aten.bernoulli_") - layers == 2 * layers + 1
    assert gpu.count("aten.native_dropout_backward") == 2 * layers + 1


def test_native_dropout_as_on_cuda():
    # F.dropout on CPU tensors is a composite (a mask in x's dtype, div_, mul); CUDA's is one
    # native_dropout that saves a bool mask. Same statistics: kept values scaled by 1/(1-p), others 0.
    dropout = torch.nn.Sequential(torch.nn.Dropout(0.25), torch.nn.Dropout(0.0), torch.nn.Dropout(1.0))
    assert dropout_as_on_cuda(dropout) == 1 and dropout_as_on_cuda(dropout) == 0
    x = torch.randn(4000, 64, dtype=torch.bfloat16, requires_grad=True)
    log = OpLog()
    with log:
        y = dropout[0](x)
    assert log.names == ["aten.native_dropout"]
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(y[kept], (x[kept] / 0.75).to(torch.bfloat16))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        dropout[0](x)
    assert [t.dtype for t in saved] == [torch.bool]
    y.float().sum().backward()
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.75))
    dropout.eval()
    assert dropout[0](x) is x


def test_fp32_estimates_differ_by_bert_attention_only():
    variant = Variant.faithful()  # fp32: autocast is off, and LayerNorm is not rms_norm
    gpu = estimate_variant(variant, SIZES["tiny"], 2, dispatch="cuda")
    cpu = estimate_variant(variant, SIZES["tiny"], 2, dispatch="cpu")
    for key in ("param_bytes", "grad_bytes", "optimizer_state_bytes"):
        assert gpu["memory"][key] == cpu["memory"][key]
    # The math path saves (B, heads, N, N) fp32 scores, probabilities and a dropout mask per layer.
    assert gpu["memory"]["saved_activations_bytes"] < cpu["memory"]["saved_activations_bytes"]
    assert gpu["roofline"]["step_s"] < cpu["roofline"]["step_s"]
    with pytest.raises(ValueError, match="dispatch"):
        fake_training_step(variant, SIZES["tiny"], 2, "tpu")
    with pytest.raises(ValueError, match="dispatch"):
        dispatch_context("gpu")


def _rms_norm_fp64(x: torch.Tensor, dims: int, weight: "torch.Tensor | None", eps: float) -> torch.Tensor:
    x = x.double()
    reduced = tuple(range(-dims, 0))
    y = x * torch.rsqrt(x.pow(2).mean(dim=reduced, keepdim=True) + eps)
    return y * weight.double() if weight is not None else y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,dims,with_weight",
                         [((3, 5, 7), 1, True), ((4, 3, 6), 2, True), ((5, 9), 1, False)])
def test_fused_rms_norm_matches_the_fp64_formula(dtype, shape, dims, with_weight):
    torch.manual_seed(0)
    base = torch.randn(shape[0], 2 * shape[1], *shape[2:], dtype=dtype)
    x = base[:, ::2].requires_grad_()  # a non-contiguous view
    weight = torch.randn(shape[-dims:], dtype=dtype, requires_grad=True) if with_weight else None
    grad = torch.randn(shape, dtype=dtype)
    with fused_rms_norm():
        y = F.rms_norm(x, shape[-dims:], weight, 1e-6)
        assert type(y.grad_fn).__name__ == "FusedRmsNormBackward0"
        y.backward(grad)
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_() if with_weight else None
    reference = _rms_norm_fp64(x64, dims, w64, 1e-6)
    reference.backward(grad.double())
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    assert y.dtype == x.grad.dtype == dtype
    torch.testing.assert_close(y.double(), reference, **tol)
    torch.testing.assert_close(x.grad.double(), x64.grad, **tol)
    if with_weight:
        assert weight.grad.dtype == dtype
        torch.testing.assert_close(weight.grad.double(), w64.grad, **tol)


def _saved_bytes(fn) -> int:
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


def test_fused_rms_norm_saves_only_the_input_its_weight_and_the_fp32_rstd():
    rows, dim = 37, 64
    x = torch.randn(rows, dim, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.ones(dim, dtype=torch.bfloat16, requires_grad=True)
    with fused_rms_norm():
        fused = _saved_bytes(lambda: F.rms_norm(x, (dim,), weight, 1e-6))
    composite = _saved_bytes(lambda: F.rms_norm(x, (dim,), weight, 1e-6))
    assert fused == x.nbytes + weight.nbytes + rows * 4
    assert composite > fused + x.nbytes  # the CPU build's decomposition keeps fp32 intermediates


def test_fused_rms_norm_is_removed_on_exit_even_after_an_error():
    with pytest.raises(KeyError):
        with fused_rms_norm():
            assert torch._C._dispatch_has_kernel_for_dispatch_key("aten::_fused_rms_norm", "CPU")
            raise KeyError("inside")
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("aten::_fused_rms_norm", "CPU")


def test_cuda_dispatch_runs_rms_norm_fused_and_bf16_softmax_in_fp32():
    modern = Variant.modern().replace(precision="bf16")
    cuda, cpu = _ops("cuda", modern), _ops("cpu", modern)
    norms = cuda.count("aten._fused_rms_norm")
    assert norms > 0 and cuda.count("aten._fused_rms_norm_backward") == norms
    assert "aten._fused_rms_norm" not in cpu

    for dispatch, expected in (("cuda", torch.float32), ("cpu", torch.bfloat16)):
        faithful = Variant.faithful().replace(precision="bf16")
        mode, step = fake_training_step(faithful, SIZES["tiny"], 2, dispatch)
        log = _SoftmaxDtypes()
        with mode, dispatch_context(dispatch), log:
            step.forward()
        # upstream's attention softmax over bf16 scores: fp32 under CUDA's autocast, bf16 under the CPU's
        assert log.dtypes and set(log.dtypes) == {expected}, dispatch


class _SoftmaxDtypes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket is torch.ops.aten._softmax:
            self.dtypes.append(out.dtype)
        return out


@pytest.mark.parametrize("variant", [Variant.faithful(), Variant.modern()], ids=["faithful", "modern"])
def test_cuda_dispatch_casts_no_weight_outside_the_autocast_cache(variant):
    mode, step = fake_training_step(variant.replace(precision="bf16"), SIZES["tiny"], 2, "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with mode, dispatch_context("cuda"):
            step.backward(step.forward())


def test_adamw_takes_the_foreach_path_cuda_parameters_get():
    # torch defaults to foreach only for CUDA parameters; on CPU it loops over parameters.
    cuda, cpu = (_optimizer_ops(d) for d in ("cuda", "cpu"))
    assert cuda.count("aten._foreach_addcdiv_") == 1 and "aten.addcdiv_" not in cuda
    assert cpu.count("aten.addcdiv_") > 1 and "aten._foreach_addcdiv_" not in cpu
    fused = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], fused=True)
    assert foreach_as_on_cuda(fused) == 0 and fused.param_groups[0]["foreach"] is None


def _optimizer_ops(dispatch: str) -> list[str]:
    mode, step = fake_training_step(Variant.faithful(), SIZES["tiny"], 2, dispatch)
    with mode, dispatch_context(dispatch):
        step.backward(step.forward())
        log = OpLog()
        with log:
            step.optimizer_step()
    return log.names
