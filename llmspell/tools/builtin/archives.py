"""Built-in tools: archives (being written)."""

from llmspell.tools.base import Tool

TOOLS: list[Tool] = []
