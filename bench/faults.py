"""Test-only fault injection, so tests can prove that no cell can stop a sweep.

Set `CTCLIP_BENCH_FAULT` to `KIND@CELL[;KIND@CELL...]`, where KIND is

- `oom`:   the cell raises `torch.OutOfMemoryError` after building its model (recorded `oom`);
- `crash`: the cell process aborts with SIGABRT, as a native crash would (recorded `error`);
- `hang`:  the cell sleeps forever (recorded `timeout` once `--timeout` passes);
- `raise`: the cell raises a plain RuntimeError (recorded `error`);

and CELL is a variant key (`faithful`, `loss=siglip`, `attn=sdpa_flash,pos=none,...`) or `*` for every
cell. Example: `CTCLIP_BENCH_FAULT='oom@loss=siglip;hang@faithful'`. Never set it outside tests.
"""

from __future__ import annotations

import os
import signal
import time

import torch

ENV_VAR = "CTCLIP_BENCH_FAULT"
KINDS = ("oom", "crash", "hang", "raise")


def parse(text: str) -> dict[str, str]:
    """'oom@faithful;hang@*' -> {'faithful': 'oom', '*': 'hang'}; a malformed entry raises ValueError."""
    faults: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        kind, sep, key = entry.partition("@")
        if not sep or kind not in KINDS or not key:
            raise ValueError(f"{ENV_VAR} entry {entry!r} must be KIND@CELL with KIND one of {', '.join(KINDS)}")
        faults[key] = kind
    return faults


def fault_for(variant_key: str) -> str | None:
    faults = parse(os.environ.get(ENV_VAR, ""))
    return faults.get(variant_key) or faults.get("*")


def inject(variant_key: str) -> None:
    """Raise, crash or hang if a fault is set for this cell; otherwise do nothing."""
    kind = fault_for(variant_key)
    if kind == "oom":
        raise torch.OutOfMemoryError(f"injected by {ENV_VAR}: CUDA out of memory. Tried to allocate 1.00 GiB")
    if kind == "raise":
        raise RuntimeError(f"injected by {ENV_VAR}: a plain error")
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGABRT)
    if kind == "hang":
        while True:
            time.sleep(3600)
