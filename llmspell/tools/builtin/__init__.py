"""The built-in tools, by category. Each module lists its tools in `TOOLS`; importing this
package registers all of them in `llmspell.tools.default_registry`, and `builtin_registry()`
returns a fresh registry holding only them (a job adds its own tools to it)."""

from __future__ import annotations

from llmspell.tools.base import Tool
from llmspell.tools.builtin import (
    archives,
    data,
    filesystem,
    mathtime,
    state,
    system,
    text,
    utility,
    web,
)
from llmspell.tools.registry import ToolRegistry, default_registry

__all__ = ["BUILTIN_TOOLS", "builtin_registry"]

BUILTIN_TOOLS: list[Tool] = [
    *filesystem.TOOLS, *web.TOOLS, *data.TOOLS, *text.TOOLS, *mathtime.TOOLS,
    *utility.TOOLS, *archives.TOOLS, *system.TOOLS, *state.TOOLS,
]

for _tool in BUILTIN_TOOLS:
    default_registry.register(_tool, replace=True)


def builtin_registry() -> ToolRegistry:
    return ToolRegistry(BUILTIN_TOOLS)
