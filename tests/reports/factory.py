"""Small result rows written by the tests themselves, as plain dicts in the two file schemas.

Deliberately independent of `bench` and `ablations` (which may change under us): a test that builds
its input from the code under test could not catch that code mis-reading the schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FAITHFUL = {
    "attention": "math",
    "position": "cpb",
    "norm": "layernorm",
    "mlp": "geglu",
    "loss": "softmax",
    "text": "bert-base",
    "vq": True,
    "peg_layout": "upstream",
    "precision": "fp32",
    "checkpointing": False,
    "compile": False,
}
MODERN = dict(FAITHFUL, attention="sdpa_flash", position="none", norm="rmsnorm", mlp="swiglu", loss="siglip")
ABBREV = {
    "attention": "attn",
    "position": "pos",
    "norm": "norm",
    "mlp": "mlp",
    "loss": "loss",
    "text": "text",
    "vq": "vq",
    "peg_layout": "peg",
    "precision": "prec",
    "checkpointing": "ckpt",
    "compile": "compile",
}

CPU = {"type": "cpu", "name": "Test CPU 9000", "count": 2, "torch_threads": 1}
H100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "count": 1, "uuid": "GPU-x"}
GIB = 2**30


def key(variant: dict[str, Any]) -> str:
    changed = [
        f"{ABBREV[a]}={('on' if v else 'off') if isinstance(v, bool) else v}"
        for a, v in variant.items()
        if FAITHFUL[a] != v
    ]
    return ",".join(changed) or "faithful"


def stage(median: float, iqr: float | None = None, n: int = 30) -> dict[str, Any]:
    iqr = median * 0.04 if iqr is None else iqr
    return {
        "median": median,
        "iqr": iqr,
        "p10": median * 0.95,
        "p90": median * 1.07,
        "n": n,
        "samples": [median] * 3,
    }


def eff_row(
    variant: dict[str, Any] | None = None,
    *,
    status: str = "ok",
    device: dict = CPU,
    size: str = "tiny",
    batch: int = 2,
    design: str | None = "paper",
    baseline: bool = False,
    kind: str = "measured",
    step: float = 0.1,
    scale: float = 1.0,
    mem: float = 1.0,
    reason: str | None = None,
    message: str | None = None,
    n: int = 30,
    **extra: Any,
) -> dict[str, Any]:
    """A bench row; `step` (s) sets the step median, stages split it 10/40/5/40/5 %, times `scale`."""
    variant = dict(variant or FAITHFUL)
    vk = key(variant)
    row = {
        "schema_version": 1,
        "kind": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "cell_key": f"{vk}|{size}|b{batch}|{device['type']}|{kind}",
        "variant_key": vk,
        "variant": variant,
        "size": size,
        "size_config": {"name": size},
        "batch": batch,
        "device": dict(device),
        "design": design,
        "baseline": baseline,
        "precision": variant["precision"],
        "timer": None,
        "stages": {},
        "timing_windows": [],
        "memory": {},
        "flops": None,
        "tflops_per_s": None,
        "mfu": None,
        "hfu": None,
        "peak": None,
        "settings": {"repeats": n},
        "env": {},
        "git": {},
        "env_fingerprint": "f",
        "flags": [],
        "timestamp": "2026-01-01T00:00:00Z",
        "wall_s": 1.0,
    }
    if status == "ok" and kind == "measured":
        parts = {
            "text_forward": 0.10,
            "vision_forward": 0.40,
            "loss": 0.05,
            "backward": 0.40,
            "optimizer": 0.05,
        }
        row["stages"] = {s: stage(step * f * scale, n=n) for s, f in parts.items()}
        row["stages"]["step"] = stage(step, n=n)
        row["timer"] = "cuda_events" if device["type"] == "cuda" else "perf_counter"
        row["flops"] = {"forward": 1e9, "backward": 2e9, "total": 3e9, "recomputed": 0.0}
        row["tflops_per_s"] = 3e9 / step / 1e12
        if device["type"] == "cuda":
            row["memory"] = {
                "gpu_allocated_peak_bytes": int(mem * 10 * GIB),
                "gpu_reserved_peak_bytes": int(mem * 11 * GIB),
                "saved_activations_bytes": int(mem * 6 * GIB),
                "param_bytes": GIB,
            }
            row["mfu"] = row["tflops_per_s"] / 989.0
            row["hfu"] = row["mfu"]  # nothing recomputed: every executed FLOP is a model FLOP
            row["peak"] = {"entry": "H100 SXM", "precision": "fp32", "tflops": 989.0}
        else:
            row["memory"] = {
                "param_bytes": int(0.1 * GIB),
                "grad_bytes": int(0.1 * GIB),
                "optimizer_state_bytes": int(0.2 * GIB),
                "saved_activations_bytes": int(mem * 0.6 * GIB),
                "cpu_rss_baseline_bytes": int(0.5 * GIB),
                "cpu_peak_rss_bytes": int((0.5 + mem) * GIB),
            }
    if status == "ok" and kind == "estimate":
        row["cell_key"] = row["cell_key"].replace("|measured", "|estimate")
        row["memory"] = {
            "param_bytes": GIB,
            "grad_bytes": GIB,
            "optimizer_state_bytes": 2 * GIB,
            "saved_activations_bytes": int(mem * 5 * GIB),
            "largest_transient_bytes": GIB // 2,
            "predicted_peak_bytes": int(4.5 * GIB + mem * 5 * GIB),
        }
        row["flops"] = {"forward": 1e9, "backward": 2e9, "total": 3e9}
        # A bound below the measured step, a quarter of it memory-bound.
        row["roofline"] = {"gpu": "H100 SXM", "step_s": step * 0.4, "compute_bound_s": step * 0.3,
                           "memory_bound_s": step * 0.1, "flops": 3e9, "mfu_bound": 0.35, "top_ops": []}
    row.update(extra)
    return row


CLASSES = ["Pleural effusion", "Emphysema", "Cardiomegaly"]


def metric(value: float, ci: float | None = 0.05) -> dict[str, Any]:
    return {
        "value": value,
        "ci_low": value - ci if ci is not None else None,
        "ci_high": value + ci if ci is not None else None,
    }


def acc_row(
    variant: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    status: str = "ok",
    auroc: float = 0.7,
    device: dict = CPU,
    size: str = "tiny",
    batch: int = 4,
    baseline: bool = False,
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    variant = dict(variant or FAITHFUL)
    vk = key(variant)
    row = {
        "schema_version": 1,
        "kind": "accuracy",
        "cell_key": f"{vk}|{size}|seed{seed}|phantoms",
        "variant_key": vk,
        "variant": variant,
        "size": size,
        "size_config": {},
        "batch": batch,
        "seed": seed,
        "design": "paper",
        "baseline": baseline,
        "status": status,
        "reason": reason,
        "message": message,
        "device": dict(device),
        "data": {"name": "phantoms", "source": "synthetic", "n_train": 64, "n_eval": 32, "split": "valid"},
        "training": {
            "steps": 50,
            "lr": 1e-4,
            "warmup_steps": 5,
            "precision": "fp32",
            "world_size": 1,
            "wall_s": 10.0,
            "final_loss": 0.5 + seed * 0.01,
        },
        "loss_curve": [{"step": s, "loss": 2.0 / (1 + s / 10) + seed * 0.01} for s in range(0, 50, 10)],
        "prompts": {"template": "t"},
        "classes": list(CLASSES),
        "protocols": {},
        "roc": {},
        "env": {},
        "git": {},
        "timestamp": "2026-01-01T00:00:00Z",
    }
    if status == "ok":
        per_class = {
            c: {
                "auroc": auroc + 0.01 * i,
                "auprc": 0.4,
                "f1": 0.5,
                "precision": 0.4,
                "recall": 0.6,
                "specificity": 0.7,
                "accuracy": 0.7,
                "balanced_accuracy": 0.65,
                "threshold": 0.5,
                "support": 10 + i,
            }
            for i, c in enumerate(CLASSES)
        }
        block = {
            "auroc": metric(auroc),
            "f1": metric(0.45),
            "precision": metric(0.3),
            "recall": metric(0.66),
            "auprc": metric(0.34),
            "specificity": metric(0.5),
        }
        for name, desc, optimistic in (
            ("ctclip", "threshold nearest the ROC corner", False),
            ("maxf1", "threshold maximising F1", True),
        ):
            row["protocols"][name] = {
                "description": desc,
                "optimistic": optimistic,
                "macro": block,
                "weighted": {k: metric(v["value"] + 0.01) for k, v in block.items()},
                "per_class": per_class,
                "bootstrap": {"n": 1000, "by": "patient", "seed": 0, "confidence": 0.95},
            }
        row["roc"] = {c: {"fpr": [0, 0.2, 0.5, 1], "tpr": [0, 0.5, 0.8, 1]} for c in CLASSES}
    return row


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
