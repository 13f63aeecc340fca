"""MCPServerConfig: how to reach one MCP server, as a job spec declares it (`mcp_servers:`).

    mcp_servers:
      - name: time                       # stdio: a command llmspell starts and owns
        command: python
        args: ["-m", "mcp_server_time"]
      - name: search                     # streamable HTTP: a URL, with headers
        url: https://mcp.example.com/mcp
        headers: {Authorization: "Bearer ${SEARCH_TOKEN}"}

A server's tools join the job as `<name>__<tool>` (see `prefix`), so two servers may both
offer a `search` tool, and a reader of an agent's tool list sees where each one comes from.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["MCPServerConfig"]

_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,31}$")


class MCPServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="what the job calls this server; the tools' default prefix")
    # stdio
    command: str | None = Field(None, description="the program to start (stdio)")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict,
                                description="added to a minimal default environment")
    cwd: str | None = None
    # streamable HTTP
    url: str | None = Field(None, description="the server's MCP endpoint (streamable HTTP)")
    headers: dict[str, str] = Field(default_factory=dict)
    # behaviour
    prefix: str | None = Field(None, description="put before each tool's name; default "
                                                 "`<name>__`, \"\" for the bare names")
    tools: list[str] | None = Field(None, description="only these of the server's tools "
                                                      "(by their names on the server)")
    connect_timeout: float = Field(30.0, gt=0, description="seconds to start and initialize")
    call_timeout: float = Field(60.0, gt=0, description="seconds for one tool call")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r}: use a letter, then up to 31 letters, digits, _ or -")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r}: give either `command` (stdio) or "
                             "`url` (streamable HTTP), not both and not neither")
        if self.url is None and self.headers:
            raise ValueError(f"MCP server {self.name!r}: `headers` only apply to a `url`")
        if self.command is None and (self.args or self.env or self.cwd):
            raise ValueError(f"MCP server {self.name!r}: `args`, `env` and `cwd` only apply "
                             "to a `command`")
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command is not None else "http"

    @property
    def tool_prefix(self) -> str:
        return f"{self.name}__" if self.prefix is None else self.prefix

    def describe(self) -> str:
        """Where the server is, for error messages (never the headers: they hold tokens)."""
        if self.command is not None:
            return f"{self.name!r} (stdio: {' '.join([self.command, *self.args])[:200]})"
        return f"{self.name!r} ({self.url})"

    def key(self) -> str:
        """Equal for two configs that would open the same session."""
        return self.model_dump_json()

    def __repr_args__(self) -> Any:  # headers and env carry secrets: never in a repr or log
        for name, value in super().__repr_args__():
            yield name, ("..." if name in ("headers", "env") and value else value)
