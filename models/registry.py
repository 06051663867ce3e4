"""A registry per axis: one name -> one implementation, each able to say whether it can run.

Adding a backend is one function plus one `@REGISTRY.register(...)` line. A backend that cannot run
for a (variant, device) pair says why through `supports`, and callers record that reason instead of
silently routing the work elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

import torch

T = TypeVar("T")

# supports(variant, device) -> None when the backend can run, else a one-line reason.
SupportsFn = Callable[["object", torch.device], "str | None"]


def _always(variant: object, device: torch.device) -> None:
    return None


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    impl: T
    supports: SupportsFn
    doc: str = ""


class Registry(Generic[T]):
    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, supports: SupportsFn = _always, doc: str = "") -> Callable[[T], T]:
        def add(impl: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.axis} backend {name!r} registered twice")
            self._entries[name] = Entry(name, impl, supports, doc or (getattr(impl, "__doc__", "") or "").strip())
            return impl

        return add

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.axis} backend {name!r}; registered: {', '.join(self._entries)}"
            ) from None

    def supports(self, name: str, variant: object, device: "torch.device | str") -> "str | None":
        return self.get(name).supports(variant, torch.device(device))

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
