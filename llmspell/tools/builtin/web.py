"""Built-in tools: web (being written)."""

from llmspell.tools.base import Tool

TOOLS: list[Tool] = []
