"""ToolRegistry: tools by name and by category; an unknown name gets the closest matches."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator

from llmspell.llm.types import ToolSpec
from llmspell.tools.base import Tool
from llmspell.tools.errors import ToolNotFound

__all__ = ["ToolRegistry", "default_registry"]


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.register(t)

    def register(self, tool: Tool, *, replace: bool = False) -> Tool:
        if not tool.name:
            raise ValueError(f"{tool!r} has no name")
        if tool.name in self._tools and not replace and self._tools[tool.name] is not tool:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def unregister(self, name: str) -> None:
        self._tools.pop(name, None)

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolNotFound(name, self.suggest(name)) from None

    def suggest(self, name: str) -> list[str]:
        return difflib.get_close_matches(name, list(self._tools), n=3, cutoff=0.6)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def categories(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t in self._tools.values():
            out.setdefault(t.category, []).append(t.name)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def by_category(self, category: str) -> list[Tool]:
        return [t for t in self._tools.values() if t.category == category]

    def specs(self, names: Iterable[str]) -> list[ToolSpec]:
        return [self.get(n).spec() for n in names]

    def merged(self, other: ToolRegistry) -> ToolRegistry:
        """A registry holding both; `other` wins on a name clash."""
        out = ToolRegistry(self)
        for t in other:
            out.register(t, replace=True)
        return out


default_registry = ToolRegistry()  # the built-in tools register here
