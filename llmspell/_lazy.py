"""Names a package exports but loads on first use (PEP 562), so that importing the package does
not import what they need (Ray, the layers above the runtime core)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_names"]


def lazy_names(package: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: each of `names` (name -> the module defining it)
    is imported when first asked for, then kept in the package like any other name."""

    def __getattr__(name: str) -> object:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
