"""Built-in tools: filesystem (being written)."""

from llmspell.tools.base import Tool

TOOLS: list[Tool] = []
