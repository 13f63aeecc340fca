"""ToolRegistry: tools by name and by category; an unknown name gets the closest matches."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator

from llmspell.llm.types import ToolSpec
from llmspell.tools.base import Tool
from llmspell.tools.errors import ToolNotFound

__all__ = ["ToolRegistry", "default_registry"]


class ToolRegistry:
    """Tools by name. `fallback`, when given, supplies more tools the first time a name is
    missing or the whole registry is listed: the default registry's built-in tools, whose
    modules (pypdf, pint, bs4...) cost ~0.4 s to import in every actor process otherwise."""

    def __init__(self, tools: Iterable[Tool] = (), *,
                 fallback: Callable[[], Iterable[Tool]] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        self._fallback = fallback
        for t in tools:
            self.register(t)

    def copy(self) -> ToolRegistry:
        """The same tools, and the same fallback not yet loaded."""
        return ToolRegistry(self._tools.values(), fallback=self._fallback)

    def _load(self) -> None:
        if self._fallback is None:
            return
        load, self._fallback = self._fallback, None
        for t in load():
            self._tools.setdefault(t.name, t)  # tools registered here win

    def register(self, tool: Tool, *, replace: bool = False) -> Tool:
        if not tool.name:
            raise ValueError(f"{tool!r} has no name")
        if tool.name in self._tools and not replace and self._tools[tool.name] is not tool:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def unregister(self, name: str) -> None:
        self._load()  # so that the fallback does not bring it back
        self._tools.pop(name, None)

    def get(self, name: str) -> Tool:
        if name not in self._tools:
            self._load()
        try:
            return self._tools[name]
        except KeyError:
            raise ToolNotFound(name, self.suggest(name)) from None

    def suggest(self, name: str) -> list[str]:
        self._load()
        return difflib.get_close_matches(name, list(self._tools), n=3, cutoff=0.6)

    def __contains__(self, name: object) -> bool:
        if name not in self._tools:
            self._load()
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        self._load()
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        self._load()
        return len(self._tools)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._tools)

    def categories(self) -> dict[str, list[str]]:
        self._load()
        out: dict[str, list[str]] = {}
        for t in self._tools.values():
            out.setdefault(t.category, []).append(t.name)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def by_category(self, category: str) -> list[Tool]:
        self._load()
        return [t for t in self._tools.values() if t.category == category]

    def specs(self, names: Iterable[str]) -> list[ToolSpec]:
        return [self.get(n).spec() for n in names]

    def merged(self, other: ToolRegistry) -> ToolRegistry:
        """A registry holding both; `other` wins on a name clash."""
        out = ToolRegistry(self)
        for t in other:
            out.register(t, replace=True)
        return out


def _builtin_tools() -> list[Tool]:
    from llmspell.tools.builtin import builtin_tools

    return builtin_tools()


# The built-in tools, imported the first time one is looked for (a tool pool's replica or an
# agent host given its tools never does).
default_registry = ToolRegistry(fallback=_builtin_tools)
