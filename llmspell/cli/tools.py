"""`llmspell tools list|describe|call`: the built-in tools from the command line.

`call` runs one tool as an agent would (arguments validated against its schema, its timeout
honoured) under a sandbox rooted in the current directory with the default network policy;
options open the policy up explicitly (--allow-private-host, --allow-command, --allow-env).

Exit codes: 0 done; 1 the tool failed; 2 bad usage (unknown tool, bad JSON, bad arguments);
3 the sandbox refused the call (the rule's name is printed).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from llmspell.tools.base import Tool, render_result
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import SandboxViolation, ToolArgumentError, ToolError, ToolNotFound
from llmspell.tools.registry import ToolRegistry
from llmspell.tools.sandbox import Sandbox, rule_of

__all__ = ["tools_app"]

EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 1, 2, 3

tools_app = typer.Typer(name="tools", help="List, describe and call the built-in tools.",
                        no_args_is_help=True)


def _registry() -> ToolRegistry:
    from llmspell.tools.builtin import builtin_registry  # imports every category: on use only

    return builtin_registry()


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code=code)


def _get(registry: ToolRegistry, name: str) -> Tool:
    try:
        return registry.get(name)
    except ToolNotFound as exc:
        hint = f"; closest: {', '.join(exc.suggestions)}" if exc.suggestions else ""
        raise _fail(f"no built-in tool named {name!r}{hint} (see `llmspell tools list`)",
                    EXIT_USAGE) from None


def _summary(description: str) -> str:
    return description.split(". ")[0].rstrip(".")  # the table cuts it to the width


@tools_app.command("list")
def list_tools(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of objects with "
                                 "name, category, description and schema."),
    category: str | None = typer.Option(None, "--category", "-c",
                                        help="Only this category."),
) -> None:
    """List the built-in tools by category."""
    registry = _registry()
    tools = sorted((t for t in registry if category in (None, t.category)),
                   key=lambda t: (t.category, t.name))
    if category is not None and not tools:
        raise _fail(f"no category {category!r} (categories: "
                    f"{', '.join(registry.categories())})", EXIT_USAGE)
    if as_json:
        typer.echo(json.dumps([_entry(t) for t in tools], indent=2))
        return
    console = Console()
    # Piped output has no terminal width to fit: do not squeeze the table into 80 columns.
    console = console if console.is_terminal else Console(width=160)
    table = Table(title=f"{len(tools)} built-in tools")
    widths = {"category": max(len(t.category) for t in tools), "tool": max(len(t.name)
              for t in tools), "effects": len("external"), "idempotent": len("idempotent")}
    for column, width in widths.items():  # never squeezed: the description gives way
        table.add_column(column, no_wrap=True, min_width=width)
    # Each column costs its width plus 3 (padding and a border): the description takes the rest.
    rest = console.width - sum(w + 3 for w in widths.values()) - 4
    table.add_column("description", overflow="ellipsis", no_wrap=True, max_width=max(rest, 20))
    shown = ""
    for t in tools:
        # The category once per group: the table reads as sections.
        table.add_row(t.category if t.category != shown else "", t.name, str(t.side_effects),
                      "yes" if t.idempotent else "no", _summary(t.description))
        shown = t.category
    console.print(table)


def _entry(t: Tool) -> dict[str, Any]:
    return {"name": t.name, "category": t.category, "description": t.description,
            "side_effects": str(t.side_effects), "idempotent": t.idempotent,
            "schema": t.spec().parameters}


@tools_app.command("describe")
def describe(name: str = typer.Argument(..., help="The tool's name.")) -> None:
    """Print a tool's description and JSON schema (as JSON)."""
    typer.echo(json.dumps(_get(_registry(), name).describe(), indent=2))


@tools_app.command("call")
def call(
    name: str = typer.Argument(..., help="The tool's name."),
    args: str = typer.Option("{}", "--args", "-a", help="The arguments, a JSON object."),
    allow_private_host: list[str] = typer.Option(  # noqa: B008
        [], "--allow-private-host", help="A host or address to open despite the private-"
        "address rule (repeatable), e.g. 127.0.0.1 for a local server."),
    allow_command: list[str] = typer.Option(  # noqa: B008
        [], "--allow-command", help="A program process_run may start (repeatable)."),
    allow_env: list[str] = typer.Option(  # noqa: B008
        [], "--allow-env", help="An environment variable env_get may read (repeatable)."),
    read_only: bool = typer.Option(False, "--read-only", help="Refuse every file write."),
) -> None:
    """Run one tool with the current directory as its sandbox root and print the result."""
    tool = _get(_registry(), name)
    arguments = _arguments(args)
    sandbox = Sandbox(root=os.getcwd(), read_only=read_only,
                      allowed_private_hosts=allow_private_host,
                      allowed_commands=allow_command, allowed_env=allow_env)
    try:
        result = asyncio.run(tool.invoke(arguments, ToolContext(sandbox=sandbox)))
    except SandboxViolation as exc:
        raise _fail(f"refused by sandbox rule '{rule_of(exc) or 'unknown'}': "
                    f"{exc.__dict__.get('reason', exc.detail)}", EXIT_REFUSED) from None
    except ToolArgumentError as exc:
        raise _fail(f"{exc}\n(see `llmspell tools describe {name}`)", EXIT_USAGE) from None
    except ToolError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    typer.echo(result if isinstance(result, str) else
               json.dumps(result, indent=2, ensure_ascii=False, default=str)
               if _jsonable(result) else render_result(result))


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"--args is not valid JSON: {exc.msg} at character {exc.pos}",
                    EXIT_USAGE) from None
    if not isinstance(value, dict):
        raise _fail(f"--args must be a JSON object, not {type(value).__name__}", EXIT_USAGE)
    return value


def _jsonable(value: Any) -> bool:
    return isinstance(value, dict | list | int | float | bool) or value is None
