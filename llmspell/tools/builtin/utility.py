"""Built-in tools: utility (being written)."""

from llmspell.tools.base import Tool

TOOLS: list[Tool] = []
