"""Built-in tools: text (being written)."""

from llmspell.tools.base import Tool

TOOLS: list[Tool] = []
