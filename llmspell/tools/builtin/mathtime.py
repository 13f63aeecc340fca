"""Built-in tools: mathtime (being written)."""

from llmspell.tools.base import Tool

TOOLS: list[Tool] = []
