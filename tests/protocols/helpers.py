"""What the protocol tests share: the servers they start, all on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

from llmspell.protocols.mcp_config import MCPServerConfig

STDIO_SERVER = str(Path(__file__).with_name("stdio_server.py"))
TOKEN = "test-token-9f8e7d"


def time_server(**fields: object) -> MCPServerConfig:
    """mcp-server-time (from PyPI, not ours) run with this venv's python."""
    return MCPServerConfig.model_validate({
        "name": "time", "command": sys.executable,
        "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"], **fields})


def our_stdio_server(pidfile: Path, **fields: object) -> MCPServerConfig:
    return MCPServerConfig.model_validate({
        "name": "ours", "command": sys.executable, "args": [STDIO_SERVER, str(pidfile)],
        **fields})
