"""Datasheet ceilings of the GPUs the harness reports against: dense peak TFLOP/s and DRAM bandwidth.

MFU divides by the peak (bench.flops); the roofline estimate (bench.roofline) uses both. Figures are
NVIDIA's datasheet values without sparsity; a card is matched by substring of
`torch.cuda.get_device_name()`, the longest matching needle winning, so "H100 NVL" beats "H100" and
"GH200" beats "H200" wherever they sit in the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GpuSpec:
    needle: str  # substring of the CUDA device name that selects this entry
    entry: str  # the name reports print
    tflops: dict[str, float] = field(default_factory=dict)  # by matmul precision: bf16, fp16, tf32, fp32
    dram_gb_per_s: float = 0.0  # 1 GB = 1e9 bytes


GPU_SPECS: tuple[GpuSpec, ...] = (
    GpuSpec("H100 PCIe", "H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}, 2000.0),
    GpuSpec("H100 NVL", "H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}, 3900.0),
    GpuSpec("H100", "H100 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}, 3350.0),
    GpuSpec("H200", "H200 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}, 4800.0),
    GpuSpec("H200 NVL", "H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}, 4800.0),
    GpuSpec("GH200", "GH200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}, 4000.0),
    GpuSpec("B200", "B200", {"bf16": 2250.0, "fp16": 2250.0, "tf32": 1100.0}, 8000.0),
    GpuSpec("A100 80GB PCIe", "A100 80GB PCIe", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
            1935.0),
    GpuSpec("A100-SXM4-80GB", "A100 SXM 80GB", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
            2039.0),
    GpuSpec("A100", "A100 40GB", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}, 1555.0),
    GpuSpec("L40S", "L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}, 864.0),
    GpuSpec("L40", "L40", {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5}, 864.0),
    GpuSpec("L4", "L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}, 300.0),
)


def find_gpu(device_name: str) -> GpuSpec | None:
    """The most specific entry (longest needle) whose needle occurs in `device_name` (e.g. "NVIDIA H100 80GB
    HBM3"), or None."""
    return max((spec for spec in GPU_SPECS if spec.needle in device_name),
               key=lambda spec: len(spec.needle), default=None)
