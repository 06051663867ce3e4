"""Live tensor bytes over a step, op by op, as the CUDA caching allocator would count them.

Used by bench.estimate inside FakeTensorMode, where nothing is really allocated: every op's output
whose storage is new is counted from the moment the op returns until Python and autograd let go of
the storage (a weak-reference callback), so the peak includes transients stacked on saved
activations and gradients growing while activations are freed. Sizes are rounded up to the
allocator's 512-byte blocks. torch.distributed._tools.mem_tracker.MemTracker computes the same total
(the tests check this on small models) but also a peak per module, which costs it a pass over every
module for every op: 10 s more per paper-size step than this.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

BLOCK_BYTES = 512  # the caching allocator's smallest block; every allocation is a multiple of it


class AllocationTracker(TorchDispatchMode):
    """Current and peak live bytes, the op whose outputs reached the peak (and the `phase` the caller
    had set then: forward, backward, ...), and the largest fresh output of a single op.

    `resident` tensors (parameters, buffers, optimizer state, the batch) exist before the tracked
    region and count from the start, as they do in a measured cell's allocator peak.
    """

    def __init__(self, resident: Iterable[torch.Tensor] = (), block_bytes: int = BLOCK_BYTES) -> None:
        super().__init__()
        self.block_bytes = block_bytes
        self._live: dict[int, tuple[int, weakref.ref]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self.largest_op_bytes = 0
        self.largest_op = ""
        self.phase = ""  # set by the caller as the step moves on; recorded with the peak
        self.peak_op = ""
        self.peak_phase = ""
        for t in resident:
            self._add(t.untyped_storage())

    def _add(self, storage: torch.UntypedStorage) -> int:
        key = storage._cdata
        if key in self._live:
            return 0
        nbytes = -(-storage.nbytes() // self.block_bytes) * self.block_bytes
        self._live[key] = (nbytes, weakref.ref(storage, partial(self._free, key)))
        self.current_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        return nbytes

    def _free(self, key: int, _ref: weakref.ref) -> None:
        entry = self._live.get(key)
        if entry is not None and entry[1] is _ref:
            del self._live[key]
            self.current_bytes -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        peak_before = self.peak_bytes
        fresh = 0
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                fresh += self._add(t.untyped_storage())
        if fresh > self.largest_op_bytes:
            self.largest_op_bytes, self.largest_op = fresh, str(func)
        if self.peak_bytes > peak_before:
            self.peak_op, self.peak_phase = str(func), self.phase
        return out
