"""Our tools and agents as an MCP server, for any MCP client (an IDE, another agent framework).

    server = build_mcp_server(tools=builtin_registry(), steps=[researcher, pipeline])
    await serve_mcp_stdio(server)                                   # a client starts us
    await serve_mcp_http(server, port=8765, token="s3cret")         # or over streamable HTTP

Tools keep their names and JSON schemas. A Step (an agent, an agent in an actor, a workflow or
a pattern: anything with a name and `run(input, ctx=)`) becomes a tool taking one `input`
string (llmspell.tools.AgentTool), so its whole run is one tool call.

A failing call is a tool result with `isError` and the message a model can act on (bad
arguments by field path, a sandbox refusal, an agent that ended without an answer); an unknown
tool is a protocol error naming the closest names, as the MCP specification asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette

from llmspell.protocols.auth import BearerAuth, check_bind
from llmspell.protocols.http import HTTPServer
from llmspell.runtime.errors import Cancelled
from llmspell.runtime.logs import get_logger
from llmspell.tools.agent_tool import AgentTool, Runnable
from llmspell.tools.base import SideEffects, Tool, render_result
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolError, ToolNotFound
from llmspell.tools.registry import ToolRegistry

__all__ = ["ContextFactory", "build_mcp_server", "mcp_http_app", "serve_mcp_http",
           "serve_mcp_stdio", "served_tools"]

log = get_logger(component="mcp.server")

ContextFactory = Callable[[Tool], ToolContext]
"""The context a call from an MCP client runs in (its job, sandbox, state, events)."""


def served_tools(tools: Iterable[Tool] = (), steps: Iterable[Runnable] = ()) -> ToolRegistry:
    """The tools a server offers: `tools`, then each step as a tool. Raises ValueError on a
    name used twice."""
    registry = ToolRegistry()
    for tool in [*tools, *(_step_tool(s) for s in steps)]:
        registry.register(tool)
    return registry


def _step_tool(step: Runnable) -> Tool:
    return step if isinstance(step, Tool) else AgentTool(step)


def build_mcp_server(tools: Iterable[Tool] = (), steps: Iterable[Runnable] = (), *,
                     name: str = "llmspell", context: ContextFactory | None = None,
                     instructions: str | None = None) -> Server[Any]:
    """An MCP server (the SDK's low-level `Server`) offering `tools` and `steps`.

    `context(tool)` gives each call its ToolContext; the default is an empty one (no
    filesystem, the default network policy, no job state)."""
    registry = served_tools(tools, steps)
    make_ctx: ContextFactory = context or (lambda tool: ToolContext(chain=("mcp",)))
    listing = [_mcp_tool(t) for t in registry]

    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams
                         | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listing)

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
                        ) -> types.CallToolResult:
        try:
            tool = registry.get(params.name)
        except ToolNotFound as exc:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}"
                           + (f" (did you mean {', '.join(map(repr, exc.suggestions))}?)"
                              if exc.suggestions else "")) from None
        return await _call(tool, params.arguments or {}, make_ctx(tool))

    def input_schema(tool_name: str) -> Mapping[str, Any] | None:
        return registry.get(tool_name).spec().parameters if tool_name in registry else None

    return Server(name, version="0.1.0", instructions=instructions, on_list_tools=list_tools,
                  on_call_tool=call_tool, get_tool_input_schema=input_schema)


async def _call(tool: Tool, arguments: dict[str, Any], ctx: ToolContext) -> types.CallToolResult:
    try:
        value = await tool.invoke(arguments, ctx)
    except (ToolError, Cancelled) as exc:
        return _error(str(exc))
    except Exception as exc:  # a tool's own bug: the client reads it, the server goes on
        log.exception("tool failed", tool=tool.name)
        return _error(f"tool {tool.name!r} failed: {type(exc).__name__}: {exc}")
    structured = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
    return types.CallToolResult(
        content=[types.TextContent(text=render_result(value))],
        # Structured content must be an object on the 2025 protocol versions.
        structured_content=structured if isinstance(structured, dict) else None)


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _mcp_tool(tool: Tool) -> types.Tool:
    spec = tool.spec()
    return types.Tool(
        name=spec.name, description=spec.description, input_schema=spec.parameters,
        annotations=types.ToolAnnotations(
            read_only_hint=tool.side_effects == SideEffects.none,
            destructive_hint=tool.side_effects != SideEffects.none,
            idempotent_hint=tool.idempotent,
            open_world_hint=tool.side_effects == SideEffects.external))


# -- transports ---------------------------------------------------------------------------------

async def serve_mcp_stdio(server: Server[Any]) -> None:
    """Serve one client on this process's stdin and stdout until it closes them. Logs must go
    to stderr: stdout carries the protocol."""
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def mcp_http_app(server: Server[Any], *, token: str | None = None, host: str = "127.0.0.1",
                 path: str = "/mcp") -> Any:
    """The streamable HTTP endpoint at `path`, behind a bearer token when one is given. Bound
    to loopback, the SDK also checks Host and Origin headers (DNS rebinding)."""
    check_bind(host, token)
    app: Starlette = server.streamable_http_app(streamable_http_path=path, host=host)
    return BearerAuth(app, token, realm="llmspell-mcp") if token else app


async def serve_mcp_http(server: Server[Any], *, host: str = "127.0.0.1", port: int = 8765,
                         token: str | None = None, path: str = "/mcp") -> None:
    """Serve over streamable HTTP until interrupted."""
    app = mcp_http_app(server, token=token, host=host, path=path)
    http = HTTPServer(app, host=host, port=port, token=token, log_level="warning")
    log.info("mcp server listening", url=f"{http.url}{path}")
    await http.serve_forever()
