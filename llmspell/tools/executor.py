"""Where a tool call runs: in this process, or in a tool pool (see llmspell.actors.pool).

The agent loop sees one interface, `ToolExecutor.execute(tool, arguments, ctx)`, and a job
decides per tool where it runs (`RoutedExecutor`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from llmspell.tools.base import Tool
from llmspell.tools.context import ToolContext

__all__ = ["LocalExecutor", "RoutedExecutor", "ToolExecutor"]


class ToolExecutor(Protocol):
    async def execute(self, tool: Tool, arguments: dict[str, Any] | str, ctx: ToolContext
                      ) -> Any: ...


class LocalExecutor:
    """Runs the tool in this process (async tools on the loop, sync ones in a thread)."""

    async def execute(self, tool: Tool, arguments: dict[str, Any] | str, ctx: ToolContext
                      ) -> Any:
        return await tool.invoke(arguments, ctx)


class RoutedExecutor:
    """Per-tool routes (a tool name to its pool), the rest on `default`."""

    def __init__(self, routes: Mapping[str, ToolExecutor] | None = None,
                 default: ToolExecutor | None = None) -> None:
        self.routes = dict(routes or {})
        self.default = default or LocalExecutor()

    async def execute(self, tool: Tool, arguments: dict[str, Any] | str, ctx: ToolContext
                      ) -> Any:
        return await self.routes.get(tool.name, self.default).execute(tool, arguments, ctx)
