"""bench.cuda_autocast: under `cuda_autocast_policy()`, CPU autocast casts as CUDA autocast does.

The policy tables are checked against the installed torch twice: against the AutocastCUDA kernels its
dispatcher holds (which ops) and against ATen/autocast_mode.h (which policy each op has). The casts are
checked against what CUDA's policy documents for each category, computed here without autocast.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench import cuda_autocast
from bench.cuda_autocast import cuda_autocast_policy, cuda_policy_ops, policy_drift

BF16 = torch.bfloat16


def test_the_tables_name_exactly_the_ops_cuda_autocast_has_kernels_for():
    names = torch._C._dispatch_get_all_op_names()
    registered = {n.removeprefix("aten::") for n in names
                  if torch._C._dispatch_has_kernel_for_dispatch_key(n, "AutocastCUDA")}
    assert cuda_policy_ops() == registered
    assert policy_drift() == {"not_registered": [], "not_in_tables": []}


def _header_lists() -> dict[str, set[str]]:
    header = Path(torch.__file__).parent / "include" / "ATen" / "autocast_mode.h"
    if not header.exists():
        pytest.skip(f"{header} is not installed")
    text = header.read_text()
    lists = {}
    for macro in ("LOWER_PRECISION_FP", "FP32", "FP32_SET_OPT_DTYPE", "PROMOTE"):
        body = re.search(rf"#define AT_FORALL_{macro}\(_\)(.*?)(?:\n\n|\n#)", text, re.S).group(1)
        lists[macro] = {".".join(p.strip() for p in m.split(",")) for m in re.findall(r"_\(([^()]*)\)", body)}
    redispatch = re.search(r"#define AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE\(_\)(.*?)\n\n", text,
                           re.S).group(1)
    lists["FP32_APPEND_DTYPE"] = set(re.findall(r'"(norm\.[A-Za-z_]+)"', redispatch))
    return lists


def test_each_op_has_the_policy_atens_header_gives_it():
    lists = _header_lists()
    assert set(cuda_autocast.LOWER_PRECISION_FP) == lists["LOWER_PRECISION_FP"]
    assert set(cuda_autocast.FP32) == lists["FP32"]
    assert set(cuda_autocast.FP32_SET_OPT_DTYPE) == lists["FP32_SET_OPT_DTYPE"]
    assert set(cuda_autocast.PROMOTE) == lists["PROMOTE"]
    assert set(cuda_autocast.FP32_APPEND_DTYPE) == lists["FP32_APPEND_DTYPE"]


@pytest.fixture
def tensors():
    torch.manual_seed(0)
    # Odd sizes and a non-contiguous view: the policy must not depend on layout.
    x = torch.randn(3, 7, 10)[:, :, ::2]
    return x.to(BF16), torch.randn(5), torch.randn(5)


def test_fp32_ops_upcast_their_inputs_and_return_fp32(tensors):
    x, weight, bias = tensors
    with cuda_autocast_policy(), torch.autocast("cpu", BF16):
        normed = F.layer_norm(x, (5,), weight, bias)
        rms = F.rms_norm(x, (5,), weight.to(BF16))
        logs = torch.log(x.abs() + 1)
    assert normed.dtype == rms.dtype == logs.dtype == torch.float32
    torch.testing.assert_close(normed, F.layer_norm(x.float(), (5,), weight, bias), rtol=0, atol=0)
    torch.testing.assert_close(rms, F.rms_norm(x.float(), (5,), weight.to(BF16).float()), rtol=0, atol=0)
    torch.testing.assert_close(logs, torch.log((x.abs() + 1).float()), rtol=0, atol=0)  # abs, add: bf16


def test_set_opt_dtype_ops_return_fp32_unless_a_dtype_is_given(tensors):
    x, _, _ = tensors
    with cuda_autocast_policy(), torch.autocast("cpu", BF16):
        probabilities = x.softmax(dim=-1)
        total = x.sum(dim=(0, 2))
        norm = torch.linalg.vector_norm(x, dim=-1)
        kept = x.sum(dtype=BF16)
        positional = torch.ops.aten.softmax.int(x, -1, torch.float64)
    assert probabilities.dtype == total.dtype == norm.dtype == torch.float32
    torch.testing.assert_close(probabilities, x.float().softmax(dim=-1), rtol=0, atol=0)
    torch.testing.assert_close(total, x.float().sum(dim=(0, 2)), rtol=0, atol=0)
    assert kept.dtype == BF16 and positional.dtype == torch.float64


def test_the_cpu_policy_alone_keeps_bf16_and_the_registration_is_removed_on_exit(tensors):
    x, weight, bias = tensors
    with cuda_autocast_policy():
        with cuda_autocast_policy():  # nested: a no-op
            pass
        with torch.autocast("cpu", BF16):
            assert x.softmax(-1).dtype == torch.float32
    with torch.autocast("cpu", BF16):
        assert F.layer_norm(x, (5,), weight.to(BF16), bias.to(BF16)).dtype == BF16
        assert x.softmax(-1).dtype == BF16
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("aten::layer_norm", "AutocastCPU")


def test_lower_precision_promote_append_dtype_and_banned(tensors):
    x, weight, _ = tensors
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    with cuda_autocast_policy(), torch.autocast("cpu", BF16):
        product = torch.einsum("ij,jk->ik", a, b)  # CUDA-only lower-precision op
        matmul = a @ b  # shared with the CPU policy: the CPU's own kernel
        promoted = torch.addcmul(x, weight, x)  # bf16 and fp32 -> fp32
        joined = torch.cat([x, weight.expand(3, 7, 5)], dim=0)  # the CPU's promote rule is neutralised
        norm = torch.norm(x)
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            F.binary_cross_entropy(torch.rand(4), torch.rand(4))
        double = F.layer_norm(x.double(), (5,))  # fp64 is never cast
    assert product.dtype == matmul.dtype == BF16
    torch.testing.assert_close(product, (a.to(BF16) @ b.to(BF16)), rtol=0, atol=0)
    assert promoted.dtype == joined.dtype == norm.dtype == torch.float32
    torch.testing.assert_close(promoted, torch.addcmul(x.float(), weight, x.float()), rtol=0, atol=0)
    torch.testing.assert_close(norm, torch.norm(x.float()), rtol=0, atol=0)
    assert double.dtype == torch.float64


def test_casts_are_differentiable_and_gradients_reach_fp32_leaves():
    torch.manual_seed(0)
    x = torch.randn(4, 6, requires_grad=True)
    weight = torch.randn(6, requires_grad=True)
    with cuda_autocast_policy(), torch.autocast("cpu", BF16):
        loss = F.layer_norm(x.to(BF16), (6,), weight).softmax(-1).pow(2).sum()
    loss.backward()
    reference_x = x.detach().clone().requires_grad_()
    reference_w = weight.detach().clone().requires_grad_()
    F.layer_norm(reference_x.to(BF16).float(), (6,), reference_w).softmax(-1).pow(2).sum().backward()
    assert x.grad.dtype == weight.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, reference_x.grad)
    torch.testing.assert_close(weight.grad, reference_w.grad)


def test_an_uncached_weight_cast_is_reported():
    weight = torch.nn.Parameter(torch.randn(4, 5))
    with cuda_autocast_policy(), torch.autocast("cpu", BF16):
        with pytest.warns(UserWarning, match="not cached"):
            torch.einsum("ij,jk->ik", torch.randn(3, 4), weight)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torch.einsum("ij,jk->ik", torch.randn(3, 4), torch.randn(4, 5))


def test_an_op_this_build_lacks_is_skipped_not_fatal(monkeypatch):
    # The GPU machine runs an older torch; a table op it does not have must not stop the estimate.
    monkeypatch.setattr(cuda_autocast, "FP32", (*cuda_autocast.FP32, "an_op_from_a_later_torch"))
    assert "an_op_from_a_later_torch" in policy_drift()["not_registered"]
    with cuda_autocast_policy(), torch.autocast("cpu", BF16):
        assert torch.ones(2, 3, dtype=BF16).softmax(-1).dtype == torch.float32


@pytest.mark.parametrize("registered, expected", [(True, torch.float32), (False, BF16)])
def test_a_table_op_follows_this_builds_cuda_registration(monkeypatch, tensors, registered, expected):
    # torch 2.13 registers an AutocastCUDA rule for rms_norm (fp32); torch 2.11, the GPU machine's,
    # registers none, so on its GPU the op keeps its input's dtype, and so must the estimate made there.
    x, weight = tensors[0], tensors[1].to(BF16)
    real = cuda_autocast.registered_ops

    def registered_ops(key):
        ops = real(key)
        return (ops | {"rms_norm"} if registered else ops - {"rms_norm"}) if key == "AutocastCUDA" else ops

    monkeypatch.setattr(cuda_autocast, "registered_ops", registered_ops)
    assert ("rms_norm" in policy_drift()["not_registered"]) is not registered
    with cuda_autocast_policy(), torch.autocast("cpu", BF16):
        assert F.rms_norm(x, (5,), weight).dtype == expected
        assert x.softmax(-1).dtype == torch.float32  # the rest of the policy applies either way
