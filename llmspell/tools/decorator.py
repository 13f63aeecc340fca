"""`@tool`: a Tool from a typed function. Type hints become the argument schema, the docstring
the description (its `Args:` section describes each argument)::

    @tool(category="math")
    def add(a: int, b: int = 0) -> int:
        \"\"\"Add two integers.

        Args:
            a: the first number
            b: the second number
        \"\"\"
        return a + b

A parameter annotated `ToolContext` receives the call's context and is not part of the schema.
A sync function runs in a worker thread, so it never blocks an actor's event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, Field, create_model

from llmspell.tools.base import SideEffects, Tool
from llmspell.tools.context import ToolContext

__all__ = ["FunctionTool", "tool"]

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class FunctionTool(Tool):
    """A Tool whose run() calls a function; built by `@tool`, one instance per function."""

    def __init__(self, fn: Callable[..., Any], *, name: str, description: str,
                 args: type[BaseModel], context_param: str | None, category: str,
                 side_effects: SideEffects, idempotent: bool, timeout: float | None,
                 requires_approval: bool) -> None:
        self.fn = fn
        # Instance attributes shadow the class-level declarations of Tool.
        self.name = name  # type: ignore[misc]
        self.description = description  # type: ignore[misc]
        self.Args = args  # type: ignore[misc]
        self.category = category  # type: ignore[misc]
        self.side_effects = side_effects  # type: ignore[misc]
        self.idempotent = idempotent  # type: ignore[misc]
        self.timeout = timeout  # type: ignore[misc]
        self.requires_approval = requires_approval  # type: ignore[misc]
        self.context_param = context_param
        self._is_async = inspect.iscoroutinefunction(fn)

    async def run(self, args: Any, ctx: ToolContext) -> Any:
        kwargs = {name: getattr(args, name) for name in type(args).model_fields}
        if self.context_param:
            kwargs[self.context_param] = ctx
        if self._is_async:
            return await self.fn(**kwargs)
        return await asyncio.to_thread(self.fn, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The decorated function still works as a plain function."""
        return self.fn(*args, **kwargs)


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...


@overload
def tool(*, name: str | None = None, description: str | None = None, category: str = "general",
         side_effects: SideEffects | str = SideEffects.none, idempotent: bool = True,
         timeout: float | None = 60.0, requires_approval: bool = False,
         ) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
         description: str | None = None, category: str = "general",
         side_effects: SideEffects | str = SideEffects.none, idempotent: bool = True,
         timeout: float | None = 60.0, requires_approval: bool = False,
         ) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    def build(f: Callable[..., Any]) -> FunctionTool:
        tool_name = name or f.__name__
        if not _NAME.match(tool_name):
            raise ValueError(f"tool name {tool_name!r}: use 1-64 letters, digits, _ or -")
        summary, arg_docs = parse_docstring(inspect.getdoc(f) or "")
        args, context_param = _args_model(f, tool_name, arg_docs)
        return FunctionTool(
            f, name=tool_name, description=description or summary or tool_name, args=args,
            context_param=context_param, category=category,
            side_effects=SideEffects(side_effects), idempotent=idempotent, timeout=timeout,
            requires_approval=requires_approval)

    return build(fn) if fn is not None else build


def _args_model(fn: Callable[..., Any], tool_name: str, docs: dict[str, str]
                ) -> tuple[type[BaseModel], str | None]:
    hints = get_type_hints(fn, include_extras=True)  # Annotated[...] limits reach the schema
    fields: dict[str, Any] = {}
    context_param = None
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {tool_name!r}: *args and **kwargs have no schema")
        hint = hints.get(param.name)
        if hint is None:
            raise TypeError(f"tool {tool_name!r}: parameter {param.name!r} needs a type hint")
        if hint is ToolContext:
            context_param = param.name
            continue
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hint, Field(default, description=docs.get(param.name)))
    model = create_model(  # type: ignore[call-overload]
        f"{tool_name}_args", __config__=ConfigDict(extra="forbid"), **fields)
    return model, context_param


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?):\s*$")
_ARG = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX = re.compile(r"^:param\s+(?:\w+\s+)?(\w+):\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary (text before any section) and per-argument descriptions, from a Google-style
    `Args:` section or Sphinx `:param x:` lines."""
    summary: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in doc.splitlines():
        stripped = line.strip()
        if (m := _SPHINX.match(stripped)) is not None:
            current, section = m.group(1), "Args"
            args[current] = m.group(2)
        elif _SECTION.match(stripped):
            section, current = _SECTION.match(stripped).group(1), None  # type: ignore[union-attr]
        elif section is None:
            summary.append(stripped)
        elif section in ("Args", "Arguments", "Parameters") and stripped:
            m = _ARG.match(line)
            if m is not None and len(line) - len(line.lstrip()) <= _indent(doc, section):
                current = m.group(1).lstrip("*")
                args[current] = m.group(2)
            elif current is not None:
                args[current] = f"{args[current]} {stripped}".strip()
    return " ".join(" ".join(summary).split()), args


def _indent(doc: str, section: str) -> int:
    """The indentation of the first entry under a section header (deeper lines continue it)."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"{section}:":
            for nxt in lines[i + 1:]:
                if nxt.strip():
                    return len(nxt) - len(nxt.lstrip())
    return 0
