"""A dispatch mode that records the aten/custom op of every call: what the kernel tests check to show
that a path launches exactly the kernels' custom ops, or copies nothing."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []  # e.g. "aten.clone", "ctclip_kernels.rmsnorm_forward", in call order

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func._overloadpacket))
        return func(*args, **(kwargs or {}))
