"""The roofline cost model against hand-computed FLOPs, bytes and times, and inside bench.estimate."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cell import CellSpec
from bench.estimate import estimate_cell
from bench.gpu_specs import GPU_SPECS, GpuSpec, find_gpu
from bench.roofline import RooflineMode, accessed_bytes
from models import Variant, get_size
from tests.child_env import child_env

ROOT = Path(__file__).resolve().parents[2]
# Round ceilings so the expected times are easy to state: 100 TFLOP/s bf16, 10 fp32, 50 tf32, 1 TB/s.
SPEC = GpuSpec("Test", "Test GPU", {"bf16": 100.0, "fp16": 100.0, "tf32": 50.0, "fp32": 10.0}, 1000.0)


def _costs(fn, tf32: bool = False) -> RooflineMode:
    with RooflineMode(SPEC, tf32=tf32) as mode:
        fn()
    return mode


@pytest.mark.parametrize("m, k, n", [(37, 53, 29), (512, 1024, 768)])
def test_matmul_costs_the_larger_of_flops_and_bytes(m, k, n):
    a, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)
    mode = _costs(lambda: a @ b)
    cost = mode.costs["aten.mm[bf16]"]
    flops, moved = 2 * m * k * n, 2 * (m * k + k * n + m * n)
    assert (cost.calls, cost.flops, cost.bytes) == (1, flops, moved)
    assert cost.seconds == pytest.approx(max(flops / 100e12, moved / 1e12))
    # The small product is memory-bound, the large one compute-bound at these ceilings.
    compute_bound = flops / 100e12 > moved / 1e12
    assert cost.compute_bound_s == (pytest.approx(flops / 100e12) if compute_bound else 0.0)


@pytest.mark.parametrize("tf32, peak", [(False, 10e12), (True, 50e12)])
def test_fp32_matmul_uses_the_fp32_or_tf32_peak(tf32, peak):
    a, b = torch.randn(256, 512), torch.randn(512, 384)
    cost = _costs(lambda: a @ b, tf32).costs["aten.mm[tf32]" if tf32 else "aten.mm[fp32]"]
    moved = 4 * (256 * 512 + 512 * 384 + 256 * 384)
    assert cost.seconds == pytest.approx(max(2 * 256 * 512 * 384 / peak, moved / 1e12))


@pytest.mark.parametrize("stated, tf32, name, peak", [("tf32", False, "tf32", 50e12), ("ieee", True, "fp32", 10e12),
                                                    (None, True, "tf32", 50e12)])
def test_a_custom_op_stating_its_input_precision_is_costed_at_that_peak(stated, tf32, name, peak):
    # kernels/vq_nearest's op rounds fp32 inputs as its argument says, whatever torch's TF32 setting;
    # without the argument (default "tf32") the op's default is what counts. Fake tensors: no launch.
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kernels.vq_nearest import nearest_code

    with FakeTensorMode():
        x, book = torch.randn(4096, 512), torch.randn(8192, 512)
        cost = _costs(lambda: nearest_code(x, book, stated) if stated else nearest_code(x, book),
                      tf32).costs[f"ctclip_kernels.nearest_code[{name}]"]
    flops, moved = 2 * 4096 * 8192 * 512, 4 * (4096 * 512 + 8192 * 512) + 8 * 4096
    assert (cost.flops, cost.bytes) == (flops, moved)
    assert cost.seconds == pytest.approx(max(flops / peak, moved / 1e12))


def test_broadcast_operand_is_read_once_and_views_cost_nothing():
    x = torch.randn(7, 33)[:, ::3]  # non-contiguous: 7 x 11 elements touched
    row = torch.randn(1, 11).expand(7, 11)  # stride 0 along the rows
    assert accessed_bytes(row) == 11 * 4 and accessed_bytes(x) == 7 * 11 * 4

    w = torch.randn(11, 5)

    def ops():
        y = x + row
        y.t().unsqueeze(0)
        y.view(77)
        torch.matmul(y.view(1, 7, 11), w)  # mm, then _unsafe_view: a view its schema does not declare

    mode = _costs(ops)
    assert mode.costs["aten.add"].bytes == (7 * 11 + 11 + 7 * 11) * 4
    assert mode.costs["aten.add"].flops == 0
    assert set(mode.costs) == {"aten.add", "aten.mm[fp32]"}


def test_in_place_and_foreach_ops_count_read_and_write_of_what_they_mutate():
    params = [torch.randn(5, 3), torch.randn(17)]
    grads = [torch.randn(5, 3), torch.randn(17)]
    n = 15 + 17
    mode = _costs(lambda: torch._foreach_add_(params, grads, alpha=0.1))
    costs = {name: c for name, c in mode.costs.items() if "add" in name}
    # params read, grads read, params written, however the build splits the foreach op.
    assert sum(c.bytes for c in costs.values()) == 3 * n * 4
    x = torch.randn(9, 4)
    assert _costs(lambda: x.mul_(2.0)).costs["aten.mul_"].bytes == 2 * 36 * 4


@pytest.mark.parametrize("scaled", [False, True])
def test_fused_adamw_writes_the_gradients_only_to_unscale_them(scaled):
    # The schema marks every list mutable; the CUDA kernel stores `grads` back only under a grad scale.
    shapes = [(5, 3), (17,), (2, 3, 7)]
    n = sum(torch.Size(s).numel() for s in shapes)
    params, grads, exp_avgs, exp_avg_sqs = ([torch.randn(s) for s in shapes] for _ in range(4))
    steps = [torch.tensor(1.0) for _ in shapes]
    scale = torch.tensor(1.0) if scaled else None
    mode = _costs(lambda: torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=1e-3,
                                              beta1=0.9, beta2=0.999, weight_decay=0.1, eps=1e-8,
                                              amsgrad=False, maximize=False, grad_scale=scale))
    # param, grad and both moments read; param and both moments written; each step count read.
    expected = (4 + 3) * n * 4 + len(shapes) * 4
    if scaled:
        expected += n * 4 + 4  # the unscaled gradients written back, the scale read
    assert mode.costs["aten._fused_adamw_"].bytes == expected


def test_estimate_sums_ops_and_bounds_mfu():
    a, b = torch.randn(300, 200, dtype=torch.bfloat16), torch.randn(200, 100, dtype=torch.bfloat16)
    mode = _costs(lambda: (a @ b).relu().sum())
    est = mode.estimate(top=2)
    assert est.step_s == pytest.approx(sum(c.seconds for c in mode.costs.values()))
    assert est.ops == 3 and len(est.top_ops) == 2
    assert est.top_ops[0]["seconds"] >= est.top_ops[1]["seconds"]
    assert est.flops == 2 * 300 * 200 * 100
    assert est.mfu_bound("bf16") == pytest.approx(est.flops / est.step_s / 100e12)
    assert est.compute_bound_s + est.memory_bound_s == pytest.approx(est.step_s)
    assert est.gpu == "Test GPU" and est.dram_gb_per_s == 1000.0


def test_signatures_split_an_op_by_operand_shapes_and_dtypes():
    a, b = torch.randn(37, 53, dtype=torch.bfloat16), torch.randn(53, 29, dtype=torch.bfloat16)
    c = torch.randn(64, 64)

    def ops():
        a @ b
        a @ b
        c @ c

    with RooflineMode(SPEC, signatures=True) as mode:
        ops()
    est = mode.estimate(top=5, top_signatures=5)
    sites = {s["name"]: s for s in est.top_signatures}
    small_bf16, square_fp32 = "aten.mm[bf16] bf16[37, 53] bf16[53, 29]", "aten.mm[fp32] fp32[64, 64] fp32[64, 64]"
    assert set(sites) == {small_bf16, square_fp32}
    bf16 = sites[small_bf16]
    assert bf16["calls"] == 2 and bf16["bytes"] == 2 * 2 * (37 * 53 + 53 * 29 + 37 * 29)
    # The per-site costs partition the per-op ones; without the option nothing is kept.
    assert sum(s["seconds"] for s in est.top_signatures) == pytest.approx(est.step_s)
    assert est.top_signatures[0]["seconds"] >= est.top_signatures[1]["seconds"]
    with RooflineMode(SPEC) as plain:
        ops()
    assert plain.estimate().top_signatures == [] and plain.signature_costs is None
    # A foreach op's operand lists are summarised, not listed.
    params = [torch.zeros(1000, 100) for _ in range(8)]
    with RooflineMode(SPEC, signatures=True) as foreach:
        torch._foreach_mul_(params, 0.5)
    assert [s["name"] for s in foreach.estimate().top_signatures] == ["aten._foreach_mul_ 8 tensors, 0.8 M elements"]


def test_gpu_table_lookup_prefers_the_specific_name():
    assert find_gpu("NVIDIA H100 80GB HBM3").entry == "H100 SXM"
    assert find_gpu("NVIDIA H100 PCIe").dram_gb_per_s == 2000.0
    # "L4" is a substring of both L40 names; each must get its own datasheet.
    assert [find_gpu(n).entry for n in ("NVIDIA L4", "NVIDIA L40", "NVIDIA L40S")] == ["L4", "L40", "L40S"]
    assert find_gpu("NVIDIA H200").dram_gb_per_s == 4800.0
    assert find_gpu("NVIDIA H200").entry == "H200 SXM"
    assert find_gpu("NVIDIA H200 NVL").entry == "H200 NVL"
    assert find_gpu("NVIDIA GH200 480GB").entry == "GH200"
    assert find_gpu("NVIDIA A100-SXM4-80GB").entry == "A100 SXM 80GB"
    assert find_gpu("Intel Xeon") is None
    # Every entry is selected by its own needle, however many shorter needles that name also contains.
    for spec in GPU_SPECS:
        assert find_gpu(f"NVIDIA {spec.needle}") is spec, spec.entry


def test_estimate_cell_records_a_roofline_whose_flops_match_the_counter():
    spec = CellSpec(variant=Variant().as_dict(), size="tiny", batch=2, device="cpu")
    result = estimate_cell(spec, SPEC)
    assert result.status == "ok", result.message
    roofline = result.roofline
    # Same flop registry, one pass over forward, backward and the optimizer step (which has no matmuls).
    assert roofline["flops"] == pytest.approx(result.flops["total"])
    assert roofline["step_s"] > 0 and roofline["ops"] > 100
    assert roofline["bytes"] >= result.memory.param_bytes  # every weight is read at least once
    assert roofline["mfu_bound"] == pytest.approx(roofline["flops"] / roofline["step_s"] / 10e12)  # fp32 peak
    assert sum(op["share"] for op in roofline["top_ops"]) <= 1.0 + 1e-9


def test_estimate_cli_breakdown_names_the_peak_and_the_costliest_call_sites(tmp_path, capsys):
    from bench.estimate import main
    from bench.store import read

    assert main(["--size", "tiny", "--design", "paper", "--only", "attention=math", "--only", "loss=softmax",
                 "--precision", "bf16", "--breakdown", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (result,) = read(next(tmp_path.glob("estimate-tiny-*.jsonl"))).results
    sites = result.roofline["top_signatures"]
    assert len(sites) == 4 and all(s["name"].startswith("aten.") for s in sites)
    assert all("[" in s["name"] or " tensors, " in s["name"] for s in sites)  # shapes, or a list's size
    peak_at = result.memory.predicted_peak_at
    assert peak_at.startswith("aten.") and peak_at.endswith(("in the forward", "in the backward", "step"))
    assert "predicted peak reached at aten." in out
    assert f"| `{sites[0]['name']}` | {sites[0]['calls']} |" in out


def test_triton_variant_is_estimated_where_its_kernels_cannot_run():
    # A fresh process without TRITON_INTERPRET (as `python -m bench.estimate` on a CPU): the kernels
    # cannot launch here, yet the fake step needs only their custom ops' fake implementations.
    code = (
        "from bench.cell import CellSpec; from bench.estimate import estimate_cell\n"
        "from bench.gpu_specs import find_gpu; from models import Variant, get_size\n"
        "import kernels\n"
        "v = Variant.modern().replace(norm='rmsnorm_triton', mlp='swiglu_triton', precision='bf16')\n"
        "r = estimate_cell(CellSpec(variant=v.as_dict(), size='tiny', batch=2, device='cpu'))\n"
        "assert r.status == 'ok', r.message\n"
        "from bench.estimate import fake_training_step; from bench.roofline import RooflineMode\n"
        "mode, step = fake_training_step(v, get_size('tiny'), 2)\n"
        "with mode, RooflineMode(find_gpu('H100')) as roofline:\n"
        "    step.backward(step.forward())\n"
        "print(sorted(n for n in roofline.costs if n.startswith('ctclip_kernels')))\n"
        "print(kernels.supports('cpu'))\n"
    )
    env = child_env(without=("TRITON_INTERPRET",))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    kernel_ops, reason = out.stdout.strip().splitlines()
    assert kernel_ops == str(["ctclip_kernels.gated_backward", "ctclip_kernels.gated_forward",
                              "ctclip_kernels.rmsnorm_backward", "ctclip_kernels.rmsnorm_forward"])
    assert "without TRITON_INTERPRET=1" in reason  # real CPU tensors still cannot run them


def test_the_roofline_costs_ops_as_dispatched_not_as_the_flop_counter_decomposes_them():
    # FlopCounterMode decomposes ops it has no formula for but a composite kernel; silu_backward (SwiGLU)
    # and _fused_rms_norm are one kernel each on a GPU and must be costed as one op.
    from bench.estimate import dispatch_context, fake_training_step, flops_and_roofline

    variant = Variant.modern().replace(precision="bf16")
    mode, step = fake_training_step(variant, get_size("tiny"), 2, "cuda")
    with mode, dispatch_context("cuda"):
        forward, backward, _, roofline = flops_and_roofline(step, RooflineMode(SPEC))
    names = set(roofline.costs)
    assert {"aten.silu_backward", "aten._fused_rms_norm", "aten._fused_rms_norm_backward"} <= names
    assert not names & {"aten.sigmoid", "aten.rsqrt", "aten.pow"}  # the decompositions' ops
    assert forward > 0 and backward > forward
    assert roofline.estimate().flops == pytest.approx(forward + backward)


def test_a_bf16_residual_stream_moves_fewer_bytes_and_adds_no_gradient_sums():
    # The fastest candidate with upstream's fp32 stream and with residual=autocast, under CUDA's dispatch:
    # the fused add-norm and PEG kernels read and write a 2-byte stream instead of a 4-byte one, and the
    # K/V input, being the stream itself, sends its gradient into the norm's backward kernel rather than
    # into an autograd add (so there are no more adds than with the fp32 stream and its bf16 copy).
    from bench.design import fastest_candidate
    from bench.estimate import dispatch_context, fake_training_step, flops_and_roofline

    costs = {}
    for residual in ("fp32", "autocast"):
        variant = fastest_candidate().replace(precision="bf16", residual=residual)
        mode, step = fake_training_step(variant, get_size("tiny"), 2, "cuda")
        with mode, dispatch_context("cuda"):
            costs[residual] = flops_and_roofline(step, RooflineMode(SPEC))[3].costs
    fused = ("ctclip_kernels.add_rmsnorm_forward", "ctclip_kernels.add_rmsnorm_backward",
             "ctclip_kernels.peg_add_conv_forward[fp32]", "ctclip_kernels.peg_add_conv_backward[bf16]")
    lean_names = {"ctclip_kernels.peg_add_conv_forward[bf16]": fused[2]}
    lean = {lean_names.get(name, name): cost for name, cost in costs["autocast"].items()}
    for name in fused:
        assert lean[name].calls == costs["fp32"][name].calls > 0
        assert lean[name].bytes < 0.8 * costs["fp32"][name].bytes, name
    assert lean["aten.add"].calls <= costs["fp32"]["aten.add"].calls
    assert sum(c.bytes for c in lean.values()) < sum(c.bytes for c in costs["fp32"].values())


def test_the_gate_in_the_gemm_epilogues_saves_the_gate_passes_and_nothing_else():
    # The fastest candidate with the gate as its own kernel and in the matmuls' epilogues, under CUDA's
    # dispatch: the same FLOPs, and per feed-forward 4 x rows x F x 2 bytes less traffic (gu no longer
    # read back by a gate kernel; dh neither written nor read), which is 4/3 of what the separate gate's
    # forward kernel moves (gu read, h written: 3 x rows x F x 2 bytes). The predicted peak is the same.
    from bench.design import fastest_candidate
    from bench.estimate import dispatch_context, estimate_variant, fake_training_step, flops_and_roofline

    costs, flops, peaks = {}, {}, {}
    for mlp in ("swiglu_triton", "swiglu_gemm"):
        variant = fastest_candidate().replace(precision="bf16", mlp=mlp)
        mode, step = fake_training_step(variant, get_size("tiny"), 2, "cuda")
        with mode, dispatch_context("cuda"):
            forward, backward, _, roofline = flops_and_roofline(step, RooflineMode(SPEC))
        costs[mlp], flops[mlp] = roofline.costs, (forward, backward)
        peaks[mlp] = estimate_variant(variant, get_size("tiny"), 2)["memory"]["predicted_peak_bytes"]
    separate, fused = costs["swiglu_triton"], costs["swiglu_gemm"]
    assert flops["swiglu_gemm"] == flops["swiglu_triton"] and flops["swiglu_gemm"][0] > 0
    assert fused["ctclip_kernels.gated_up_forward[bf16]"].calls == separate["ctclip_kernels.gated_forward"].calls
    assert not {"ctclip_kernels.gated_forward", "ctclip_kernels.gated_backward"} & set(fused)
    saved = sum(c.bytes for c in separate.values()) - sum(c.bytes for c in fused.values())
    assert saved == pytest.approx(4 / 3 * separate["ctclip_kernels.gated_forward"].bytes, rel=1e-9)
    assert peaks["swiglu_gemm"] == peaks["swiglu_triton"]


def test_the_bound_on_other_gpus_equals_their_own_roofline():
    # One pass costing the step on an H100 and, alongside, an H200 and an A100 gives for those exactly what
    # a pass against each of them alone gives (estimate_variant's also_gpus; bench.gpu_check uses it to
    # carry a run on another GPU over to the one the targets name).
    from bench.estimate import dispatch_context, fake_training_step, flops_and_roofline

    h100, others = find_gpu("H100 SXM"), (find_gpu("H200"), find_gpu("A100"))
    variant = Variant.modern().replace(precision="bf16")
    alone = {}
    for spec in (h100, *others):
        mode, step = fake_training_step(variant, get_size("tiny"), 2, "cuda")
        with mode, dispatch_context("cuda"):
            roofline = flops_and_roofline(step, RooflineMode(spec, also=others if spec is h100 else ()))[3]
        alone[spec.entry] = roofline.estimate()
    both = alone[h100.entry].step_s_on
    assert set(both) == {o.entry for o in others}
    for other in others:
        assert both[other.entry] == pytest.approx(alone[other.entry].step_s, rel=1e-12)
    # The same peaks and more bandwidth on the H200; less of both on the A100.
    assert both["H200 SXM"] < alone[h100.entry].step_s < both["A100 40GB"]
