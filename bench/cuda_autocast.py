"""CUDA's autocast policy, applied to the CPU tensors of a fake step (bench.estimate).

Autocast picks each op's dtype by device, and the CPU and CUDA policies differ. Under CUDA's, softmax,
layer_norm, rms_norm, sum, pow, log and the vector norms run in fp32 (their inputs are upcast, or their
output dtype is set to fp32) and einsum runs in bf16/fp16; under the CPU's, all of those keep their
input's dtype, and cat, stack and cross_entropy have rules of their own. A fake step runs the CPU
policy (fake tensors are CPU tensors), so it would miss, for example, the fp32 attention probabilities
that upstream CT-CLIP's `sim.softmax(dim=-1)` keeps for backward on a GPU (4.0 GiB of the faithful
step's predicted peak at paper size, batch 4, bf16) and the fp32 copies LayerNorm keeps of its inputs
(1.4 GiB more).

`cuda_autocast_policy()` registers, for as long as it is active, AutocastCPU kernels that do what the
AutocastCUDA kernels do (the casts `at::autocast::WrapFunction_` makes for each CastPolicy) and
neutralises the CPU-only rules. The op lists are ATen's (`AT_FORALL_*` in ATen/autocast_mode.h, which
ships with torch); tests/bench/test_cuda_autocast.py checks them against that header and against the
AutocastCUDA kernels the installed build registers, so a torch upgrade that changes the policy fails
there. The lower-precision ops both policies share (mm, linear, matmul, bmm, addmm, conv3d, SDPA, ...)
keep the CPU build's kernels, whose casts of fp32 weights are cached per autocast region as CUDA's are.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch._C import DispatchKey, DispatchKeySet, _ExcludeDispatchKeyGuard

# CastPolicy::lower_precision_fp on CUDA (AT_FORALL_LOWER_PRECISION_FP).
LOWER_PRECISION_FP = (
    "_convolution.deprecated", "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d",
    "conv_transpose2d.input", "conv_transpose3d.input", "convolution", "prelu", "addmm", "addmv", "addr",
    "matmul", "einsum", "mm", "mv", "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul",
    "linalg_multi_dot", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "lstm_cell", "gru_cell",
    "rnn_tanh_cell", "rnn_relu_cell", "_scaled_dot_product_flash_attention", "scaled_dot_product_attention",
)
# The same policy, registered beside that list in autocast_mode.cpp (cuDNN's own entry points).
LOWER_PRECISION_FP_CUDNN = ("cudnn_convolution", "cudnn_convolution_transpose")
# CastPolicy::fp32 (AT_FORALL_FP32): floating inputs upcast to fp32.
FP32 = (
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "softplus", "layer_norm",
    "native_layer_norm", "rms_norm", "group_norm", "frobenius_norm.dim", "nuclear_norm", "nuclear_norm.dim",
    "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
    "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
    "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
    "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
    "upsample_nearest1d", "_upsample_nearest_exact1d", "upsample_nearest2d", "_upsample_nearest_exact2d",
    "upsample_nearest3d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "_upsample_bilinear2d_aa", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa",
)
# CastPolicy::fp32_set_opt_dtype (AT_FORALL_FP32_SET_OPT_DTYPE): the op's own `dtype` argument is set to
# fp32 (unless given), so the input is read as it is and no upcast copy is made; the output is fp32.
FP32_SET_OPT_DTYPE = (
    "prod", "prod.dim_int", "softmax.int", "log_softmax.int", "cumprod", "cumsum", "linalg_vector_norm",
    "linalg_matrix_norm", "linalg_matrix_norm.str_ord", "sum", "sum.dim_IntList",
)
# CastPolicy::fp32_append_dtype (AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE): redispatched to the overload
# that takes an output dtype.
FP32_APPEND_DTYPE = {"norm.Scalar": "norm.ScalarOpt_dtype", "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype"}
# CastPolicy::promote (AT_FORALL_PROMOTE): all floating inputs cast to the widest among them.
PROMOTE = ("addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler", "index_put",
           "tensordot", "scatter_add")
# Refused outright under CUDA autocast (at::autocast::binary_cross_entropy_banned).
BANNED = ("binary_cross_entropy",)

_AUTOCAST_CPU = DispatchKeySet(DispatchKey.AutocastCPU)


def cuda_policy_ops() -> set[str]:
    """Every op overload ("name" or "name.overload") CUDA's autocast policy has a kernel for."""
    return {*LOWER_PRECISION_FP, *LOWER_PRECISION_FP_CUDNN, *FP32, *FP32_SET_OPT_DTYPE, *FP32_APPEND_DTYPE,
            *PROMOTE, *BANNED}


def _overload(name: str) -> torch._ops.OpOverload:
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


def _eligible(value: Any) -> bool:
    # is_eligible: a defined floating tensor of the autocast device (CPU here; fake tensors say CPU),
    # not fp64.
    return (isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.is_floating_point()
            and value.dtype != torch.float64)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if _eligible(value):
        return value.to(dtype) if value.dtype != dtype else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(item, dtype) for item in value)
    return value


def _tensors(values: Any) -> Iterator[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from _tensors(value)


def _below_autocast(op: torch._ops.OpOverload, args: tuple, kwargs: dict,
                    dtype: "torch.dtype | None" = None) -> Any:
    """`op` with its eligible inputs cast to `dtype` (none if None), dispatched past AutocastCPU."""
    if dtype is not None:
        args, kwargs = _cast(args, dtype), {k: _cast(v, dtype) for k, v in kwargs.items()}
    with _ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
        return op(*args, **kwargs)


def _cacheable(value: Any) -> bool:
    # What at::autocast::cached_cast would keep for the rest of the autocast region: fp32 leaves that
    # require grad (weights).
    return (isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.is_leaf
            and value.requires_grad and not value._is_view())


def _lower_precision_fp(op: torch._ops.OpOverload) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        if any(_cacheable(t) for t in _tensors([*args, *kwargs.values()])):
            # CUDA would cast such a weight once per autocast region; this emulation casts per call.
            warnings.warn(f"{op}: an fp32 weight is cast per call, not cached as CUDA autocast does",
                          stacklevel=2)
        return _below_autocast(op, args, kwargs, torch.get_autocast_dtype("cpu"))
    return kernel


def _fp32(op: torch._ops.OpOverload) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        return _below_autocast(op, args, kwargs, torch.float32)
    return kernel


def _fp32_set_opt_dtype(op: torch._ops.OpOverload) -> Callable[..., Any]:
    names = [a.name for a in op._schema.arguments]
    position = names.index("dtype")

    def kernel(*args: Any, **kwargs: Any) -> Any:
        with _ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            given = args[position] if len(args) > position else kwargs.get("dtype")
            if _eligible(args[0]) and given is None:  # firstarg_is_eligible; an explicit dtype is kept
                args, kwargs = args[:position], {**kwargs, "dtype": torch.float32}
            return op(*args, **kwargs)
    return kernel


def _fp32_append_dtype(op: torch._ops.OpOverload, target: torch._ops.OpOverload) -> Callable[..., Any]:
    def kernel(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with _ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            dtype = torch.float32 if _eligible(self) else self.dtype  # type_from_firstarg
            return target(self, *args, **kwargs, dtype=dtype)
    return kernel


def _promote(op: torch._ops.OpOverload) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        # promote_type: from the lower precision type, fp32 wins over it; fp64 inputs are ignored.
        lower = dtype = torch.get_autocast_dtype("cpu")
        for tensor in filter(_eligible, _tensors([*args, *kwargs.values()])):
            if torch.float32 in (dtype, tensor.dtype):
                dtype = torch.float32
            elif tensor.dtype != lower:
                raise RuntimeError(f"{op}: unexpected floating dtype {tensor.dtype} under autocast")
        return _below_autocast(op, args, kwargs, dtype)
    return kernel


def _banned(op: torch._ops.OpOverload) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{op} is unsafe to autocast (refused by CUDA autocast); use the "
                           "_with_logits form, as torch's message says")
    return kernel


def _passthrough(op: torch._ops.OpOverload) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        return _below_autocast(op, args, kwargs)
    return kernel


def registered_ops(key: str) -> set[str]:
    """The aten op overloads this build registers a kernel for at dispatch `key` (e.g. "AutocastCUDA")."""
    names = torch._C._dispatch_get_all_op_names()
    return {n.split("::", 1)[1] for n in names
            if n.startswith("aten::") and torch._C._dispatch_has_kernel_for_dispatch_key(n, key)}


def policy_drift() -> dict[str, list[str]]:
    """Where this build's AutocastCUDA registrations and the tables differ (both lists empty: the same
    ops). The GPU check records it, since a GPU machine's torch need not be the one the tables follow."""
    registered, tables = registered_ops("AutocastCUDA"), cuda_policy_ops()
    return {"not_registered": sorted(tables - registered), "not_in_tables": sorted(registered - tables)}


def _kernels() -> dict[str, Callable[..., Any]]:
    cpu_native = registered_ops("AutocastCPU")
    # The tables as this build applies them: torch 2.11 (the GPU machine's) registers no AutocastCUDA
    # rule for rms_norm, so there it keeps its input's dtype on a GPU too. policy_drift reports the
    # difference; an op this build lacks altogether has no calls to cast.
    applied = cuda_policy_ops() & registered_ops("AutocastCUDA")
    lower = (*LOWER_PRECISION_FP, *LOWER_PRECISION_FP_CUDNN)
    makers: list[tuple[str, Callable[[torch._ops.OpOverload], Callable[..., Any]]]] = [
        # The lower-precision ops both policies share keep the CPU kernel and its cast cache.
        *((n, _lower_precision_fp) for n in lower if n not in cpu_native),
        *((n, _fp32) for n in FP32),
        *((n, _fp32_set_opt_dtype) for n in FP32_SET_OPT_DTYPE),
        *((n, lambda op, target=t: _fp32_append_dtype(op, _overload(target)))
          for n, t in FP32_APPEND_DTYPE.items()),
        *((n, _promote) for n in PROMOTE),
        *((n, _banned) for n in BANNED),
    ]
    kernels = {name: make(_overload(name)) for name, make in makers if name in applied and _exists(name)}
    # The CPU's own rules (cat, stack, ...) and any the CUDA build lacks are neutralised.
    kernels.update({name: _passthrough(_overload(name)) for name in cpu_native - applied})
    return kernels


def _exists(name: str) -> bool:
    base, _, overload = name.partition(".")
    packet = getattr(torch.ops.aten, base, None)
    return packet is not None and (overload or "default") in packet.overloads()


@contextmanager
def cuda_autocast_policy() -> Iterator[None]:
    """Within this block, `torch.autocast("cpu", ...)` casts as `torch.autocast("cuda", ...)` would."""
    if torch._C._dispatch_has_kernel_for_dispatch_key("aten::layer_norm", "AutocastCPU"):
        # Already active (layer_norm is on CUDA's fp32 list, not on the CPU's).
        yield
        return
    library = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            # Replacing the CPU's own AutocastCPU kernels is the point, not an accident.
            warnings.filterwarnings("ignore", message="(?s).*[Oo]verriding a previously registered kernel")
            for name, kernel in _kernels().items():
                library.impl(name, kernel, "AutocastCPU")
        yield
    finally:
        library._destroy()
