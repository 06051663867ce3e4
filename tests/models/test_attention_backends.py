"""Every attention backend that can run on CPU agrees with CT-CLIP's explicit softmax (`math`).

Reference: `math` in fp64. Baseline: `math` in the tested dtype (PyTorch's own error). The backend
under test must satisfy FlashAttention's rule on the output and on the gradients of q, k, v and bias.
Shapes are odd (B=3, H=2, N=15 from a 3x5 slab, D=16) and the inputs non-contiguous.
"""

import pytest
import torch

from models import Variant
from models.attention_backends import ATTENTION
from models.attention import LOGIT_SCALE
from tests.models.fa_rule import assert_fa_rule

CPU = torch.device("cpu")


def _cpu_backends(with_bias: bool, training: bool = True) -> list[str]:
    variant = Variant(position="cpb" if with_bias else "none")
    names = [n for n in ATTENTION.names()
             if n != "math" and ATTENTION.supports(n, variant.replace(attention=n), CPU) is None]
    return names


def _inputs(dtype, with_bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Built as (B, N, H, D) and transposed: non-contiguous like the model's rearranged q/k/v.
    q, k, v = (torch.randn(3, 15, 2, 16, generator=gen, dtype=torch.float64).transpose(1, 2) for _ in range(3))
    q, k = (torch.nn.functional.normalize(t, dim=-1) for t in (q, k))
    bias = torch.randn(2, 15, 15, generator=gen, dtype=torch.float64) if with_bias else None
    grad_out = torch.randn(3, 2, 15, 16, generator=gen, dtype=torch.float64)
    return q, k, v, bias, grad_out


def _run(name, dtype, q, k, v, bias, grad_out):
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    # The bias stays fp32 as CT-CLIP computes it; fp64 only for the reference run.
    bias_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    bias_leaf = None if bias is None else bias.detach().to(bias_dtype).requires_grad_()
    out = ATTENTION.get(name).impl(*leaves, bias_leaf, LOGIT_SCALE)
    out.backward(grad_out.to(out.dtype))
    grads = [t.grad for t in leaves] + ([bias_leaf.grad] if bias_leaf is not None else [])
    return out.detach(), grads


def test_cpu_backend_lists_are_what_cpu_can_do():
    assert set(_cpu_backends(with_bias=False)) == {"sdpa", "sdpa_flash"}
    assert set(_cpu_backends(with_bias=True)) == {"sdpa"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_backend_matches_math_within_fa_rule(dtype, with_bias):
    inputs = _inputs(dtype, with_bias)
    reference_out, reference_grads = _run("math", torch.float64, *inputs)
    baseline_out, baseline_grads = _run("math", dtype, *inputs)
    backends = _cpu_backends(with_bias)
    assert backends
    for name in backends:
        out, grads = _run(name, dtype, *inputs)
        assert_fa_rule(out, baseline_out, reference_out, f"{name} output")
        for label, g, b, r in zip(("dq", "dk", "dv", "dbias"), grads, baseline_grads, reference_grads):
            assert_fa_rule(g, b, r, f"{name} {label}")


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_flex_forward_matches_math_on_cpu(with_bias):
    """FlexAttention has no CPU backward (so `supports` refuses it for training); its forward still must agree."""
    q, k, v, bias, _ = _inputs(torch.float32, with_bias)
    args = [t.float() for t in (q, k, v)] + [None if bias is None else bias.float()]
    reference = ATTENTION.get("math").impl(q, k, v, bias, LOGIT_SCALE)
    baseline = ATTENTION.get("math").impl(*args, LOGIT_SCALE)
    out = ATTENTION.get("flex").impl(*args, LOGIT_SCALE)
    assert_fa_rule(out, baseline, reference, "flex output")
    reason = ATTENTION.supports("flex", Variant(attention="flex"), CPU)
    assert reason and "backward" in reason


@pytest.mark.parametrize("name,needle", [
    ("sdpa_efficient", "CUDA"), ("sdpa_cudnn", "CUDA"), ("flash_attn", "CUDA"), ("xformers", "CUDA"),
])
def test_cuda_only_backends_say_why_on_cpu(name, needle):
    reason = ATTENTION.supports(name, Variant(attention=name, position="none"), CPU)
    assert reason and needle in reason


def test_cudnn_refuses_a_learned_bias_and_fp32_on_cuda():
    # The reasons only: no GPU needed. cuDNN's op is not differentiable in its bias (checked on meta
    # tensors under torch 2.11) and has no fp32 kernel; a pinned call would fail with "No available kernel".
    cuda = torch.device("cuda")
    assert "learned" in ATTENTION.supports("sdpa_cudnn", Variant(attention="sdpa_cudnn", precision="bf16"), cuda)
    fp32 = Variant(attention="sdpa_cudnn", position="rope", precision="fp32")
    assert "fp16/bf16" in ATTENTION.supports("sdpa_cudnn", fp32, cuda)
    assert ATTENTION.supports("sdpa_cudnn", fp32.replace(precision="bf16"), cuda) is None


def test_flash_refuses_the_learned_bias_with_a_reason():
    reason = ATTENTION.supports("sdpa_flash", Variant(attention="sdpa_flash"), CPU)
    assert "learned" in reason and "position=cpb" in reason
