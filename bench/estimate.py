"""`python -m bench.estimate --size paper --design paper`: memory and FLOPs without the hardware.

Each variant is built **and** stepped inside one `FakeTensorMode` (tensors carry shapes, dtypes and
devices but no data), so a 240x480x480 batch costs seconds on a CPU. The meta device would not do:
on meta, SDPA falls back to the math kernel and over-counts activations (cpu-facts §4); and the text
tower (a transformers BertModel) must be created inside the same mode or its mask code mixes real
and fake tensors. Per variant it records

    params + grads + optimizer state   (after one AdamW step)
    saved activations                  (saved_tensors_hooks, deduplicated by storage, params excluded)
    largest transient                  (the largest single op output during the step)
    predicted peak                     (bench.allocations: bytes live at once, op by op)
    FLOPs forward / backward           (FlopCounterMode with the CPU flash formulas)
    roofline step time on a GPU        (bench.roofline: every op at its datasheet ceiling, --gpu)

The peak is tracked over one step from the state a measured cell resets its peak counter in (after
warm-up: AdamW's moments allocated, gradients freed, the batch resident), with tensor sizes rounded as
the caching allocator rounds them. Summing the parts instead misses that gradients grow while
activations are freed, and that transients stack on what is saved; it underestimated the faithful
paper-size step by 3 GiB (24.1 against 27.2 GiB).

as rows of the result schema with kind="estimate". Fake tensors are CPU tensors (fake CUDA tensors
abort the process on a CPU build), so left alone the CPU build dispatches the step. Where that would
misstate a GPU step, the CUDA build's dispatch is modelled (`--dispatch cuda`, the default;
bench.gpu_dispatch): its autocast policy (softmax, norms, sums in fp32; bench.cuda_autocast), SDPA's
kernel choice (bench.cuda_sdpa; `sdpa_efficient` is built as its `sdpa` stand-in), attention with
dropout (BERT's) as one fused kernel rather than the CPU's fp32 math path, rms_norm as one
`_fused_rms_norm` rather than its decomposition, and AdamW's foreach path. Other CUDA-only variants are
recorded unsupported. `--dispatch cpu` keeps the CPU build's choices, to compare with CPU cells. The
Triton kernels are torch custom ops with fake implementations, so Triton variants are estimated (one
op per kernel launch) where they cannot run. When a GPU measurement of the same cell exists, reports
show predicted against measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from bench import store
from bench.allocations import AllocationTracker
from bench.cell import CellSpec, base_result, classify_exception
from bench.config import parse_with_config
from bench.cuda_sdpa import NoCudaKernel, NotEmulated
from bench.design import DESIGNS, expand
from bench.environment import environment, fingerprint, git_info, host_device_info
from bench.flops import counter, matmul_precision, model_flops
from bench.gpu_dispatch import buildable_on_cpu, cuda_dispatch, foreach_as_on_cuda, set_up_as_on_cuda
from bench.gpu_specs import GpuSpec, find_gpu
from bench.memory import SavedBytes, grad_bytes, optimizer_state_bytes, param_bytes
from bench.recompute import counting_recomputation
from bench.result import Result
from bench.roofline import RooflineMode
from bench.step import TrainStep
from bench.table import render
from models import SIZES, Size, Variant, build, example_batch, get_size, supports

DEFAULT_GPU = find_gpu("H100 SXM")
# Whose dispatch the fake step follows where the two builds differ (bench.gpu_dispatch): the CUDA
# build's (what a paper-size prediction is for) or the CPU build's (what a CPU cell really runs).
DISPATCH_CHOICES = ("cuda", "cpu")


def _check_dispatch(dispatch: str) -> None:
    if dispatch not in DISPATCH_CHOICES:
        raise ValueError(f"dispatch must be one of {DISPATCH_CHOICES}, got {dispatch!r}")


def _variant_to_build(variant: Variant, dispatch: str) -> Variant:
    """Under CUDA's dispatch a CUDA-only attention backend is built as its stand-in (bench.gpu_dispatch)."""
    _check_dispatch(dispatch)
    return buildable_on_cpu(variant) if dispatch == "cuda" else variant


def dispatch_context(dispatch: str) -> ContextManager[None]:
    """What a fake step of `dispatch`'s choices runs under (attention is chosen when the model is built,
    in `fake_training_step`)."""
    _check_dispatch(dispatch)
    return cuda_dispatch() if dispatch == "cuda" else nullcontext()


def _fakeify(model: torch.nn.Module, mode) -> None:
    """Turn real parameters and buffers into fakes of the same mode.

    Weights loaded from disk (text=minilm's pretrained checkpoint) arrive as real tensors even when the
    model is built inside the mode, and a real weight meeting a fake input is an error.
    """
    from torch._subclasses.fake_tensor import FakeTensor

    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None and not isinstance(p, FakeTensor):
                module._parameters[name] = torch.nn.Parameter(mode.from_tensor(p.detach()), p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None and not isinstance(b, FakeTensor):
                module._buffers[name] = mode.from_tensor(b)


def fake_inputs(mode, size: Size, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volumes made directly as fakes (no 0.9 GB real batch); token ids and mask from the real
    `example_batch` on a one-patch volume, converted into the mode (they are a few KiB)."""
    tiny_volume = size.replace(depth=size.temporal_patch_size, image_size=size.patch_size)
    _, ids, mask = example_batch(tiny_volume, batch=batch)
    with mode:
        volumes = torch.empty(batch, *size.volume_shape)
    return volumes, mode.from_tensor(ids), mode.from_tensor(mask)


def fake_training_step(variant: Variant, size: Size, batch: int,
                       dispatch: str = "cuda") -> tuple[Any, TrainStep]:
    """A TrainStep on fake tensors in the steady state a measured cell times from (see
    `_create_optimizer_state`), and the FakeTensorMode to run it in. `dispatch`: whose choices to follow
    where the CUDA and the CPU build differ (DISPATCH_CHOICES); run the step under
    `dispatch_context(dispatch)` for the choices made as ops are dispatched."""
    mode = FakeTensorMode()
    with mode:
        model = build(_variant_to_build(variant, dispatch), size, device="cpu")
    _fakeify(model, mode)
    if dispatch == "cuda":
        set_up_as_on_cuda(model, variant)  # attention backend, SDPA kernel, BERT's fused dropout attention
    volumes, ids, mask = fake_inputs(mode, size, batch)
    with mode:
        step = TrainStep(model, (volumes, ids, mask))
        # GradScaler.step reads found_inf with .item(), which fake tensors cannot answer; loss scaling
        # is one scalar multiply and its state a few bytes, so the estimate steps without it.
        step.scaler = None
        if dispatch == "cuda":
            foreach_as_on_cuda(step.optimizer)  # torch's default AdamW path for CUDA parameters
        _create_optimizer_state(step)
    return mode, step


def resident_tensors(step: TrainStep) -> list[torch.Tensor]:
    """What is allocated between steps: weights, buffers, optimizer state and the batch."""
    state = [t for s in step.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return [*step.model.parameters(), *step.model.buffers(), step.volumes, step.input_ids,
            step.attention_mask, *state]


def estimate_variant(variant: Variant, size: Size, batch: int, gpu: GpuSpec = DEFAULT_GPU,
                     dispatch: str = "cuda", breakdown: int = 0, also_gpus: "tuple[GpuSpec, ...]" = ()
                     ) -> dict[str, Any]:
    """Memory (bytes), FLOPs and the roofline step time on `gpu` of one training step of `variant`,
    computed on fake tensors with `dispatch`'s kernel and autocast choices (DISPATCH_CHOICES); with
    `breakdown`, the roofline's `breakdown` costliest call sites (op, operand shapes and dtypes) too;
    with `also_gpus`, the roofline step on each of those as well (`step_s_on`)."""
    mode, step = fake_training_step(variant, size, batch, dispatch)
    model = step.model
    with mode, dispatch_context(dispatch):
        tracker = AllocationTracker(resident_tensors(step))
        with tracker:
            tracker.phase = "forward"
            with SavedBytes(step.resident()) as saved:
                loss = step.forward()
            tracker.phase = "backward"
            step.backward(loss)
            grads = grad_bytes(model)
            tracker.phase = "optimizer step"
            step.optimizer_step()
            del loss
            step.zero_grad()
        # FLOPs and the roofline in a second pass: FlopCounterMode's module hooks keep tensors alive through
        # a checkpointed backward (1.4 GiB more at the paper-size peak), so it must not see the tracked step.
        precision = matmul_precision(variant.precision, "cuda")  # the matmul precision MFU's peak is for
        roofline = RooflineMode(gpu, tf32=precision == "tf32", signatures=breakdown > 0, also=also_gpus)
        forward, backward, recomputed, roofline = flops_and_roofline(step, roofline)
        memory = {
            "param_bytes": param_bytes(model), "grad_bytes": grads,
            "optimizer_state_bytes": optimizer_state_bytes(step.optimizer),
            "saved_activations_bytes": saved.bytes, "largest_transient_bytes": tracker.largest_op_bytes,
            "predicted_peak_bytes": tracker.peak_bytes,
            "predicted_peak_at": f"{tracker.peak_op} in the {tracker.peak_phase}" if tracker.peak_op else None,
        }
    flops = {"forward": forward, "backward": backward, "total": forward + backward, "recomputed": recomputed}
    bound = roofline.estimate(top_signatures=breakdown)
    return {"memory": memory, "flops": flops, "largest_op": tracker.largest_op,
            "roofline": dict(bound.to_dict(), mfu_bound=bound.mfu_bound(precision, model_flops(flops)))}


def flops_and_roofline(step: TrainStep, roofline: RooflineMode) -> tuple[float, float, float, RooflineMode]:
    """Forward and backward FLOPs (FlopCounterMode), the part of backward that checkpointing recomputes
    (bench.recompute), and `roofline` filled by one training step."""
    # The roofline innermost (entered last, so it sees each op first): FlopCounterMode decomposes ops it
    # has no formula for but a composite kernel (silu_backward, _fused_rms_norm), and a roofline beneath
    # it would cost the decomposition's passes instead of the one kernel a GPU runs.
    with counting_recomputation(step.model) as recomputed:
        with counter() as fwd, roofline:
            loss = step.forward()
        with counter() as bwd, roofline:
            step.backward(loss)
    with roofline:
        step.optimizer_step()
    del loss
    step.zero_grad()
    return float(fwd.get_total_flops()), float(bwd.get_total_flops()), recomputed.flops, roofline


def _create_optimizer_state(step: TrainStep) -> None:
    """Bring the optimizer to its steady state (AdamW's moments exist, gradients are freed), which is
    where a measured cell resets its peak counter after warm-up, without a forward and backward pass."""
    for p in step.model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    step.optimizer_step()
    step.zero_grad()


def estimate_cell(spec: CellSpec, gpu: GpuSpec = DEFAULT_GPU, dispatch: str = "cuda",
                  breakdown: int = 0, also_gpus: "tuple[GpuSpec, ...]" = ()) -> Result:
    started = time.perf_counter()
    variant = spec.variant_obj
    result = base_result(spec, "error", kind="estimate")
    result.cell_key = result.cell_key.replace("|measured", "|estimate")
    with FakeTensorMode():
        # Asked as the model will be built: Triton variants need no runnable kernels on fake tensors, and
        # under CUDA's dispatch a CUDA-only attention backend is built as its stand-in.
        reason = supports(_variant_to_build(variant, dispatch), spec.device)
    if variant.compile and not reason:
        # Under a dispatch mode torch.compile runs the step eagerly (a tiny compiled faithful step gave
        # compile=off's FLOPs, peak and op count exactly), so an estimate would be the eager step's, not
        # what inductor's fused and recomputing kernels move: say so rather than report it.
        reason = ("compile=on: under the estimator's dispatch modes torch.compile runs eagerly, so this "
                  "would be compile=off's estimate; estimate compile=off")
    if reason:
        result.status, result.reason = "unsupported", reason
    else:
        try:
            out = estimate_variant(variant, get_size(spec.size), spec.batch, gpu, dispatch, breakdown, also_gpus)
            for key, value in out["memory"].items():
                setattr(result.memory, key, value)
            result.flops = out["flops"]
            result.roofline = out["roofline"]
            result.message = (f"FakeTensorMode on the CPU build, {dispatch.upper()} build's dispatch; "
                              f"largest transient from {out['largest_op']}")
            result.status = "ok"
        except (NoCudaKernel, NotEmulated) as exc:  # a GPU would refuse it, or the estimate cannot say
            result.status, result.reason = "unsupported", f"under CUDA's dispatch: {exc}"
        except Exception as exc:
            result.status, result.message = classify_exception(exc)
    result.wall_s = time.perf_counter() - started
    return result


def breakdown_table(result: Result) -> str:
    """Where a cell's predicted peak is reached and its costliest call sites in the roofline, as text."""
    lines = [f"  predicted peak reached at {result.memory.predicted_peak_at}",
             "  | call site (op, operands) | calls | ms | share | GB moved | TFLOP |",
             "  |---|---|---|---|---|---|"]
    for site in result.roofline.get("top_signatures", []):
        lines.append(f"  | `{site['name']}` | {site['calls']} | {site['seconds'] * 1e3:.2f} | "
                     f"{site['share']:.1%} | {site['bytes'] / 1e9:.2f} | {site['flops'] / 1e12:.2f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.estimate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--design", choices=DESIGNS, default="paper")
    p.add_argument("--size", choices=list(SIZES), default="paper")
    p.add_argument("--only", action="append", default=[], metavar="AXIS=V1,V2")
    p.add_argument("--exclude", action="append", default=[], metavar="AXIS=V")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None)
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the size preset's)")
    p.add_argument("--gpu", default=DEFAULT_GPU.needle, help="GPU whose datasheet ceilings the roofline step "
                   "time uses (a substring of its CUDA name, e.g. H100, H200, A100-SXM4-80GB)")
    p.add_argument("--dispatch", choices=DISPATCH_CHOICES, default="cuda",
                   help="whose autocast policy and kernel choices to follow where the builds differ: the "
                   "CUDA build's, or the CPU build's (to compare with CPU cells)")
    p.add_argument("--breakdown", type=int, default=0, metavar="N",
                   help="also list each cell's N costliest call sites in the roofline (op, operand shapes "
                   "and dtypes) and say where the predicted peak is reached")
    p.add_argument("--out", default="results", help="directory for result files")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    try:
        size = get_size(args.size)
        cells = expand(args.design, args.only, args.exclude, args.precision)
    except ValueError as exc:
        parser.error(str(exc))
    batch = args.batch or size.batch
    gpu = find_gpu(args.gpu)
    if gpu is None:
        parser.error(f"--gpu {args.gpu!r}: no entry in bench.gpu_specs matches")
    device = torch.device("cpu")
    host, git = host_device_info(device), git_info()
    host = dict(host, type="cpu", name=f"FakeTensorMode ({host['name']})")
    fp = fingerprint(host, environment(device), git)
    path = Path(args.out) / f"estimate-{size.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.jsonl"
    print(f"bench.estimate: design {args.design}, {len(cells)} cells, size {size.name}, batch {batch}",
          file=sys.stderr)
    rows = []
    for cell in cells:
        spec = CellSpec(variant=cell.variant.as_dict(), size=size.name, batch=batch, device="cpu",
                        design=cell.design, baseline=cell.baseline, env_fingerprint=fp, host_device=host,
                        git=git)
        result = estimate_cell(spec, gpu, args.dispatch, args.breakdown)
        result.env = environment(device)
        store.append(path, result)
        rows.append(result)
        print(f"  {cell.key}: {result.status} in {result.wall_s:.1f} s", file=sys.stderr)
    store.write_csv(path.with_suffix(".csv"), rows)
    print(render(rows))
    gib = 2**30
    for r in rows:
        if r.status == "ok":
            m = r.memory
            recomputed = r.flops.get("recomputed") or 0.0
            print(f"{r.variant_key}: saved activations {m.saved_activations_bytes / gib:.2f} GiB, "
                  f"predicted peak {m.predicted_peak_bytes / gib:.2f} GiB, "
                  f"FLOPs/step {r.flops['total'] / 1e12:.2f} TFLOP (fwd {r.flops['forward'] / 1e12:.2f}, "
                  f"bwd {r.flops['backward'] / 1e12:.2f}"
                  + (f", of which recomputed {recomputed / 1e12:.2f}" if recomputed else "") + ")")
            roof = r.roofline
            print(f"{'':{len(r.variant_key)}}  roofline on {roof['gpu']}: {roof['step_s'] * 1e3:.1f} ms "
                  f"({roof['memory_bound_s'] / roof['step_s']:.0%} of it memory-bound, {roof['ops']} ops), "
                  f"MFU at most {roof['mfu_bound']:.0%}; top: " + ", ".join(
                      f"{op['name']} {op['share']:.0%}" for op in roof["top_ops"][:3]))
            if args.breakdown:
                print(breakdown_table(r))
    print(f"results: {path}\ncsv:     {path.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
