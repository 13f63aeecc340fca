"""The errors of the protocol layer. Each names the server (and the tool, for a call)::

    ToolError (llmspell.tools)
    └── MCPServerError        an MCP server could not be reached, refused, or failed a call
        └── MCPConnectionLost the server died or closed the connection during a call; it was
                              restarted (or the restart failed, and the message says why)

    LlmspellError
    └── A2AError              a remote A2A agent could not be reached or failed its task

`A2AAgent.run` never raises A2AError: a failure becomes a failed RunResult whose reason is the
error's message, naming the agent and its URL (see llmspell.protocols.a2a_client).
"""

from __future__ import annotations

from llmspell.runtime.errors import LlmspellError
from llmspell.tools.errors import ToolError, ToolUnavailable

__all__ = ["A2AError", "MCPConnectionLost", "MCPServerError"]


class MCPServerError(ToolError):
    """The message is what a model reads: it names the server and what to do."""

    def __init__(self, server: str, message: str, *, tool: str | None = None) -> None:
        super().__init__(tool or f"mcp:{server}", f"MCP server {server!r}: {message}")
        self.server = server


class MCPConnectionLost(MCPServerError, ToolUnavailable):
    """Never retried by us: the call may or may not have had its effect on the server."""


class A2AError(LlmspellError):
    """The message names the remote agent, its URL and what went wrong."""
