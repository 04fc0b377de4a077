"""Named registries: how config strings choose fusion blocks, missing-modality strategies,
per-modality encoders, training tasks and dataset readers (detectron2's pattern).

    FUSION = Registry("fusion block")

    @FUSION.register("transformer")
    class TransformerFusion(nn.Module): ...

    FUSION.get("transformer")   # the class; an unknown name lists the registered ones

A user's own entry is one decorator in their own file; the package is not edited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from karmma.errors import ConfigError


class Registry:
    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                raise ConfigError(f"a {self.what} named {name!r} is already registered ({self._items[name]!r})")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> Any:
        if name not in self._items:
            raise ConfigError(f"unknown {self.what} {name!r}; registered: {self.names()}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
