"""Built-in tools: data (being written)."""

from llmspell.tools.base import Tool

TOOLS: list[Tool] = []
