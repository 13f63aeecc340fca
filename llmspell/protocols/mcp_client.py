"""MCPConnection: one live session with one MCP server, per process, shared by its tools.

A tool pool replica (or any process) that calls an MCP tool gets the connection through
`connection_for(config)`: the first call starts the server (stdio) or opens the session
(HTTP); every later call of any tool of that server in this process reuses it.

The session lives in an owner task, because the SDK's client is an async context manager
whose task group must be entered and left by one task. Calls run in the callers' tasks.

When the server dies (or the HTTP session breaks) in the middle of a call, that call fails with
MCPConnectionLost naming the server and the tool, and the same call restarts the server before
it returns, so the next call finds a fresh session. Nothing is retried for the caller: the
call may have had its effect.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx2
import mcp
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, CallToolResult, Implementation
from mcp_types import Tool as MCPToolSpec

from llmspell.protocols.errors import MCPConnectionLost, MCPServerError
from llmspell.protocols.mcp_config import MCPServerConfig
from llmspell.runtime.logs import get_logger
from llmspell.tools.errors import ToolTimeout

__all__ = ["MCPConnection", "close_all", "connection_for"]

log = get_logger(component="mcp.client")

CLIENT_INFO = Implementation(name="llmspell", version="0.1.0")
_CLOSE_TIMEOUT = 10.0


class MCPConnection:
    def __init__(self, config: MCPServerConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.starts = 0  # sessions opened; starts - 1 is how often the server was restarted
        self._client: mcp.Client | None = None
        self._owner: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._owner is not None and not self._owner.done()

    # -- what tools use -------------------------------------------------------------------------

    async def list_tools(self) -> list[MCPToolSpec]:
        client = await self.client()
        tools: list[MCPToolSpec] = []
        cursor: str | None = None
        try:
            for _ in range(100):  # a paginator that never ends must not hang the job's start
                page = await client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    break
        except Exception as exc:
            await self._lost_or_raise(exc, client, "tools/list")
        return tools

    async def call_tool(self, tool: str, arguments: dict[str, Any], *,
                        timeout: float | None = None, label: str | None = None
                        ) -> CallToolResult:
        """Call `tool` (its name on the server). `label` is its name in llmspell, for errors."""
        label = label or tool
        client = await self.client()
        limit = timeout or self.config.call_timeout
        try:
            return await client.call_tool(tool, arguments, read_timeout_seconds=limit)
        except mcp.MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise ToolTimeout(label, limit) from None
            await self._lost_or_raise(exc, client, f"call of {tool!r}", label)
        except TimeoutError:
            raise ToolTimeout(label, limit) from None
        except Exception as exc:
            await self._lost_or_raise(exc, client, f"call of {tool!r}", label)
        raise AssertionError("unreachable")  # _lost_or_raise always raises

    async def client(self) -> mcp.Client:
        """The live session, started (or restarted) if there is none."""
        if self.connected:
            assert self._client is not None
            return self._client
        async with self._lock:
            if not self.connected:
                await self._start()
        assert self._client is not None
        return self._client

    async def close(self) -> None:
        """End the session (and a stdio server's process). Idempotent."""
        owner, self._owner, self._client = self._owner, None, None
        self._stop.set()
        if owner is not None and not owner.done():
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await asyncio.shield(owner)
            except (TimeoutError, Exception):
                owner.cancel()
                await asyncio.gather(owner, return_exceptions=True)

    # -- the owner task -------------------------------------------------------------------------

    async def _start(self) -> None:
        await self.close()  # a dead session's owner may still be unwinding
        self._stop = asyncio.Event()
        ready: asyncio.Future[mcp.Client] = self.loop.create_future()
        self._owner = asyncio.create_task(self._own(ready, self._stop),
                                          name=f"mcp:{self.config.name}")
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                self._client = await asyncio.shield(ready)
        except TimeoutError:
            await self.close()
            raise MCPServerError(self.config.name, f"{self.config.describe()} did not answer "
                                 f"within {self.config.connect_timeout:g}s") from None
        except Exception as exc:
            await self.close()
            raise MCPServerError(self.config.name, f"could not connect to "
                                 f"{self.config.describe()}: {_reason(exc)}") from None
        self.starts += 1
        log.info("mcp session open", server=self.config.name, transport=self.config.transport,
                 starts=self.starts)

    async def _own(self, ready: asyncio.Future[mcp.Client], stop: asyncio.Event) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                client = mcp.Client(await self._target(stack), client_info=CLIENT_INFO,
                                    read_timeout_seconds=self.config.call_timeout, cache=None)
                await stack.enter_async_context(client)
                ready.set_result(client)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else
                                    RuntimeError(f"session task ended: {exc!r}"))
            elif not stop.is_set():
                log.warning("mcp session ended", server=self.config.name, error=_reason(exc))
            if not isinstance(exc, Exception):
                raise

    async def _target(self, stack: contextlib.AsyncExitStack) -> Any:
        config = self.config
        if config.command is not None:
            return mcp.StdioServerParameters(command=config.command, args=config.args,
                                             env=config.env or None, cwd=config.cwd)
        assert config.url is not None
        http = await stack.enter_async_context(create_mcp_http_client(
            headers=config.headers or None,
            timeout=httpx2.Timeout(config.connect_timeout, read=max(config.call_timeout, 30))))
        return streamable_http_client(config.url, http_client=http)

    # -- failures -------------------------------------------------------------------------------

    async def _lost_or_raise(self, exc: BaseException, client: mcp.Client, what: str,
                             tool: str | None = None) -> None:
        """Raise the error a failed request becomes; a lost connection is restarted first."""
        if isinstance(exc, mcp.MCPError) and exc.code != CONNECTION_CLOSED:
            raise MCPServerError(self.config.name, f"{what} refused: {exc.message}",
                                 tool=tool) from None
        log.warning("mcp connection lost", server=self.config.name, during=what,
                    error=_reason(exc))
        try:
            async with self._lock:
                if self._client is client or not self.connected:  # not restarted by another call
                    await self._start()
        except MCPServerError as restart:
            raise MCPConnectionLost(self.config.name, f"the connection was lost during the "
                                    f"{what} ({_reason(exc)}), and restarting failed: "
                                    f"{restart.detail}", tool=tool) from None
        raise MCPConnectionLost(self.config.name, f"the connection was lost during the {what} "
                                f"({_reason(exc)}); the server was restarted, so a new call "
                                "can be made (this one may or may not have had its effect)",
                                tool=tool) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(e) for e in exc.exceptions)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


# -- one connection per server per process --------------------------------------------------------

_connections: dict[str, MCPConnection] = {}


def connection_for(config: MCPServerConfig) -> MCPConnection:
    """This process's connection to the server (created unconnected; it connects on use).

    Keyed by the whole config, so two jobs naming the same server share it. A connection made
    on another event loop (one that a test or a previous `asyncio.run` closed) is replaced."""
    key = config.key()
    conn = _connections.get(key)
    if conn is None or conn.loop is not asyncio.get_running_loop() or conn.loop.is_closed():
        conn = _connections[key] = MCPConnection(config)
    return conn


async def close_all() -> None:
    """Close this process's connections on this loop (stdio servers exit with them)."""
    loop = asyncio.get_running_loop()
    mine = [k for k, c in _connections.items() if c.loop is loop]
    conns = [_connections.pop(k) for k in mine]
    await asyncio.gather(*(c.close() for c in conns))
