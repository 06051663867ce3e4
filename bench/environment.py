"""What the cell ran on: versions, device, clocks and throttle reasons (NVML), git SHA and dirty flag.

Everything here is read-only: clocks, power limits and modes are recorded, never changed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from bench.memory import nvml_handle

REPO_ROOT = Path(__file__).resolve().parent.parent
UNKNOWN_GPU_NAME = "cuda"  # host_device_info's name for a GPU neither NVML nor nvidia-smi could name
OPTIONAL_PACKAGES = ("triton", "transformers", "flash-attn", "xformers", "liger-kernel", "nvidia-ml-py", "numpy")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    # A GPU machine gets a copy of the working tree, maybe without .git: the sender names the commit.
    sent = os.environ.get("CTCLIP_GIT_SHA")
    if sent:
        return {"sha": sent, "dirty": None, "source": "CTCLIP_GIT_SHA"}
    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        return {"type": "cuda", "name": torch.cuda.get_device_name(index), "count": torch.cuda.device_count(),
                "uuid": str(getattr(props, "uuid", "")) or None, "total_memory_bytes": props.total_memory,
                "capability": f"{props.major}.{props.minor}", "torch_threads": torch.get_num_threads()}
    return {"type": "cpu", "name": cpu_model(), "count": cpu_cores(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def gpu_clocks(device: torch.device) -> dict[str, Any] | None:
    """SM/memory clocks (MHz), throttle reasons bitmask, temperature and power (NVML), or None."""
    if device.type != "cuda":
        return None
    handle = nvml_handle(device.index or 0)
    if handle is None:
        return None
    import pynvml

    out: dict[str, Any] = {}
    readers = {
        "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "max_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        "power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
        "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
    }
    # The throttle-reason call was renamed "clocks event reasons" in newer NVML bindings.
    reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
    if reasons is not None:
        readers["throttle_reasons"] = lambda: int(reasons(handle))
    for key, read in readers.items():
        try:
            out[key] = read()
        except Exception:  # an unsupported query on this GPU is not an error worth failing a cell
            out[key] = None
    return out


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "packages": {p: _version(p) for p in OPTIONAL_PACKAGES},
        "cpu_model": cpu_model(),
        "cpu_cores": cpu_cores(),
    }
    if device.type == "cuda":
        handle = nvml_handle(device.index or 0)
        if handle is not None:
            import pynvml

            try:
                driver = pynvml.nvmlSystemGetDriverVersion()
                env["driver"] = driver.decode() if isinstance(driver, bytes) else driver
            except pynvml.NVMLError:
                env["driver"] = None
    return env


def fingerprint(device: dict[str, Any], env: dict[str, Any], git: dict[str, Any]) -> str:
    """What must match for `--resume` to reuse a row: the device, torch/CUDA and the code's commit."""
    basis = {"device": [device.get("type"), device.get("name"), device.get("count")],
             "torch": env.get("torch"), "cuda": env.get("cuda"), "sha": git.get("sha")}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]


def nvidia_smi_gpu(index: int) -> dict[str, str] | None:
    """GPU `index`'s name and UUID from nvidia-smi (no CUDA context either), or None without it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,uuid", "--format=csv,noheader", "-i", str(index)],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = [f.strip() for f in out.stdout.strip().splitlines()[0].rsplit(",", 1)] if out.stdout.strip() else []
    return {"name": fields[0], "uuid": fields[1]} if out.returncode == 0 and len(fields) == 2 else None


def host_device_info(device: torch.device) -> dict[str, Any]:
    """`device_info` for the sweep's parent process, which must not create a CUDA context of its own
    (it would sit in NVML's device-used figure of every cell): on a GPU, ask NVML instead of torch, else
    nvidia-smi. The name is UNKNOWN_GPU_NAME only if neither answers; rows named so would group apart
    from the cells' own (which torch names), so callers should fill it in from a child."""
    if device.type != "cuda":
        return device_info(device)
    info: dict[str, Any] = {"type": "cuda", "name": UNKNOWN_GPU_NAME, "count": torch.cuda.device_count(),
                            "uuid": None}
    handle = nvml_handle(device.index or 0)
    if handle is not None:
        import pynvml

        try:
            name = pynvml.nvmlDeviceGetName(handle)
            info["name"] = name.decode() if isinstance(name, bytes) else name
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            info["uuid"] = uuid.decode() if isinstance(uuid, bytes) else uuid
        except pynvml.NVMLError:
            pass
    if info["name"] == UNKNOWN_GPU_NAME:
        info.update(nvidia_smi_gpu(device.index or 0) or {})
    return info


def describe_probe(record: dict[str, Any], micro: dict[str, Any]) -> list[str]:
    """bench.gpu_probe's records in words, for bench.gpu_summary: env.json (device, environment, git and
    clocks as above, and the CUDA autocast policy's drift from bench.cuda_autocast) and micro.json (copy
    bandwidth and matmul rate)."""
    dev, e, git = record.get("device", {}), record.get("env", {}), record.get("git", {})
    pk = e.get("packages", {})
    lines = [f"- device: {dev.get('name', 'unknown')} ({dev.get('type', '?')}), driver {e.get('driver')}, "
             f"CUDA {e.get('cuda')}, torch {e.get('torch')}, triton {pk.get('triton')}, "
             f"transformers {pk.get('transformers')}, python {e.get('python')}",
             f"- git {git.get('sha')} (dirty: {git.get('dirty')}); clocks at start: {record.get('clocks')}"]
    drift = record.get("autocast_policy_drift")
    if drift is not None:
        same = not (drift["not_registered"] or drift["not_in_tables"])
        policy = ("this build's AutocastCUDA ops are bench.cuda_autocast's, which the estimator applies"
                  if same else f"differs from bench.cuda_autocast's tables: not registered here "
                  f"{drift['not_registered']}, registered but not in the tables {drift['not_in_tables']}")
        lines.append(f"- CUDA autocast policy: {policy}")
    order = record.get("sdp_priority_order")
    if order:
        # bench.cuda_sdpa emulates flash, memory-efficient and math; cuDNN's rules depend on its version.
        caveat = ("; SDPA calls that force no kernel (BERT's attention, attn=sdpa) may take cuDNN here, "
                  "which the estimator does not emulate" if order[0] == "CUDNN_ATTENTION" else "")
        lines.append(f"- SDPA kernel order for unforced calls: {', '.join(order)}{caveat}")
    if micro:
        peak = micro.get("peak")
        frac = (f" ({micro['matmul_fraction_of_peak'] * 100:.1f} % of {peak['entry']} {peak['tflops']} TFLOP/s)"
                if peak else "")
        lines.append(f"- copy bandwidth {micro['copy_gbps']:.0f} GB/s ({micro['copy_bytes'] / 2**30:.3g} GiB tensor, "
                     f"bytes read + written); {micro['matmul_dtype']} matmul {micro['matmul_n']}^3: "
                     f"{micro['matmul_tflops']:.1f} TFLOP/s{frac}; timer {micro.get('timer')}")
    return lines
