"""bench.cuda_sdpa: the fake step's attention runs the kernel a CUDA build on an sm80+ GPU would choose.

The choice is checked against the rules of sdp_utils.cpp case by case (mask, dtype, head size, storage
offset, the `sdpa_kernel` flags and the priority order); the mode against the ops it must launch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.cell import CellSpec
from bench.cuda_sdpa import CudaSdpaMode, NoCudaKernel, NotEmulated, cuda_sdp_choice
from bench.estimate import estimate_cell
from bench.gpu_dispatch import buildable_on_cpu, choose_attention_as_on_cuda, use_attention_backend
from models import SIZES, Variant, build
from models.attention import Attention
from tests.kernels.oplog import OpLog

BF16 = torch.bfloat16
EFFICIENT = "aten._scaled_dot_product_efficient_attention"


def _qkv(heads: int = 4, n: int = 24, d: int = 32, dtype: torch.dtype = BF16) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(2, heads, n, d, dtype=dtype) for _ in range(3))


def test_flash_without_a_mask_in_half_precision_else_memory_efficient():
    q, k, v = _qkv()
    mask = torch.randn(1, 4, 24, 24, dtype=BF16)
    assert cuda_sdp_choice(q, k, v) == SDPBackend.FLASH_ATTENTION
    assert cuda_sdp_choice(q, k, v, mask) == SDPBackend.EFFICIENT_ATTENTION  # flash takes no mask
    assert cuda_sdp_choice(*_qkv(dtype=torch.float32)) == SDPBackend.EFFICIENT_ATTENTION  # flash: fp16/bf16
    assert cuda_sdp_choice(*_qkv(d=264)) == SDPBackend.EFFICIENT_ATTENTION  # flash: head size <= 256


def test_memory_efficient_needs_aligned_heads_and_storage_else_math():
    mask = torch.randn(1, 4, 24, 24, dtype=BF16)
    assert cuda_sdp_choice(*_qkv(d=12), mask) == SDPBackend.MATH  # 12 halves: not a multiple of 8
    fp32 = _qkv(d=12, dtype=torch.float32)
    assert cuda_sdp_choice(*fp32, mask) == SDPBackend.EFFICIENT_ATTENTION  # 12 floats: a multiple of 4
    packed = torch.randn(2, 4, 24, 3 * 32 + 4, dtype=BF16)
    q, k, v = packed[..., 4:36], packed[..., 36:68], packed[..., 68:100]  # storage offset 4: misaligned
    assert cuda_sdp_choice(q, k, v, mask) == SDPBackend.MATH
    q, k, v = _qkv()
    assert cuda_sdp_choice(q, k, v.transpose(-1, -2).contiguous().transpose(-1, -2), mask) == SDPBackend.MATH


def test_the_sdpa_kernel_flags_and_priority_order_are_followed():
    q, k, v = _qkv()
    with sdpa_kernel([SDPBackend.MATH]):
        assert cuda_sdp_choice(q, k, v) == SDPBackend.MATH
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION], set_priority=True):
        assert cuda_sdp_choice(q, k, v) == SDPBackend.EFFICIENT_ATTENTION
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        with pytest.raises(NoCudaKernel, match="No available kernel"):
            cuda_sdp_choice(*_qkv(d=12))
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]), pytest.raises(NotEmulated, match="cuDNN"):
        cuda_sdp_choice(q, k, v)


def _attention_ops(n: int, mask_dtype: torch.dtype) -> tuple[list[str], torch.Tensor]:
    log = OpLog()
    with FakeTensorMode():
        q, k, v = (t.requires_grad_() for t in _qkv(n=n))
        bias = torch.randn(4, n, n, dtype=BF16, requires_grad=True)
        mask = bias.unsqueeze(0) if mask_dtype == BF16 else torch.ones(2, 1, 1, n, dtype=torch.bool)
        with CudaSdpaMode(), log:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=8.0)
            out.float().sum().backward()
        assert out.shape == q.shape and q.grad.shape == q.shape
        return log.names, bias.grad


def test_a_learned_bias_runs_the_memory_efficient_kernel_and_gets_its_gradient():
    names, bias_grad = _attention_ops(32, BF16)
    assert names.count(EFFICIENT) == 1 and names.count(EFFICIENT + "_backward") == 1
    assert "aten._softmax" not in names and "aten.constant_pad_nd" not in names
    assert bias_grad is not None and bias_grad.shape == (4, 32, 32)


def test_a_mask_with_unaligned_strides_is_padded_as_the_cuda_composite_does():
    names, _ = _attention_ops(24, BF16)  # 24-wide rows: strides not multiples of 16
    assert "aten.constant_pad_nd" in names and names.count(EFFICIENT) == 1
    names, _ = _attention_ops(32, torch.bool)  # a boolean padding mask becomes additive
    assert "aten.masked_fill" in names and names.count(EFFICIENT) == 1


def test_flash_and_math_choices_run_the_cpu_kernels_with_unchanged_values():
    torch.manual_seed(0)
    q, k, v = _qkv(n=20)
    with CudaSdpaMode():
        flash = F.scaled_dot_product_attention(q, k, v)
        with sdpa_kernel([SDPBackend.MATH]):
            math = F.scaled_dot_product_attention(q, k, v)
    reference = torch.softmax((q.float() @ k.float().transpose(-1, -2)) / 32 ** 0.5, -1) @ v.float()
    torch.testing.assert_close(flash.float(), reference, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(math.float(), reference, rtol=2e-2, atol=2e-2)


def test_a_cuda_only_backend_is_built_as_its_stand_in_and_swapped_in():
    variant = Variant(attention="sdpa_efficient")
    assert buildable_on_cpu(variant) == Variant(attention="sdpa")
    assert buildable_on_cpu(Variant.faithful()) == Variant.faithful()
    model = build(buildable_on_cpu(variant), SIZES["tiny"])
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert use_attention_backend(model, "sdpa_efficient") == len(layers) > 0
    assert all(m.backend == "sdpa_efficient" for m in layers)
    assert use_attention_backend(model, "sdpa_efficient") == 0


def test_sdpa_efficient_is_estimated_under_cudas_dispatch_only():
    spec = CellSpec(variant=Variant(attention="sdpa_efficient", precision="bf16").as_dict(), size="tiny",
                    batch=2, device="cpu")
    assert estimate_cell(spec, dispatch="cuda").status == "ok"
    cpu = estimate_cell(spec, dispatch="cpu")
    assert cpu.status == "unsupported" and "CUDA GPUs only" in cpu.reason


def test_the_choice_holds_in_a_checkpointed_layers_recomputation():
    # Torch function modes are not active while autograd recomputes a checkpointed layer, so the choice
    # is set on the attention modules; a mode around the step would recompute with the CPU's kernels and
    # torch.utils.checkpoint would refuse the different set of saved tensors.
    variant = Variant.modern().replace(attention="sdpa_efficient", position="cpb_table", checkpointing=True,
                                       precision="bf16")
    spec = CellSpec(variant=variant.as_dict(), size="tiny", batch=2, device="cpu")
    result = estimate_cell(spec, dispatch="cuda")
    assert result.status == "ok", result.message


def test_attention_layers_are_wrapped_once():
    model = build(Variant.faithful(), SIZES["tiny"])
    layers = [m for m in model.modules() if type(m).__name__ in ("Attention", "BertSelfAttention")]
    assert choose_attention_as_on_cuda(model) == len(layers) > 0
    assert choose_attention_as_on_cuda(model) == 0


def test_a_variant_cuda_would_refuse_is_estimated_unsupported_with_the_reason():
    # sdpa_flash in fp32: CPU flash runs it, CUDA's flash kernel takes only fp16/bf16.
    spec = CellSpec(variant=Variant.modern().as_dict(), size="tiny", batch=2, device="cpu")
    result = estimate_cell(spec, dispatch="cuda")
    assert result.status == "unsupported" and "['FLASH_ATTENTION'] for torch.float32" in result.reason
    assert estimate_cell(spec, dispatch="cpu").status == "ok"


def test_the_probe_records_sdpas_order_and_the_summary_flags_cudnn_first():
    from bench.environment import describe_probe
    from bench.gpu_probe import sdp_priority_order

    order = sdp_priority_order(torch.device("cpu"))
    assert order == [SDPBackend(b).name for b in torch._C._get_sdp_priority_order()] and "MATH" in order
    (line,) = [x for x in describe_probe({"sdp_priority_order": order}, {}) if "SDPA" in x]
    assert ", ".join(order) in line and "cuDNN" not in line
    # A CUDA build on an H100 with a recent cuDNN moves cuDNN first at its first call.
    cudnn_first = ["CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]
    (line,) = [x for x in describe_probe({"sdp_priority_order": cudnn_first}, {}) if "SDPA" in x]
    assert "may take cuDNN here, which the estimator does not emulate" in line
