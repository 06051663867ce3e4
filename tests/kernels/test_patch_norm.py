"""The patch-norm kernel (kernels/patch_norm.py) against upstream's rearrange + LayerNorm in fp64.

The reference is models/patch_embed.py's `eager` path run in fp64; the kernel must meet FlashAttention's
rule against it next to the same PyTorch expression in the kernel's dtypes. Volumes are small and
odd-sized (the Triton interpreter runs them on CPU): two channels, patches that are not powers of two
(150 and 45 voxels, so the row mask matters), a grid axis of 1, and strided volumes (a slice of a wider
one, a permuted one) whose gather addresses must follow the strides.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import supports
from tests.kernels.accuracy import assert_compiled_grads_match_eager, assert_fa_rule

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))
# (volume (B, C, D, H, W), temporal patch, patch): rows of 2*3*5*5 = 150 and 1*5*3*3 = 45 voxels.
CASES = [((2, 2, 6, 10, 15), 3, 5), ((3, 1, 5, 3, 12), 5, 3)]


def eager_patch_norm(volume, weight, bias, temporal_patch, patch):
    patches = rearrange(volume, "b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)",
                        pt=temporal_patch, p1=patch, p2=patch)
    return torch.nn.functional.layer_norm(patches, (patches.shape[-1],), weight, bias, 1e-5)


def triton_patch_norm(volume, weight, bias, temporal_patch, patch):
    from kernels.patch_norm import triton_patch_layer_norm

    return triton_patch_layer_norm(volume, weight, bias, temporal_patch, patch, 1e-5)


def make_inputs(shape, temporal_patch, patch, seed=0):
    """(volume, weight, bias, dout) in fp64 on DEVICE; the volume off-centre and scaled as CT values are."""
    gen = torch.Generator().manual_seed(seed)
    b, c, d, h, w = shape
    width = c * temporal_patch * patch * patch
    volume = torch.randn(shape, generator=gen, dtype=torch.float64) * 300 - 200
    weight = 1 + torch.randn(width, generator=gen, dtype=torch.float64) / 4
    bias = torch.randn(width, generator=gen, dtype=torch.float64) / 4
    dout = torch.randn(b, d // temporal_patch, h // patch, w // patch, width, generator=gen, dtype=torch.float64)
    return [t.to(DEVICE) for t in (volume, weight, bias, dout)]


def run(fn, volume, weight, bias, dout, patching, dtype, autocast=False, view=None):
    """Output and (dvolume, dweight, dbias) of fn on fresh leaves in `dtype`; `view` maps the leaf volume
    to the tensor the patch norm reads."""
    volume, weight, bias = (t.detach().to(dtype).clone().requires_grad_(True) for t in (volume, weight, bias))
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        out = fn(volume if view is None else view(volume), weight, bias, *patching)
        if autocast:  # what the projection reads: autocast's cast of LayerNorm's fp32 output
            out = out.to(torch.bfloat16)
    (out.float() * dout.to(out.dtype).float()).sum().backward()
    return out.detach(), (volume.grad, weight.grad, bias.grad)


def check(volume, weight, bias, dout, patching, what, autocast=False, view=None):
    reference = run(eager_patch_norm, volume, weight, bias, dout, patching, torch.float64, view=view)
    baseline = run(eager_patch_norm, volume, weight, bias, dout, patching, torch.float32, autocast, view)
    got = run(triton_patch_norm, volume, weight, bias, dout, patching, torch.float32, autocast, view)
    for name, g, b, r in zip(("out", "dvolume", "dweight", "dbias"), (got[0], *got[1]),
                             (baseline[0], *baseline[1]), (reference[0], *reference[1])):
        assert g.dtype == b.dtype, f"{what} {name}: dtype {g.dtype}, the eager path gives {b.dtype}"
        assert_fa_rule(g, b, r, f"{what} {name}")
    return got, baseline


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fp32_matches_fp64_layer_norm(case):
    shape, *patching = case
    check(*make_inputs(shape, *patching), patching, f"fp32 {case}")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bf16_autocast_writes_what_the_projection_reads(case):
    # Under autocast upstream's LayerNorm runs in fp32 and the projection casts its output to bf16: the
    # kernel writes that bf16 directly, and the parameters' and the volume's gradients stay fp32.
    shape, *patching = case
    inputs = make_inputs(shape, *patching, seed=1)
    (out, grads), (eager_out, _) = check(*inputs, patching, f"bf16 autocast {case}", autocast=True)
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads)
    # Both round the same fp32 values once; only the fp32 sums' order differs, so almost all are equal.
    differing = (out != eager_out).float().mean().item()
    assert differing <= 0.01, f"{differing:.1%} of the patches differ from autocast's cast of LayerNorm"


def test_strided_volumes():
    # The gather follows the volume's strides: a slice of a wider volume and a permuted (non-contiguous,
    # channels-last-like) one, with a grid axis of 1.
    shape, temporal_patch, patch = (2, 2, 3, 6, 4), 3, 2
    volume, weight, bias, dout = make_inputs(shape, temporal_patch, patch, seed=2)
    wide = torch.cat([volume, torch.randn_like(volume)[..., :3]], dim=-1)
    check(wide, weight, bias, dout, (temporal_patch, patch), "slice", view=lambda leaf: leaf[..., :4])
    channels_last = volume.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)
    assert not channels_last.is_contiguous()
    check(channels_last, weight, bias, dout, (temporal_patch, patch), "permuted")


class _BackwardOutputs(TorchDispatchMode):
    """Records what each patch_layer_norm_backward call returned."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.Tensor, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func._overloadpacket) == "ctclip_kernels.patch_layer_norm_backward":
            self.seen.append(out)
        return out


def test_saves_no_patch_copy_and_skips_the_volume_gradient():
    # What the backward keeps: the volume itself (the batch, no copy), the weight and two fp32 numbers per
    # patch; upstream keeps the fp32 patch matrix. A volume that needs no gradient gets none computed,
    # and the parameters' gradients are unchanged by that.
    (shape, *patching) = CASES[0]
    volume, weight, bias, dout = (t.float() for t in make_inputs(shape, *patching))
    weight.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = triton_patch_norm(volume, weight, bias, *patching)
    rows = out.numel() // out.shape[-1]
    assert any(t is volume for t in saved)
    assert sorted(((tuple(t.shape), t.dtype) for t in saved), key=str) == sorted(
        [(tuple(volume.shape), torch.float32), ((weight.numel(),), torch.float32), ((rows,), torch.float32),
         ((rows,), torch.float32)], key=str)
    with _BackwardOutputs() as backward_outputs:
        (out * dout).sum().backward()
    assert [dx.numel() for dx, _, _ in backward_outputs.seen] == [0]
    expected = weight.detach().clone().requires_grad_(True)
    (eager_patch_norm(volume, expected, bias, *patching) * dout).sum().backward()
    torch.testing.assert_close(weight.grad, expected.grad, rtol=1e-5, atol=1e-4)


def test_opcheck_empty_batch_and_bad_shapes():
    from kernels.patch_norm import patch_layer_norm_backward, patch_layer_norm_forward

    ops = torch.ops.ctclip_kernels
    checks = ("test_schema", "test_faketensor")
    (shape, *patching) = CASES[1]
    volume, weight, bias, dout = (t.float() for t in make_inputs(shape, *patching))
    for out_dtype in (torch.float32, torch.bfloat16):
        torch.library.opcheck(ops.patch_layer_norm_forward.default,
                              (volume, weight, bias, *patching, 1e-5, out_dtype), test_utils=checks)
    _, mean, rstd = patch_layer_norm_forward(volume, weight, bias, *patching, 1e-5, torch.float32)
    for want_dx in (False, True):
        torch.library.opcheck(ops.patch_layer_norm_backward.default,
                              (dout.bfloat16(), volume, weight, mean, rstd, *patching, want_dx), test_utils=checks)
    empty = volume[:0]
    out, mean, rstd = patch_layer_norm_forward(empty, weight, bias, *patching, 1e-5, torch.float32)
    dx, dweight, dbias = patch_layer_norm_backward(out, empty, weight, mean, rstd, *patching, True)
    assert out.shape == (0, *dout.shape[1:]) and dx.shape == empty.shape
    assert not dweight.any() and not dbias.any()
    with pytest.raises(ValueError, match="does not divide"):
        patch_layer_norm_forward(volume[..., :-1], weight, bias, *patching, 1e-5, torch.float32)
    with pytest.raises(ValueError, match="weight and bias"):
        patch_layer_norm_forward(volume, weight[:-1], bias[:-1], *patching, 1e-5, torch.float32)


class _PatchBlock(torch.nn.Module):
    """The patch norm, then the projection, as models.patch_embed.PatchEmbed runs them."""

    def __init__(self, width: int, patching: tuple[int, int]) -> None:
        super().__init__()
        self.patching = patching
        self.norm = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Linear(width, 8)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.proj(triton_patch_norm(volume, self.norm.weight, self.norm.bias, *self.patching))


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_compiled_patch_norm_keeps_the_kernels_in_one_graph(autocast):
    torch.manual_seed(0)
    (shape, *patching) = CASES[1]
    assert_compiled_grads_match_eager(_PatchBlock(45, tuple(patching)).to(DEVICE),
                                      torch.randn(shape, device=DEVICE) * 100, autocast)


def test_on_fake_tensors_it_is_one_op_each_way():
    # What bench.estimate sees of patch_embed=triton: one op each way, bf16 patches under autocast.
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tests.kernels.oplog import OpLog

    with FakeTensorMode():
        volume = torch.randn(2, 1, 8, 12, 12)
        norm = torch.nn.LayerNorm(4 * 6 * 6)
        log = OpLog()
        with log, torch.autocast("cpu", dtype=torch.bfloat16):
            out = triton_patch_norm(volume, norm.weight, norm.bias, 4, 6)
            out.float().sum().backward()
        assert out.dtype == torch.bfloat16 and out.shape == (2, 2, 2, 2, 144)
        assert (norm.weight.grad.dtype, norm.bias.grad.dtype) == (torch.float32, torch.float32)
    kernel_ops = [n for n in log.names if n.startswith("ctclip_kernels.")]
    assert kernel_ops == ["ctclip_kernels.patch_layer_norm_forward", "ctclip_kernels.patch_layer_norm_backward"]
