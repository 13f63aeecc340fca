"""An MCP server of ours over stdio, for the tests: `python stdio_server.py PIDFILE`.

`nap` writes this process's pid to PIDFILE, then sleeps: a test kills the process mid-call.
`served` is also a `module:attribute` target for `llmspell serve` (a tool and a step)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from llmspell.protocols.mcp_server import build_mcp_server, serve_mcp_stdio
from llmspell.tools import tool


@tool
async def nap(seconds: float) -> str:
    """Sleep a while, after writing this server's pid to its pid file.

    Args:
        seconds: how long to sleep
    """
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(str(os.getpid()))  # noqa: ASYNC240 - a few bytes
    await asyncio.sleep(seconds)
    return f"slept {seconds:g}s in {os.getpid()}"


@tool
def shout(text: str) -> str:
    """Say it louder.

    Args:
        text: what to say
    """
    return text.upper()


class Greeter:
    """A Step: a name and run(input, ctx=)."""

    name = "greeter"
    description = "Greets whoever you name."

    async def run(self, input: str, *, ctx: object = None) -> str:
        return f"Hello, {input}!"


served = [shout, Greeter()]

if __name__ == "__main__":
    asyncio.run(serve_mcp_stdio(build_mcp_server([nap, shout], [Greeter()])))
