"""The built-in tools, by category. Each module lists its tools in `TOOLS`; `builtin_tools()`
imports every category and returns them all, `builtin_registry()` a fresh registry holding only
them (a job adds its own tools to it). `llmspell.tools.default_registry` takes them from here the
first time a tool is looked up by name.

Importing this package imports no category: a tool pickled into an actor brings only its own
module (the calculator does not need pypdf, pint and bs4, ~0.4 s of imports in each process)."""

from __future__ import annotations

import functools
import importlib

from llmspell.tools.base import Tool
from llmspell.tools.registry import ToolRegistry

__all__ = ["CATEGORIES", "builtin_registry", "builtin_tools"]

CATEGORIES = ("filesystem", "web", "data", "text", "mathtime", "utility", "archives", "system",
              "state")


@functools.cache
def _all() -> tuple[Tool, ...]:
    return tuple(t for name in CATEGORIES
                 for t in importlib.import_module(f"{__name__}.{name}").TOOLS)


def builtin_tools() -> list[Tool]:
    return list(_all())


def builtin_registry() -> ToolRegistry:
    return ToolRegistry(_all())
