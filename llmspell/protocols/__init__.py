"""MCP and A2A: use and serve tools and agents across the ecosystem.

    mcp_config   MCPServerConfig: a server as a job spec declares it (`mcp_servers:`)
    mcp_client   MCPConnection: one session per server per process, restarted when it dies
    mcp_tools    MCPTool and load_mcp_tools: a server's tools as llmspell tools
    mcp_server   build_mcp_server: our tools and agents for any MCP client (stdio, HTTP)
    a2a_server   a2a_app: our agents and workflows as A2A agents, each with its card
    a2a_config   RemoteAgentConfig: a remote agent as a job spec declares it (`remote_agents:`)
    a2a_client   A2AAgent: a remote A2A agent as a Step or a tool
    auth, http   the bearer token and loopback rules; an embeddable uvicorn server
    errors       MCPServerError, MCPConnectionLost, A2AError

The SDKs are imported on first use of a name (they take a while to import), so
`import llmspell.protocols` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmspell.protocols.a2a_client import A2AAgent
    from llmspell.protocols.a2a_config import RemoteAgentConfig
    from llmspell.protocols.a2a_server import a2a_app, agent_card
    from llmspell.protocols.errors import A2AError, MCPConnectionLost, MCPServerError
    from llmspell.protocols.http import HTTPServer
    from llmspell.protocols.mcp_config import MCPServerConfig
    from llmspell.protocols.mcp_server import (
        build_mcp_server,
        mcp_http_app,
        serve_mcp_http,
        serve_mcp_stdio,
    )
    from llmspell.protocols.mcp_tools import MCPTool, load_mcp_tools

__all__ = [
    "A2AAgent", "A2AError", "HTTPServer", "MCPConnectionLost", "MCPServerConfig",
    "MCPServerError", "MCPTool", "RemoteAgentConfig", "a2a_app", "agent_card",
    "build_mcp_server", "load_mcp_tools", "mcp_http_app", "serve_mcp_http", "serve_mcp_stdio",
]

_HOME = {
    "A2AAgent": "a2a_client", "RemoteAgentConfig": "a2a_config", "a2a_app": "a2a_server",
    "agent_card": "a2a_server", "A2AError": "errors", "MCPConnectionLost": "errors",
    "MCPServerError": "errors", "HTTPServer": "http", "MCPServerConfig": "mcp_config",
    "build_mcp_server": "mcp_server", "mcp_http_app": "mcp_server",
    "serve_mcp_http": "mcp_server", "serve_mcp_stdio": "mcp_server", "MCPTool": "mcp_tools",
    "load_mcp_tools": "mcp_tools",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'llmspell.protocols' has no attribute {name!r}")
    return getattr(importlib.import_module(f"llmspell.protocols.{module}"), name)
