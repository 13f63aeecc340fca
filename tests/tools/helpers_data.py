"""Helpers for the tests of the data, text, math and time, utility, archive and media tools:
a real ToolContext rooted in a temporary directory, and a call through `Tool.invoke` (argument
validation, timeout) as an agent makes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmspell.tools import Sandbox, Tool, ToolContext

# How the sandbox words a path that leaves the root (through `..`, an absolute path or a link).
ESCAPE = r"outside|escape"


def context(root: Path, **policy: Any) -> ToolContext:
    return ToolContext(sandbox=Sandbox(root=str(root), **policy))


async def call(tool: Tool, ctx: ToolContext, **arguments: Any) -> Any:
    return await tool.invoke(arguments, ctx)
