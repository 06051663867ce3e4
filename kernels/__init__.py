"""Triton fused kernels for CT-CLIP's normalisation, gated feed-forward and attention prologue: RMSNorm
(alone, or with the residual add before it: TritonAddRMSNorm), SwiGLU, GEGLU, the per-head q/k L2-norm +
scale + rotary embedding (TritonQKNormRope), and the VQ's nearest-code search (nearest_code: argmax of
x @ codes^T without the score matrix), the PEG's causal depthwise 3x3x3 convolution on the token
stream (triton_peg_conv), the patch embedding's gather + LayerNorm (triton_patch_layer_norm), and the
latent projections of a few rows read from the fp32 weight in place (triton_skinny_linear), and the
gated feed-forward with its gate in the matmuls' epilogues (triton_gated_mlp).

    from kernels import TritonRMSNorm, TritonSwiGLU, TritonGEGLU, supports
    if supports(device) is None:
        norm = TritonRMSNorm(512).to(device)

Importing this package never imports Triton: the modules are loaded on first attribute access, so a
machine without Triton can import `kernels` and ask `supports()` why the kernels cannot run. On a CPU the
kernels run in the Triton interpreter, which must be switched on (`TRITON_INTERPRET=1`) before the
kernel modules are first loaded, because `@triton.jit` decides at definition time.

This package imports only torch and triton.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

import torch

__all__ = ["TritonAddRMSNorm", "TritonGEGLU", "TritonQKNormRope", "TritonRMSNorm", "TritonSwiGLU",
           "nearest_code", "supports", "triton_patch_layer_norm", "triton_peg_add_conv", "triton_peg_conv",
           "triton_gated_mlp", "triton_skinny_linear"]

# Public name -> submodule that defines it (loaded lazily, see module docstring).
_LAZY = {
    "TritonRMSNorm": "kernels.rmsnorm",
    "TritonAddRMSNorm": "kernels.add_rmsnorm",
    "TritonSwiGLU": "kernels.swiglu",
    "TritonGEGLU": "kernels.swiglu",
    "TritonQKNormRope": "kernels.qknorm_rope",
    "nearest_code": "kernels.vq_nearest",
    "triton_peg_conv": "kernels.peg_conv",
    "triton_peg_add_conv": "kernels.peg_add_conv",
    "triton_patch_layer_norm": "kernels.patch_norm",
    "triton_skinny_linear": "kernels.skinny_linear",
    "triton_gated_mlp": "kernels.gated_linear",
}
KERNEL_MODULES = ("kernels.rmsnorm", "kernels.add_rmsnorm", "kernels.swiglu", "kernels.qknorm_rope",
                   "kernels.vq_nearest", "kernels.peg_conv", "kernels.peg_add_conv", "kernels.patch_norm",
                   "kernels.skinny_linear", "kernels.gated_linear")


def _interpret_env() -> bool:
    # Same spelling rules as triton.knobs' env_bool, without importing triton.
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes", "y")


def supports(device: "torch.device | str" = "cpu") -> "str | None":
    """None when the Triton kernels can run on `device`, else a one-line reason."""
    device = torch.device(device)
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton; Linux only)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "device is cuda but no CUDA GPU is available"
        index = device.index if device.index is not None else torch.cuda.current_device()
        if torch.version.hip is None and torch.cuda.get_device_capability(index) < (7, 0):
            name = torch.cuda.get_device_name(index)
            return f"Triton needs compute capability >= 7.0 (as torch.compile checks); {name} is older"
        return None
    if device.type == "cpu":
        loaded = [sys.modules[name] for name in KERNEL_MODULES if name in sys.modules]
        if loaded:
            # The kernels already exist: what counts is whether they were defined interpreted.
            if all(getattr(module, "INTERPRETED", False) for module in loaded):
                return None
            return ("the Triton kernels were defined without TRITON_INTERPRET=1, so they cannot run on CPU; "
                    "set it before kernels/ is first used")
        if _interpret_env():
            return None
        return "Triton kernels need a CUDA GPU, or TRITON_INTERPRET=1 set before kernels/ is imported"
    return f"Triton kernels run on CUDA GPUs (or on CPU in the interpreter), not on {device.type}"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
