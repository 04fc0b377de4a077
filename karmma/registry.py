"""Named registries: how config strings choose fusion blocks, missing-modality strategies,
per-modality encoders, model add-ons, training tasks, dataset readers and extractor families
(detectron2's pattern).

    FUSION = Registry("fusion block")

    @FUSION.register("transformer")
    class TransformerFusion(nn.Module): ...

    FUSION.get("transformer")   # the class; an unknown name lists the registered ones

A user's own entry is one decorator in their own file; the package is not edited. Built-ins are
registered *lazily* by ``"module:attribute"`` (:data:`karmma.registries`), so naming or listing
them imports nothing, and ``get`` imports only the module that holds the entry. A name no one
has registered yet is looked up in the installed plugin packages (the ``karmma.plugins``
entry-point group, :mod:`karmma.plugins`) before it is refused.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from karmma.errors import ConfigError


class Registry:
    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, Any] = {}
        self._lazy: dict[str, str] = {}  # name -> "module:attribute", imported on first get

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            lazy = self._lazy.get(name)
            if lazy is not None and lazy != _target(obj):
                raise ConfigError(f"a {self.what} named {name!r} is already registered ({lazy})")
            if name in self._items and self._items[name] is not obj:
                raise ConfigError(f"a {self.what} named {name!r} is already registered ({self._items[name]!r})")
            self._lazy.pop(name, None)
            self._items[name] = obj
            return obj

        return add

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:Attribute"`` under ``name``, imported when first asked for."""
        if name in self._items or name in self._lazy:
            raise ConfigError(f"a {self.what} named {name!r} is already registered")
        self._lazy[name] = target

    def get(self, name: str) -> Any:
        if not self._known(name):
            raise ConfigError(f"unknown {self.what} {name!r}; registered: {self.names()}")
        if name not in self._items:
            module, attr = self._lazy[name].split(":")
            obj = getattr(importlib.import_module(module), attr)
            self._lazy.pop(name, None)
            self._items[name] = obj
        return self._items[name]

    def names(self) -> list[str]:
        from karmma.plugins import load_plugins

        load_plugins()
        return sorted({*self._items, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._known(name)

    def _known(self, name: str) -> bool:
        if name in self._items or name in self._lazy:
            return True
        from karmma.plugins import load_plugins

        return load_plugins() and (name in self._items or name in self._lazy)


def _target(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"
