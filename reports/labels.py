"""Human names for variants, statuses and changes: the words that appear in table cells.

The seed paper names a row by its architecture ("SA + GEGLU + LN") and loss ("SigLIP"). Axes the seed
did not vary are appended only when they differ from CT-CLIP's own choice, so two rows never share a
name unless they are the same variant.
"""

from __future__ import annotations

import re
from typing import Any

ATTENTION = {
    "math": "SA",
    "sdpa": "SDPA",
    "sdpa_flash": "FA (SDPA)",
    "sdpa_efficient": "ME (SDPA)",
    "sdpa_cudnn": "cuDNN (SDPA)",
    "flex": "Flex",
    "flash_attn": "FA2",
    "xformers": "xFormers",
}
MLP = {
    "geglu": "GEGLU",
    "swiglu": "SwiGLU",
    "swiglu_triton": "SwiGLU (Triton)",
    "geglu_triton": "GEGLU (Triton)",
    "swiglu_gemm": "SwiGLU (Triton GEMM epilogue)",
    "geglu_gemm": "GEGLU (Triton GEMM epilogue)",
}
NORM = {"layernorm": "LN", "rmsnorm": "RMSNorm", "rmsnorm_triton": "RMSNorm (Triton)",
        "add_rmsnorm_triton": "add + RMSNorm (Triton)"}
LOSS = {"softmax": "Softmax", "siglip": "SigLIP"}
# CT-CLIP's own value of each axis outside the seed's three; a differing value is named after the arch.
FAITHFUL_OTHER = {
    "position": "cpb",
    "text": "bert-base",
    "vq": True,
    "vq_impl": "onehot",
    "peg_layout": "upstream",
    "peg_impl": "conv3d",
    "patch_embed": "eager",
    "projection": "eager",
    "residual": "fp32",
    "checkpointing": False,
    "compile": False,
    "optimizer": "adamw",
    "qk_norm": "eager",
}
_OTHER_NAMES = {
    "position": "pos",
    "text": "text",
    "vq": "VQ",
    "vq_impl": "VQ impl",
    "peg_layout": "PEG",
    "peg_impl": "PEG impl",
    "patch_embed": "patch embed",
    "projection": "projection",
    "residual": "residual",
    "checkpointing": "ckpt",
    "compile": "compile",
    "optimizer": "opt",
    "qk_norm": "QK-norm",
}
STATUS = {
    "ok": "ok",
    "oom": "OOM",
    "unsupported": "unsupported",
    "error": "error",
    "timeout": "timeout",
    "diverged": "diverged",
}


def _value(value: Any) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def architecture(variant: dict[str, Any]) -> str:
    """'SA + GEGLU + LN', then any other non-faithful axis: 'FA (SDPA) + SwiGLU + RMSNorm, pos=none'."""
    parts = [
        ATTENTION.get(variant.get("attention", "math"), str(variant.get("attention"))),
        MLP.get(variant.get("mlp", "geglu"), str(variant.get("mlp"))),
        NORM.get(variant.get("norm", "layernorm"), str(variant.get("norm"))),
    ]
    extra = [
        f"{_OTHER_NAMES[a]}={_value(variant[a])}"
        for a, v in FAITHFUL_OTHER.items()
        if a in variant and variant[a] != v
    ]
    return " + ".join(parts) + (", " + ", ".join(extra) if extra else "")


def evaluated_as(variant_key: str) -> str:
    """' [CT-CLIP_v2]' for a row of `ablations.evaluate_checkpoint` (key 'faithful@CT-CLIP_v2'), else ''."""
    _, sep, label = variant_key.partition("@")
    return f" [{label}]" if sep else ""


def loss(variant: dict[str, Any]) -> str:
    return LOSS.get(variant.get("loss", "softmax"), str(variant.get("loss")))


def changed(variant: dict[str, Any], base: dict[str, Any]) -> str:
    """The switches that turn `base` into `variant`: 'attention: math → sdpa_flash'; '' when equal."""
    diffs = [
        f"{axis}: {_value(base.get(axis))} → {_value(value)}"
        for axis, value in variant.items()
        if base.get(axis) != value
    ]
    return "; ".join(diffs)


def status(code: str) -> str:
    return STATUS.get(code, code)


def first_line(text: str | None, limit: int = 90) -> str:
    line = (text or "").strip().split("\n")[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def log_tail_end(message: str | None, limit: int = 90) -> str:
    """The last non-blank line of the cell process's log tail a message carries (bench.runner's timeout
    and crash messages end with "Log tail:" and the log's last lines): where the process was when it
    stopped, which the message's first line leaves out. '' without a tail."""
    _, marker, tail = (message or "").partition("Log tail:")
    last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
    return first_line(last, limit) if marker else ""


def note(status_code: str, reason: str | None, message: str | None, flags: list[str] | None = None,
         limit: int = 90) -> str:
    """Why a cell did not run (the backend's reason, or the error's first line and the end of its log
    tail), or its warning flags, each cut to `limit` characters."""
    if status_code == "unsupported":
        return first_line(reason or message, limit)
    if status_code != "ok":
        tail = log_tail_end(message, limit)
        return first_line(message or reason, limit) + (f" {tail}" if tail else "")
    # "noisy:a, noisy:b" -> "noisy: a, b": the flag list can be as long as the row otherwise.
    noisy = [f.split(":", 1)[1] for f in flags or [] if f.startswith("noisy:")]
    other = [first_line(f, limit) for f in flags or [] if not f.startswith("noisy:")]
    return "; ".join(other + ([f"noisy: {', '.join(noisy)}"] if noisy else []))


def slug(*parts: Any) -> str:
    """A file-name-safe name: 'cpu-tiny-b2', 'nvidia-h100-80gb-hbm3-paper-b4'."""
    text = "-".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "results"
