"""The kernels compile for real GPUs (sm_80, sm_90), with no GPU present.

The interpreter runs the kernels' Python, not Triton's compiler, so a kernel can pass every CPU test and
still fail to compile (e.g. calling `.to()` on an argument Triton specialised to a constexpr because it
equals 1). This compiles each kernel ahead of time to a cubin with the bundled ptxas, at the block
sizes the host functions choose for the model's shapes and for width 1, and checks that each fits the
architecture's shared memory (which only a launch would otherwise find out).
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.child_env import child_env

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import (_launch, gated_linear, patch_norm, peg_conv, qknorm_rope, rmsnorm, skinny_linear, swiglu,
                     vq_nearest)
from kernels.bench import DTYPES

# Shared memory a block may use (bytes): 227 KB on Hopper, 163 KB on the A100. A kernel over it compiles
# but fails at launch, so the check belongs here.
SHARED_LIMIT = {90: 232448, 80: 166912}

def compile_(fn, runtime, constexprs, num_warps, target, num_stages=3):
    signature = {**runtime, **{name: "constexpr" for name in constexprs}}
    kernel = triton.compile(ASTSource(fn, signature, constexprs), target=target,
                            options={"num_warps": num_warps, "num_stages": num_stages})
    assert kernel.asm["cubin"], fn.__name__
    assert kernel.metadata.shared <= SHARED_LIMIT[target.arch], (fn.__name__, kernel.metadata.shared)

def row_col_args(n_cols):
    """(runtime ints, constexprs) for n_rows and n_cols: Triton specialises an int argument equal to 1
    into a constexpr, so n_cols = 1 moves from the signature to the constexprs."""
    if n_cols == 1:
        return {"n_rows": "i32"}, {"n_cols": 1}
    return {"n_rows": "i32", "n_cols": "i32"}, {}

def rounding_code(dt):
    """The ROUNDING / SUM_ROUNDING constexpr the launchers pass for a Triton dtype name."""
    return rmsnorm.SUM_ROUNDING[DTYPES[dt]]

count = 0
# The (arch, dtype) jobs to compile, from argv: every dtype for Hopper, bf16 (the dtype Ampere adds) for sm_80.
for arch, dt in (job.split(":") for job in sys.argv[1:]):
    target = GPUTarget("cuda", int(arch), 32)
    rounding = rounding_code(dt)  # how the kernels round `dt` operands held in fp32
    for rows, width in ((13824 * 4, 512), (64, 1), (3, 1365)):
        bn = rmsnorm._block_n(width)
        bm = _launch.rows_per_tile(bn, rows)
        ints, const_cols = row_col_args(width)
        # Pointers and strides the flags leave unused are still arguments: typed like the live ones.
        absent_fwd = {"BRANCH": f"*{dt}", "SUM": f"*{dt}", "SUM_COPY": f"*{dt}", "stride_branch": "i32"}
        absent_bwd = {"D_SUM": f"*{dt}", "D_SUM_COPY": f"*{dt}", "D_BRANCH": f"*{dt}",
                      "stride_d_sum": "i32", "stride_d_sum_copy": "i32"}
        plain_fwd = {"ADD_BRANCH": False, "SUM_ROUNDING": 0, "WRITE_SUM_COPY": False}
        plain_bwd = {"ADD_D_SUM": False, "ADD_D_SUM_COPY": False, "WRITE_D_BRANCH": False}
        for inside in (True, False):
            compile_(rmsnorm._rmsnorm_fwd_kernel,
                     {"X": f"*{dt}", "Y": f"*{dt}", "W": f"*{dt}", "R": "*fp32", **absent_fwd,
                      "stride_x": "i32", "stride_y": "i32", **ints, "eps": "fp32"},
                     {**const_cols, "BLOCK_M": bm, "BLOCK_N": bn, "EPS_INSIDE": inside, **plain_fwd},
                     _launch.num_warps(bm * bn), target)
            compile_(rmsnorm._rmsnorm_bwd_kernel,
                     {"DY": f"*{dt}", "X": f"*{dt}", "W": f"*{dt}", "R": "*fp32", "DX": f"*{dt}",
                      "DW_PARTIAL": "*fp32", **absent_bwd, "stride_dy": "i32", "stride_x": "i32",
                      "stride_dx": "i32", **ints},
                     {**const_cols, "TILES_PER_PROGRAM": 16, "BLOCK_M": bm, "BLOCK_N": bn,
                      "EPS_INSIDE": inside, **plain_bwd},
                     _launch.num_warps(bm * bn), target)
            count += 2
        # The fused residual add (kernels/add_rmsnorm.py): an fp32 stream with a `dt` branch, norm and
        # copy (autocast), and a stream in `dt` itself, whose sum is rounded in the kernel.
        for stream in ("fp32", dt):
            compile_(rmsnorm._rmsnorm_fwd_kernel,
                     {"X": f"*{stream}", "Y": f"*{dt}", "W": "*fp32", "R": "*fp32", "BRANCH": f"*{dt}",
                      "SUM": f"*{stream}", "SUM_COPY": f"*{dt}", "stride_x": "i32", "stride_y": "i32",
                      "stride_branch": "i32", **ints, "eps": "fp32"},
                     {**const_cols, "BLOCK_M": bm, "BLOCK_N": bn, "EPS_INSIDE": True, "ADD_BRANCH": True,
                      "SUM_ROUNDING": rounding_code(stream), "WRITE_SUM_COPY": True},
                     _launch.num_warps(bm * bn), target)
            count += 1
        compile_(rmsnorm._rmsnorm_bwd_kernel,
                 {"DY": f"*{dt}", "X": "*fp32", "W": "*fp32", "R": "*fp32", "DX": "*fp32",
                  "DW_PARTIAL": "*fp32", "D_SUM": "*fp32", "D_SUM_COPY": f"*{dt}", "D_BRANCH": f"*{dt}",
                  "stride_dy": "i32", "stride_x": "i32", "stride_dx": "i32", "stride_d_sum": "i32",
                  "stride_d_sum_copy": "i32", **ints},
                 {**const_cols, "TILES_PER_PROGRAM": 16, "BLOCK_M": bm, "BLOCK_N": bn, "EPS_INSIDE": True,
                  "ADD_D_SUM": True, "ADD_D_SUM_COPY": True, "WRITE_D_BRANCH": True},
                 _launch.num_warps(bm * bn), target)
        count += 1
        if dt != "fp32":  # a stream in `dt` (residual=autocast): the branch's gradient is the stream's
            compile_(rmsnorm._rmsnorm_bwd_kernel,
                     {"DY": f"*{dt}", "X": f"*{dt}", "W": "*fp32", "R": "*fp32", "DX": f"*{dt}",
                      "DW_PARTIAL": "*fp32", "D_SUM": f"*{dt}", "D_SUM_COPY": f"*{dt}", "D_BRANCH": f"*{dt}",
                      "stride_dy": "i32", "stride_x": "i32", "stride_dx": "i32", "stride_d_sum": "i32",
                      "stride_d_sum_copy": "i32", **ints},
                     {**const_cols, "TILES_PER_PROGRAM": 16, "BLOCK_M": bm, "BLOCK_N": bn,
                      "EPS_INSIDE": True, "ADD_D_SUM": True, "ADD_D_SUM_COPY": True, "WRITE_D_BRANCH": False},
                     _launch.num_warps(bm * bn), target)
            count += 1
        bm, bn = swiglu._blocks(rows, width)
        for geglu in (True, False):
            compile_(swiglu._gated_fwd_kernel,
                     {"X": f"*{dt}", "OUT": f"*{dt}", "stride_x": "i32", "stride_out": "i32", **ints},
                     {**const_cols, "BLOCK_M": bm, "BLOCK_N": bn, "GEGLU": geglu},
                     _launch.num_warps(bm * bn), target)
            compile_(swiglu._gated_bwd_kernel,
                     {"DOUT": f"*{dt}", "X": f"*{dt}", "DX": f"*{dt}", "stride_dout": "i32",
                      "stride_x": "i32", "stride_dx": "i32", **ints},
                     {**const_cols, "BLOCK_M": bm, "BLOCK_N": bn, "GEGLU": geglu},
                     _launch.num_warps(bm * bn), target)
            count += 2
    # QK-norm + rope at the paper's spatial attention (4 x 8 heads x 13824 rows, D=32) and at the
    # tiny model's D=16, with and without the rotary table.
    for rows, width in ((4 * 8 * 13824, 32), (4 * 8 * 13824, 16)):
        bm, bh = qknorm_rope._blocks(rows, width)
        warps = _launch.num_warps(bm * 2 * bh)
        ints = {name: "i32" for name in ("n_rows", "n_heads", "n_seq", "n_cols")}
        for rope in (True, False):
            compile_(qknorm_rope._qk_norm_rope_fwd_kernel,
                     {"T": f"*{dt}", "SCALE": "*fp32", "COS": "*fp32", "SIN": "*fp32", "OUT": f"*{dt}",
                      "R": "*fp32", "stride_b": "i32", "stride_h": "i32", "stride_n": "i32",
                      "so_b": "i32", "so_h": "i32", "so_n": "i32", **ints, "eps": "fp32"},
                     {"BLOCK_M": bm, "BLOCK_H": bh, "ROPE": rope}, warps, target)
            compile_(qknorm_rope._qk_norm_rope_bwd_kernel,
                     {"DOUT": f"*{dt}", "T": f"*{dt}", "SCALE": "*fp32", "R": "*fp32", "COS": "*fp32",
                      "SIN": "*fp32", "DT": f"*{dt}", "DSCALE_PARTIAL": "*fp32",
                      **{name: "i32" for name in ("sd_b", "sd_h", "sd_n", "st_b", "st_h", "st_n",
                                                  "so_b", "so_h", "so_n")},
                      **ints, "eps": "fp32"},
                     {"TILES_PER_PROGRAM": 16, "BLOCK_M": bm, "BLOCK_H": bh, "ROPE": rope}, warps, target)
            count += 2
    # The VQ search at the paper's codebook (8,192 x 512) and the tiny model's (32 x 32), both precisions.
    for rows, codes, dim in ((4 * 13824, 8192, 512), (2 * 64, 32, 32)):
        bm, bn, bd, warps = vq_nearest._blocks(rows, codes, dim, torch.device("cuda"))
        for precision in vq_nearest.INPUT_PRECISIONS:
            compile_(vq_nearest._nearest_code_kernel,
                     {"X": f"*{dt}", "CODES": f"*{dt}", "INDEX": "*i64", "stride_x": "i32",
                      "n_rows": "i32", "n_codes": "i32", "dim": "i32"},
                     {"CODE_TILES": -(-codes // bn), "DIM_TILES": -(-dim // bd), "BLOCK_M": bm,
                      "BLOCK_N": bn, "BLOCK_D": bd, "INPUT_PRECISION": precision}, warps, target)
            count += 1
    # The PEG convolution at the paper's grid (4 x 24^3 x 512) and the tiny model's, on an fp32 stream
    # under autocast (writing the `dt` copy for the backward) and on a stream in `dt` itself.
    grid_ints = {name: "i32" for name in ("n_positions", "channels", "size0", "size1", "size2")}
    for shape in ((4, 24, 24, 24, 512), (4, 3, 5, 5, 32)):
        positions = shape[0] * shape[1] * shape[2] * shape[3]
        bp, bc = peg_conv._blocks(positions, shape[4], torch.device("cuda"))
        for stream in ("fp32", dt):
            strides = lambda *names: {f"{n}_{axis}": "i32" for n in names for axis in "b012"}
            # Plain, and with the residual add fused (kernels/peg_add_conv.py) where the model uses it:
            # an fp32 stream, a bf16 branch, the paper grid (the fused forward takes ~30 s to compile);
            # and a bf16 stream (residual=autocast) on the tiny grid, where it compiles in seconds.
            fused = dt == "bf16" and (stream == "fp32") == (shape[1] == 24)
            for add in (False, True) if fused else (False,):
                compile_(peg_conv._peg_fwd_kernel,
                         {"X": f"*{stream}", "W": "*fp32", "BIAS": "*fp32", "OUT": f"*{dt}",
                          "X_COPY": f"*{dt}", "BRANCH": f"*{dt}", "SUM": f"*{stream}", **grid_ints,
                          **strides("sx", "so", "sbr")},
                         {"BLOCK_P": bp, "BLOCK_C": bc, "ROUNDING": rounding, "WRITE_X_COPY": stream != dt,
                          "ADD_BRANCH": add, "SUM_ROUNDING": rounding_code(stream)},
                         4, target)
                compile_(peg_conv._peg_bwd_kernel,
                         {"DOUT": f"*{dt}", "X": f"*{dt}", "W": "*fp32", "DX": f"*{stream}",
                          "PARTIAL": "*fp32", "D_SUM": f"*{stream}", "D_BRANCH": f"*{dt}", **grid_ints,
                          **strides("sd", "sx", "sdx", "sds", "sdb")},
                         {"BLOCK_P": bp, "BLOCK_C": bc, "X_ROUNDING": 0, "ROUNDING": rounding,
                          "ADD_D_SUM": add, "WRITE_D_BRANCH": add and stream != dt}, 8, target)
                count += 2
    # The patch norm at the paper's patches (4 x 24^3 rows of 1 x 10 x 20 x 20 voxels) and the tiny
    # model's (4 x 3 x 5 x 5 rows of 1 x 4 x 8 x 8), on the fp32 volume; the volume's unit stride
    # along W is specialised to a constexpr, as the launcher does.
    for rows, pt, p in ((4 * 24 ** 3, 10, 20), (4 * 3 * 5 * 5, 4, 8)):
        bn = _launch.next_pow2(pt * p * p)
        bm = _launch.rows_per_tile(bn, rows)
        ints = {name: "i32" for name in ("n_rows", "n_cols", "grid_t", "grid_h", "grid_w", "pt", "p")}
        volume = {f"sx_{axis}": "i32" for axis in "bcdh"}
        compile_(patch_norm._patch_ln_fwd_kernel,
                 {"X": "*fp32", "W": "*fp32", "B": "*fp32", "Y": f"*{dt}", "MEAN": "*fp32", "RSTD": "*fp32",
                  **ints, **volume, "eps": "fp32"},
                 {"sx_w": 1, "BLOCK_M": bm, "BLOCK_N": bn}, _launch.num_warps(bm * bn), target)
        for write_dx in (False, True):
            compile_(patch_norm._patch_ln_bwd_kernel,
                     {"DY": f"*{dt}", "X": "*fp32", "W": "*fp32", "MEAN": "*fp32", "RSTD": "*fp32",
                      "DX": "*fp32", "PARTIAL": "*fp32", "stride_dy": "i32", **ints, **volume,
                      **{f"sdx_{axis}": "i32" for axis in "bcdhw"}},
                     {"sx_w": 1, "TILES_PER_PROGRAM": 16, "BLOCK_M": bm, "BLOCK_N": bn, "WRITE_DX": write_dx},
                     _launch.num_warps(bm * bn), target)
            count += 1
        count += 1
    # The latent projections at the paper's image (4 x 294,912 -> 512) and text (4 x 768 -> 512) shapes:
    # fp32 inputs and weight, `dt` operands rounded in registers, split over K for a 132-SM GPU, with the
    # blocks and constexprs the launcher passes.
    for rows, k, n in ((4, 294912, 512), (4, 768, 512)):
        bm, bn, bk, launch = skinny_linear._launch_config(torch.device("cuda"), n, DTYPES[dt])
        warps = launch.pop("num_warps")
        k_tiles, _ = skinny_linear.split_k(-(-k // bk), -(-n // bn), 4 * 132)
        dims = {"n_rows": "i32", "n_out": "i32", "n_in": "i32"}
        flags = {"BLOCK_K": bk, **launch}
        compile_(skinny_linear._forward_kernel,
                 {"X": "*fp32", "W": "*fp32", "PARTIAL": "*fp32", **dims, "stride_x": "i32", "stride_w": "i32"},
                 {"K_TILES": k_tiles, "BLOCK_M": bm, "BLOCK_N": bn, **flags}, warps, target)
        # The gradient kernel twice, as the launcher calls it: dx = dy @ W, then dW = dy^T @ x (dy's unit
        # stride specialised to a constexpr on the side it is read along).
        grad = {"A": f"*{dt}", "B": "*fp32", "OUT": "*fp32", "n_p": "i32", "n_r": "i32", "n_in": "i32",
                "stride_b": "i32"}
        compile_(skinny_linear._gradient_kernel, {**grad, "stride_a_p": "i32"},
                 {"stride_a_r": 1, "R_TILES": -(-n // bn), "BLOCK_P": bm, "BLOCK_R": bn, **flags}, warps, target)
        compile_(skinny_linear._gradient_kernel, {**grad, "stride_a_r": "i32"},
                 {"stride_a_p": 1, "R_TILES": -(-rows // bm), "BLOCK_P": bn, "BLOCK_R": bm, **flags}, warps,
                 target)
        count += 3
    # The feed-forward's fused matmuls at the paper's shape (55,296 x 512, F = 1365) and the tiny
    # model's (dim 32, F = 85), both gates, with the block sizes the launcher picks on a GPU.
    # F = 1 as Triton specialises it (a constexpr), as the kernels' tests run it.
    for rows, dim, inner in ((4 * 13824, 512, 1365), (2 * 75, 32, 85), (70, 48, 1)):
        ints, const_cols = row_col_args(inner)
        # Both kernels reduce over dim (the up projection's input, the down projection's output).
        bm, bn, bk, warps = gated_linear.blocks(rows, inner, dim, torch.device("cuda"))
        blocks = {"K_TILES": -(-dim // bk), "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, **const_cols}
        for forward in (True, False):
            for activation in swiglu.ACTIVATIONS:
                flags = {**blocks, **gated_linear._flags(DTYPES[dt], activation)}
                if forward:
                    compile_(gated_linear._gated_up_kernel,
                             {"X": f"*{dt}", "W1": f"*{dt}", "W2": f"*{dt}", "GU": f"*{dt}", "H": f"*{dt}", **ints,
                              "n_in": "i32",
                              **{f"stride_{n}": "i32" for n in ("x", "w", "gu", "h")}},
                             flags, warps, target)
                else:
                    compile_(gated_linear._gated_down_grad_kernel,
                             {"DOUT": f"*{dt}", "W": f"*{dt}", "GU": f"*{dt}", "DGU": f"*{dt}", **ints,
                              "n_out": "i32", **{f"stride_{n}": "i32" for n in ("dout", "w", "gu", "dgu")}},
                             flags, warps, target)
                count += 1
print("compiled", count)
'''


# Two halves of about equal work, compiled by two processes at once: Triton's passes and ptxas run on one
# core each, and the 325 compilations took 277 s in one process on a 2-core CI host.
JOB_HALVES = (("90:fp32", "90:fp16"), ("90:bf16", "80:bf16"))


@pytest.mark.slow
def test_kernels_compile_to_cubin_for_sm80_and_sm90():
    pytest.importorskip("triton.backends.nvidia")
    env = child_env(without=("TRITON_INTERPRET",))

    def compile_half(half: tuple[str, ...]) -> subprocess.CompletedProcess:
        # subprocess.run kills its child on timeout; each thread waits on one process.
        return subprocess.run([sys.executable, "-c", SCRIPT, *half], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)

    with ThreadPoolExecutor(len(JOB_HALVES)) as pool:
        done = list(pool.map(compile_half, JOB_HALVES))
    for half, run in zip(JOB_HALVES, done):
        assert run.returncode == 0, (half, run.stderr[-3000:])
    counts = [int(run.stdout.split("compiled ")[-1]) for run in done]
    assert all(counts) and sum(counts) == 325, counts


SPILL_SCRIPT = r'''
import re, sys
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import gated_linear

triton.knobs.nvidia.dump_ptxas_log = True  # ptxas's register and spill report, on stdout
bm, bn, bk, warps = gated_linear.blocks(4 * 13824, 1365, 512, torch.device("cuda"))
for forward in (True, False):
    if forward:
        fn, names = gated_linear._gated_up_kernel, ("X", "W1", "W2", "GU", "H", "n_rows", "n_cols", "n_in",
                                                    "stride_x", "stride_w", "stride_gu", "stride_h")
    else:
        fn, names = gated_linear._gated_down_grad_kernel, ("DOUT", "W", "GU", "DGU", "n_rows", "n_cols", "n_out",
                                                           "stride_dout", "stride_w", "stride_gu", "stride_dgu")
    signature = {n: ("*bf16" if n.isupper() else "i32") for n in names}
    flags = {"K_TILES": 512 // bk, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk,
             **gated_linear._flags(torch.bfloat16, "swiglu")}
    signature.update({k: "constexpr" for k in flags})
    # What a launch at the paper's shape specialises: 16-byte-aligned tensors, 55,296 rows, a reduction
    # of 512 and its stride; not F = 1365 or the strides of the [rows, 2F] and [rows, F] outputs.
    aligned = {"X", "W", "W1", "W2", "GU", "H", "DOUT", "DGU", "n_rows", "n_in", "n_out", "stride_x", "stride_w",
               "stride_dout"}
    attrs = {(list(signature).index(n),): [["tt.divisibility", 16]] for n in names if n in aligned}
    print("kernel", fn.__name__, flush=True)
    triton.compile(ASTSource(fn, signature, flags, attrs), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": warps, "num_stages": 3})
'''


@pytest.mark.slow
def test_the_feed_forward_matmuls_do_not_spill_registers_on_hopper(tmp_path):
    # A GEMM whose accumulators spill to local memory runs far below its tensor-core rate; 128 x 128 tiles
    # of these kernels did (about 1 KB per thread), so the launcher's blocks are checked here.
    pytest.importorskip("triton.backends.nvidia")
    # TRITON_CACHE_DIR: a cached kernel would print no ptxas report.
    env = child_env(without=("TRITON_INTERPRET",), TRITON_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", SPILL_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = done.stdout.split("kernel ")[1:]
    assert [r.split()[0] for r in reports] == ["_gated_up_kernel", "_gated_down_grad_kernel"]
    for report in reports:
        assert "0 bytes spill stores" in report and "spill stores, 0 bytes spill loads" in report, report
