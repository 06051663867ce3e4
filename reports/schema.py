"""Field names and values of the two result schemas, mirrored here so that `reports` reads files only.

Efficiency rows are `bench.result.Result` (schema version 1, kind "measured" | "estimate"); accuracy
rows are specified in docs/accuracy-schema.md (schema version 1, kind "accuracy"). `reports` must not
import `bench` or `ablations`, so the constants are copied; tests/reports checks them against the
originals where those packages import, so a schema change there cannot drift silently from this copy.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

EFFICIENCY_KINDS = ("measured", "estimate")
ACCURACY_KIND = "accuracy"
KINDS = EFFICIENCY_KINDS + (ACCURACY_KIND,)

EFFICIENCY_STATUSES = ("ok", "oom", "unsupported", "error", "timeout")
ACCURACY_STATUSES = ("ok", "error", "unsupported", "diverged")

# Stages timed at boundaries, in execution order; `step` is the separately timed whole step.
STAGES = ("text_forward", "vision_forward", "loss", "backward", "optimizer")
ALL_STAGES = STAGES + ("step",)
STAGE_STATS = ("median", "iqr", "p10", "p90", "n")

# Memory fields (bytes). CPU rows have no GPU figures: the accounting parts and RSS stand in, labelled so.
# bench's Memory also has one text field, predicted_peak_at (where an estimate's peak is reached),
# which the reports do not load.
GPU_PEAK = "gpu_allocated_peak_bytes"
GPU_RESERVED = "gpu_reserved_peak_bytes"
PREDICTED_PEAK = "predicted_peak_bytes"
SAVED = "saved_activations_bytes"
PARAMS = "param_bytes"
GRADS = "grad_bytes"
OPTIMIZER = "optimizer_state_bytes"
TRANSIENT = "largest_transient_bytes"
CPU_RSS_PEAK = "cpu_peak_rss_bytes"
CPU_RSS_BASELINE = "cpu_rss_baseline_bytes"
ACCOUNTING_PARTS = (PARAMS, GRADS, OPTIMIZER, SAVED)
MEMORY_FIELDS = (
    SAVED,
    PARAMS,
    GRADS,
    OPTIMIZER,
    TRANSIENT,
    PREDICTED_PEAK,
    CPU_RSS_BASELINE,
    CPU_RSS_PEAK,
    "gpu_allocated_baseline_bytes",
    GPU_PEAK,
    "gpu_peak_minus_baseline_bytes",
    "gpu_requested_peak_bytes",
    GPU_RESERVED,
    "nvml_used_before_bytes",
    "nvml_used_after_bytes",
    "cuda_context_bytes",
)

# Accuracy metrics: the paper's five first, in its column order.
PAPER_METRICS = ("auroc", "f1", "precision", "recall", "auprc")
PROTOCOLS = ("ctclip", "clean", "maxf1")
AVERAGES = ("macro", "weighted")

GIB = 2**30
