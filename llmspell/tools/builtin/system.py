"""Built-in tools: system (being written)."""

from llmspell.tools.base import Tool

TOOLS: list[Tool] = []
