"""MCP tools as llmspell tools: `load_mcp_tools(configs)` lists each server's tools and wraps
each one in an `MCPTool`, which any agent, tool pool or MCP server of ours can use.

An MCPTool is plain data (the server's config, the tool's name, description and JSON schema),
so it pickles to a tool pool's replicas; it opens its server's session on first use, in
whatever process it runs (see llmspell.protocols.mcp_client). Arguments are validated against
the tool's own JSON schema before anything is sent, so a model reads every wrong field by path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import jsonschema
from mcp_types import CallToolResult, EmbeddedResource, ImageContent, TextContent
from mcp_types import Tool as MCPToolSpec
from pydantic import BaseModel, ConfigDict

from llmspell.llm.types import ToolSpec
from llmspell.protocols.errors import MCPServerError
from llmspell.protocols.mcp_client import connection_for
from llmspell.protocols.mcp_config import MCPServerConfig
from llmspell.runtime.logs import get_logger
from llmspell.runtime.validation import field_path
from llmspell.tools.base import SideEffects, Tool
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolArgumentError, ToolError

__all__ = ["MCPArgs", "MCPTool", "load_mcp_tools", "tool_name"]

log = get_logger(component="mcp.tools")

_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


class MCPArgs(BaseModel):
    """Arguments already checked against the tool's JSON schema, kept as given."""

    model_config = ConfigDict(extra="allow")


def tool_name(config: MCPServerConfig, remote: str) -> str:
    """The llmspell name of the server's tool `remote`: the prefix, then the name with every
    character a model API refuses replaced by `_`, cut to 64 characters."""
    return _BAD_CHARS.sub("_", config.tool_prefix + remote)[:64]


class MCPTool(Tool):
    category = "mcp"
    Args = MCPArgs

    def __init__(self, server: MCPServerConfig, remote: MCPToolSpec) -> None:
        self.server = server
        self.remote_name = remote.name
        self.name = tool_name(server, remote.name)  # type: ignore[misc]
        self.description = (remote.description or  # type: ignore[misc]
                            f"The tool {remote.name!r} of the MCP server {server.name!r}.")
        schema = dict(remote.input_schema or {})
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        self.input_schema = schema
        hints = remote.annotations
        read_only = bool(hints and hints.read_only_hint)
        # Without hints we assume the worst: the tool changes the world and is run once.
        self.side_effects = SideEffects.none if read_only else SideEffects.external  # type: ignore[misc]
        self.idempotent = read_only or bool(hints and hints.idempotent_hint)  # type: ignore[misc]
        # The first call may start the server: the connection's own timeouts come first.
        self.timeout = server.connect_timeout + server.call_timeout + 5.0  # type: ignore[misc]

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description,
                        parameters=self.input_schema)

    def validate(self, arguments: dict[str, Any] | str | None) -> BaseModel:
        checked = super().validate(arguments)  # JSON text and "not an object" are refused there
        values = checked.model_dump()
        errors = sorted(self._validator().iter_errors(values), key=lambda e: list(e.path))
        if errors:
            raise ToolArgumentError(self.name, [{"path": field_path(tuple(e.absolute_path)),
                                                 "message": e.message} for e in errors])
        return checked

    async def run(self, args: Any, ctx: ToolContext) -> Any:
        conn = connection_for(self.server)
        result = await conn.call_tool(self.remote_name, args.model_dump(),
                                      timeout=_remaining(ctx, self.server.call_timeout),
                                      label=self.name)
        if result.is_error:
            raise ToolError(self.name, f"the MCP server {self.server.name!r} reported an "
                                       f"error: {result_text(result) or '(no message)'}")
        if result.structured_content is not None:
            return result.structured_content
        return result_text(result)

    def _validator(self) -> Any:
        validator = self.__dict__.get("_checker")
        if validator is None:
            cls = jsonschema.validators.validator_for(self.input_schema,
                                                      default=jsonschema.Draft202012Validator)
            try:
                cls.check_schema(self.input_schema)
                validator = cls(self.input_schema)
            except jsonschema.SchemaError as exc:  # the server's schema, not the caller's fault
                log.warning("mcp tool schema invalid; arguments go unchecked", tool=self.name,
                            error=exc.message)
                validator = jsonschema.Draft202012Validator({})
            self.__dict__["_checker"] = validator
        return validator

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_checker"}

    def __repr__(self) -> str:
        return f"<mcp tool {self.name} ({self.server.name}:{self.remote_name})>"


def result_text(result: CallToolResult) -> str:
    """A tool result's content blocks as the text a model reads."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(block, ImageContent):
            parts.append(f"[image {block.mime_type}, {len(block.data) * 3 // 4} bytes]")
        elif isinstance(block, EmbeddedResource):
            text = getattr(block.resource, "text", None)
            parts.append(text if isinstance(text, str) else f"[resource {block.resource.uri}]")
        else:
            parts.append(json.dumps(block.model_dump(mode="json", exclude_none=True)))
    return "\n".join(parts)


async def load_mcp_tools(configs: Sequence[MCPServerConfig | dict[str, Any]]) -> list[MCPTool]:
    """Every tool of every server (or the ones each config names in `tools`), as llmspell
    tools. Raises MCPServerError naming the server that cannot be reached, a tool named in
    `tools` that the server lacks, or two tools that end up with the same name."""
    out: list[MCPTool] = []
    seen: dict[str, str] = {}
    for raw in configs:
        config = raw if isinstance(raw, MCPServerConfig) else MCPServerConfig.model_validate(raw)
        specs = await connection_for(config).list_tools()
        if config.tools is not None:
            offered = {s.name: s for s in specs}
            missing = [n for n in config.tools if n not in offered]
            if missing:
                raise MCPServerError(config.name, f"has no tool {', '.join(map(repr, missing))}"
                                     f" (it offers: {', '.join(sorted(offered)) or 'none'})")
            specs = [offered[n] for n in config.tools]
        for spec in specs:
            tool = MCPTool(config, spec)
            if tool.name in seen:
                raise MCPServerError(config.name, f"its tool {spec.name!r} would be named "
                                     f"{tool.name!r}, like a tool of {seen[tool.name]!r}: "
                                     "set a `prefix` on one of the servers")
            seen[tool.name] = config.name
            out.append(tool)
    return out


def _remaining(ctx: ToolContext, default: float) -> float:
    left = ctx.remaining()
    return default if left is None else max(0.1, min(default, left))
