"""GPU regressions (skipped without CUDA): the paper design's four rows at `small` size in bf16, and each
Triton kernel at the model's shapes, timed with a synchronising timer, allocator peak in extra_info.

    pytest tests/perf -m gpu --benchmark-enable                     # time and print
    pytest tests/perf -m gpu --benchmark-enable --benchmark-autosave # and save for the gate
See docs/perf-gate.md for the gate run on pull requests.
"""

from __future__ import annotations

import pytest
import torch

from bench.design import expand
from bench.perf_gate import PEAK_KEY
from bench.step import TrainStep
from models import SIZES, build, example_batch, supports
from tests.perf.helpers import clear_grads, measure_cuda

pytestmark = pytest.mark.gpu

PAPER_ROWS = expand("paper", precision="bf16")
SIZE = "small"
# The Triton kernels at the paper size: 13,824 tokens per volume x the paper batch (4) rows.
KERNEL_ROWS = 13824 * SIZES["paper"].batch
KERNEL_WIDTH = {"rmsnorm": SIZES["paper"].dim, "swiglu": SIZES["paper"].ff_inner,
                "geglu": SIZES["paper"].ff_inner}


@pytest.mark.parametrize("cell", PAPER_ROWS, ids=[c.key for c in PAPER_ROWS])
def test_paper_row_small_bf16(benchmark, cell):
    device = torch.device("cuda")
    if reason := supports(cell.variant, device):
        pytest.skip(reason)
    torch.manual_seed(0)
    model = build(cell.variant, SIZE, device=device)
    step = TrainStep(model, example_batch(SIZE, device=device))
    step()  # untimed: cuDNN plans, autotuning, AdamW's lazy state
    step.zero_grad()
    loss = measure_cuda(benchmark, step, setup=step.zero_grad)
    assert torch.isfinite(loss), loss
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    # Weights, their gradients and AdamW's two moments are resident at the peak, at the very least.
    assert benchmark.extra_info[PEAK_KEY] >= 4 * params
    benchmark.extra_info.update(variant=cell.key, size=SIZE, batch=SIZES[SIZE].batch, baseline=cell.baseline)


def _fp32_reference(kernel: str, x: torch.Tensor, weight: torch.Tensor | None, dy: torch.Tensor):
    from kernels.bench import eager_module

    module = eager_module(kernel, KERNEL_WIDTH[kernel]).to(x.device)
    if weight is not None:
        with torch.no_grad():
            module.weight.copy_(weight.float())
    xr = x.detach().float().requires_grad_(True)
    yr = module(xr)
    yr.backward(dy.float())
    return yr.detach(), xr.grad


@pytest.mark.parametrize("provider", ["triton", "eager"])
@pytest.mark.parametrize("kernel", ["rmsnorm", "swiglu", "geglu"])
def test_kernel_fwd_bwd_model_shape(benchmark, kernel, provider):
    from kernels import supports as kernel_supports
    from kernels.bench import build as build_provider

    device = torch.device("cuda")
    if provider == "triton" and (reason := kernel_supports(device)):
        pytest.skip(reason)
    width = KERNEL_WIDTH[kernel]
    module, _ = build_provider(kernel, provider, width)
    module = module.to(device=device, dtype=torch.bfloat16)
    gen = torch.Generator(device=device).manual_seed(0)
    in_width = width if kernel == "rmsnorm" else 2 * width
    x = torch.randn(KERNEL_ROWS, in_width, generator=gen, device=device).bfloat16().requires_grad_(True)
    dy = torch.randn(KERNEL_ROWS, width, generator=gen, device=device).bfloat16()
    weight = getattr(module, "weight", None)
    if weight is not None:
        with torch.no_grad():
            weight.copy_(torch.rand(width, generator=gen, device=device) + 0.5)

    # Correctness first (FlashAttention's rule): against fp32, the error is at most 2x that of eager bf16.
    ref_y, ref_dx = _fp32_reference(kernel, x, weight, dy)
    eager, _ = build_provider(kernel, "eager", width)
    eager = eager.to(device=device, dtype=torch.bfloat16)
    if weight is not None:
        with torch.no_grad():
            eager.weight.copy_(weight)
    errors = {}
    for name, mod in (("provider", module), ("eager", eager)):
        xk = x.detach().clone().requires_grad_(True)
        yk = mod(xk)
        yk.backward(dy)
        errors[name] = ((yk.float() - ref_y).abs().max().item(),
                        (xk.grad.float() - ref_dx).abs().max().item())
    for i, what in enumerate(("output", "dx")):
        assert errors["provider"][i] <= 2 * errors["eager"][i] + 1e-6, (what, errors)

    params = [x, *module.parameters()]
    measure_cuda(benchmark, lambda: module(x).backward(dy), setup=lambda: clear_grads(*params))
    benchmark.extra_info.update(kernel=kernel, provider=provider, rows=KERNEL_ROWS, width=width, dtype="bf16")


# The attention prologue at the paper's spatial layers: 4 volumes x 24 slabs, 8 heads, 24 x 24 tokens, D 32.
QK_SHAPE = (4 * 24, 8, 576, 32)


@pytest.mark.parametrize("provider", ["triton", "eager"])
def test_qk_norm_rope_fwd_bwd_model_shape(benchmark, provider):
    from kernels import supports as kernel_supports
    from models.position import AxialRotary
    from models.qk_norm import QK_NORMS

    device = torch.device("cuda")
    if provider == "triton" and (reason := kernel_supports(device)):
        pytest.skip(reason)
    batch, heads, n_seq, dim = QK_SHAPE
    gen = torch.Generator(device=device).manual_seed(0)
    # q as the model makes it: a (B, H, N, D) view of the (B, N, H*D) projection, bf16 under autocast.
    proj = torch.randn(batch, n_seq, heads * dim, generator=gen, device=device).bfloat16()
    proj.requires_grad_(True)
    t = proj.view(batch, n_seq, heads, dim).transpose(1, 2)
    scale = (torch.rand(dim, generator=gen, device=device) + 0.5).requires_grad_(True)
    rope = AxialRotary(dim)(24, 24, device).rope
    qk_norm = QK_NORMS.get(provider).impl
    out = qk_norm(t, scale, rope)
    dout = torch.randn(out.shape, generator=gen, device=device).to(out.dtype)

    # Correctness first (FlashAttention's rule): the output's error against fp64 is at most 2x eager bf16's.
    reference = QK_NORMS.get("eager").impl(t.double(), scale.double(), tuple(r.double() for r in rope))
    eager_error = (QK_NORMS.get("eager").impl(t, scale, rope).double() - reference).abs().max().item()
    assert (out.double() - reference).abs().max().item() <= 2 * eager_error + 1e-6

    measure_cuda(benchmark, lambda: qk_norm(t, scale, rope).backward(dout),
                 setup=lambda: clear_grads(proj, scale))
    benchmark.extra_info.update(kernel="qk_norm_rope", provider=provider, shape=list(QK_SHAPE), dtype="bf16")


@pytest.mark.parametrize("provider", ["triton_tf32", "torch_fp32"])
def test_vq_search_model_shape(benchmark, provider):
    from kernels import bench_vq
    from kernels import supports as kernel_supports

    device = torch.device("cuda")
    if provider.startswith("triton") and (reason := kernel_supports(device)):
        pytest.skip(reason)
    size = SIZES["paper"]
    x, codes = bench_vq.inputs(KERNEL_ROWS, size.codebook_size, size.dim, device)
    search = bench_vq.search_fn(provider)
    best, picked = bench_vq.fp64_scores_of(x, codes, search(x, codes))
    # tf32 picks a code within 4e-3 of the best at worst (kernels/vq_nearest.py); fp32 all but exactly.
    assert (best - picked).max().item() <= (4e-3 if provider.endswith("tf32") else 1e-5)
    measure_cuda(benchmark, lambda: search(x, codes))
    benchmark.extra_info.update(kernel="vq_search", provider=provider, tokens=KERNEL_ROWS,
                                codes=size.codebook_size, dim=size.dim)


@pytest.mark.parametrize("provider", ["triton_fused", "unfused"])
def test_add_rmsnorm_fwd_bwd_model_shape(benchmark, provider):
    """The residual add and the attention pre-norm of one paper-size layer under bf16 autocast: fp32
    stream, bf16 branch, norm and K/V copy in bf16; fused (norm=add_rmsnorm_triton) against the add,
    Triton RMSNorm and autocast's casts it replaces (norm=rmsnorm_triton)."""
    from kernels import TritonAddRMSNorm, TritonRMSNorm
    from kernels import supports as kernel_supports

    device = torch.device("cuda")
    if reason := kernel_supports(device):
        pytest.skip(reason)
    dim = SIZES["paper"].dim
    gen = torch.Generator(device=device).manual_seed(0)
    residual = torch.randn(KERNEL_ROWS, dim, generator=gen, device=device).requires_grad_(True)
    branch = torch.randn(KERNEL_ROWS, dim, generator=gen, device=device).bfloat16().requires_grad_(True)
    grads = [torch.randn(KERNEL_ROWS, dim, generator=gen, device=device) for _ in range(3)]
    fused, plain = TritonAddRMSNorm(dim).to(device), TritonRMSNorm(dim).to(device)

    def outputs():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if provider == "triton_fused":
                return fused.add_and_norm(branch, residual, sum_copy=True)
            total = branch + residual
            return total, plain(total).bfloat16(), total.bfloat16()

    def step():
        total, y, copy = outputs()
        torch.autograd.backward((total, y, copy), (grads[0], grads[1].bfloat16(), grads[2].bfloat16()))

    # Correctness first (FlashAttention's rule on the norm): error vs fp64 at most 2x the unfused path's.
    total64 = branch.double() + residual.double()
    reference = total64 * torch.rsqrt(total64.square().mean(-1, keepdim=True) + plain.eps)
    errors = {}
    for name, norm in (("fused", lambda: fused.add_and_norm(branch, residual)[1]),
                       ("unfused", lambda: plain(branch + residual).bfloat16())):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            errors[name] = (norm().double() - reference).abs().max().item()
    assert errors["fused"] <= 2 * errors["unfused"] + 1e-6, errors

    measure_cuda(benchmark, step, setup=lambda: clear_grads(residual, branch, *fused.parameters(),
                                                            *plain.parameters()))
    benchmark.extra_info.update(kernel="add_rmsnorm", provider=provider, rows=KERNEL_ROWS, width=dim,
                                dtype="fp32 stream, bf16 branch")


@pytest.mark.parametrize("provider", ["triton", "conv3d"])
def test_peg_conv_fwd_bwd_model_shape(benchmark, provider):
    """One paper-size PEG (4 x 24^3 tokens x 512 channels) forward and backward under bf16 autocast on the
    fp32 stream: the Triton kernel (peg_impl=triton) against upstream's pad + depthwise Conv3d, which on
    CUDA is PyTorch's own conv_depthwise3d (cuDNN takes no 5-D depthwise case)."""
    import copy

    from kernels import supports as kernel_supports
    from models.peg import PEG_IMPLS

    device = torch.device("cuda")
    if provider == "triton" and (reason := kernel_supports(device)):
        pytest.skip(reason)
    size = SIZES["paper"]
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(size.batch, *size.grid, size.dim, generator=gen, device=device).requires_grad_(True)
    dout = torch.randn(x.shape, generator=gen, device=device).bfloat16()
    conv = torch.nn.Conv3d(size.dim, size.dim, 3, groups=size.dim).to(device)
    convolve = PEG_IMPLS.get(provider).impl

    # Correctness first (FlashAttention's rule on the output): error vs fp64 at most 2x the Conv3d path's.
    with torch.no_grad():
        reference = PEG_IMPLS.get("conv3d").impl(x.double(), copy.deepcopy(conv).double())
        errors = {}
        for name in ("triton", "conv3d"):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                errors[name] = (PEG_IMPLS.get(name).impl(x, conv).double() - reference).abs().max().item()
    assert errors["triton"] <= 2 * errors["conv3d"] + 1e-6, errors

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = convolve(x, conv)
        out.backward(dout)

    measure_cuda(benchmark, step, setup=lambda: clear_grads(x, *conv.parameters()), rounds=5, warmup_rounds=2)
    benchmark.extra_info.update(kernel="peg_conv", provider=provider, grid=[size.batch, *size.grid],
                                channels=size.dim, dtype="fp32 stream, bf16 autocast")


@pytest.mark.parametrize("provider", ["fused", "unfused"])
def test_peg_add_conv_fwd_bwd_model_shape(benchmark, provider):
    """A layer's last residual add (fp32 stream + bf16 FF output) and the next PEG at the paper grid under
    bf16 autocast, with the sum also read downstream (as the next norm reads it): the add taken into the
    PEG kernels (kernels/peg_add_conv.py) against the add followed by the Triton PEG."""
    from kernels import supports as kernel_supports
    from models.peg import PEG_ADD_IMPLS, PEG_IMPLS

    device = torch.device("cuda")
    if reason := kernel_supports(device):
        pytest.skip(reason)
    size = SIZES["paper"]
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (size.batch, *size.grid, size.dim)
    x = torch.randn(shape, generator=gen, device=device).requires_grad_(True)
    branch = torch.randn(shape, generator=gen, device=device).bfloat16().requires_grad_(True)
    d_sum = torch.randn(shape, generator=gen, device=device)
    dout = torch.randn(shape, generator=gen, device=device).bfloat16()
    conv = torch.nn.Conv3d(size.dim, size.dim, 3, groups=size.dim).to(device)
    fused = PEG_ADD_IMPLS.get("triton").impl

    def unfused(grid, br, module):
        total = grid + br
        return total, PEG_IMPLS.get("triton").impl(total, module)

    add_and_convolve = fused if provider == "fused" else unfused

    # Correctness first: the fused path computes what the unfused one does (the same roundings and sums).
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        got, expected = fused(x, branch, conv), unfused(x, branch, conv)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.float(), e.float(), rtol=1e-2, atol=1e-2)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            total, out = add_and_convolve(x, branch, conv)
        torch.autograd.backward([total, out], [d_sum, dout])

    measure_cuda(benchmark, step, setup=lambda: clear_grads(x, branch, *conv.parameters()), rounds=5,
                 warmup_rounds=2)
    benchmark.extra_info.update(kernel="peg_add_conv", provider=provider, grid=[size.batch, *size.grid],
                                channels=size.dim, dtype="fp32 stream + bf16 branch, bf16 autocast")


@pytest.mark.parametrize("provider", ["triton", "eager"])
def test_patch_norm_fwd_bwd_paper_shape(benchmark, provider):
    """The paper's patch embedding input (a 4 x 1 x 240 x 480 x 480 fp32 volume cut into 10 x 20 x 20
    patches and LayerNorm'd) under bf16 autocast, forward to the bf16 patches the projection reads and
    backward to the norm's parameters: the Triton kernel (patch_embed=triton) against upstream's
    rearrange copy, LayerNorm and autocast's cast."""
    from kernels import supports as kernel_supports
    from models.patch_embed import PATCH_EMBEDS, PatchEmbed

    device = torch.device("cuda")
    if provider == "triton" and (reason := kernel_supports(device)):
        pytest.skip(reason)
    size = SIZES["paper"]
    gen = torch.Generator(device=device).manual_seed(0)
    volume = torch.randn(size.batch, size.channels, size.depth, size.image_size, size.image_size,
                         generator=gen, device=device) * 300 - 200
    embed = PatchEmbed(size).to(device)
    normalise = PATCH_EMBEDS.get(provider).impl

    def patches(name: str) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return PATCH_EMBEDS.get(name).impl(volume, embed).to(torch.bfloat16)

    # Correctness first (FlashAttention's rule on the patches): error vs fp32 math at most 2x eager's.
    with torch.no_grad():
        reference = PATCH_EMBEDS.get("eager").impl(volume.double(), embed.double()).float()
        embed.float()
        errors = {name: (patches(name).float() - reference).abs().max().item() for name in ("triton", "eager")}
    assert errors["triton"] <= 2 * errors["eager"] + 1e-6, errors
    dout = torch.randn(reference.shape, generator=gen, device=device).bfloat16()
    del reference

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = normalise(volume, embed).to(torch.bfloat16)
        out.backward(dout)

    measure_cuda(benchmark, step, setup=lambda: clear_grads(*embed.parameters()), rounds=5, warmup_rounds=2)
    patch = [size.temporal_patch_size, size.patch_size, size.patch_size]
    benchmark.extra_info.update(kernel="patch_norm", provider=provider, volume=list(volume.shape), patch=patch,
                                dtype="fp32 volume, bf16 autocast")


@pytest.mark.parametrize("provider", ["triton", "eager"])
def test_image_projection_fwd_bwd_paper_shape(benchmark, provider):
    """The paper's image projection (4 pooled rows of 294,912 features -> 512, no bias, fp32 weight) under
    bf16 autocast, forward and backward to the weight and the features: the split-K kernels reading the
    fp32 weight in place (projection=triton) against nn.Linear with autocast's weight cast and the
    gradient's cast back."""
    from kernels import supports as kernel_supports
    from models.projection import PROJECTIONS

    device = torch.device("cuda")
    if provider == "triton" and (reason := kernel_supports(device)):
        pytest.skip(reason)
    size = SIZES["paper"]
    gen = torch.Generator(device=device).manual_seed(0)
    features = torch.randn(size.batch, size.dim_image, generator=gen, device=device).requires_grad_(True)
    torch.manual_seed(0)  # the same weight for both providers
    # Initialised on the GPU: the 151M-element weight takes over a second on the CPU, of a 65 s stage.
    linear = torch.nn.Linear(size.dim_image, size.dim_latent, bias=False, device=device)
    project = PROJECTIONS.get(provider).impl

    # Correctness first (FlashAttention's rule): error vs fp64 at most 2x autocast's nn.Linear's.
    with torch.no_grad():
        reference = features.double() @ linear.weight.double().t()
        errors = {}
        for name in ("triton", "eager"):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                errors[name] = (PROJECTIONS.get(name).impl(features, linear).double() - reference).abs().max().item()
    assert errors["triton"] <= 2 * errors["eager"] + 1e-6, errors
    dout = torch.randn(reference.shape, generator=gen, device=device).bfloat16()
    del reference

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = project(features, linear)
        out.backward(dout)

    measure_cuda(benchmark, step, setup=lambda: clear_grads(features, linear.weight), rounds=5, warmup_rounds=2)
    benchmark.extra_info.update(kernel="skinny_linear", provider=provider,
                                shape=[size.batch, size.dim_image, size.dim_latent],
                                dtype="fp32 features and weight, bf16 autocast")


@pytest.mark.parametrize("provider", ["gemm", "separate"])
def test_gated_mlp_fwd_bwd_model_shape(benchmark, provider):
    """One paper-size feed-forward after its norm (55,296 x 512, F = 1365, fp32 weights, bf16 autocast),
    forward and backward: the gate in the matmuls' epilogues (mlp=swiglu_gemm) against cuBLAS matmuls
    with the gate as its own kernel (mlp=swiglu_triton). Both round where the unfused stores do, so their
    errors against fp32 agree to within a bf16 ulp of the output's scale."""
    from kernels import bench_mlp
    from kernels import supports as kernel_supports

    device = torch.device("cuda")
    if reason := kernel_supports(device):
        pytest.skip(reason)
    size = SIZES["paper"]
    t = bench_mlp.inputs(KERNEL_ROWS, size.dim, size.ff_inner, device)
    fn = bench_mlp.layer_fn(provider)
    reference = bench_mlp.fp32_reference(t)
    errors = {name: bench_mlp.relative_errors(bench_mlp.layer_fn(name), t, reference) for name in ("gemm", "separate")}
    assert all(abs(errors["gemm"][k] - errors["separate"][k]) <= 2 ** -8 for k in errors["gemm"]), errors

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn(t["x"], t["w_in"], t["w_out"])
        out.backward(t["dout"])

    measure_cuda(benchmark, step, setup=lambda: clear_grads(t["x"], t["w_in"], t["w_out"]))
    benchmark.extra_info.update(kernel="gated_mlp", provider=provider, rows=KERNEL_ROWS, dim=size.dim,
                                inner=size.ff_inner, dtype="fp32 weights, bf16 autocast")
