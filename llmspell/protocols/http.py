"""HTTPServer: an ASGI app served by uvicorn on the running event loop.

    async with HTTPServer(app, port=0) as server:   # port 0: any free port
        print(server.url)

`serve_forever()` is what the CLI uses (Ctrl-C stops it). Embedded (`async with`), the server
leaves the process's signal handlers alone, so it can run inside a test or a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import uvicorn

from llmspell.protocols.auth import check_bind

__all__ = ["HTTPServer"]

_START_TIMEOUT = 30.0


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the host process owns its signals
        yield


class HTTPServer:
    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, log_level: str = "warning") -> None:
        check_bind(host, token)
        self.app = app
        self.host = host
        self.port = port
        self.log_level = log_level
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _config(self) -> uvicorn.Config:
        return uvicorn.Config(self.app, host=self.host, port=self.port, lifespan="on",
                              log_level=self.log_level, access_log=False)

    def _bind(self) -> socket.socket:
        """Our own socket: a port in use is an OSError here, not uvicorn's sys.exit."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host.strip("[]"), self.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}: "
                                     f"{exc.strerror}") from None
        self.port = int(sock.getsockname()[1])
        return sock

    async def serve_forever(self) -> None:
        await uvicorn.Server(self._config()).serve(sockets=[self._bind()])

    async def __aenter__(self) -> HTTPServer:
        sock = self._bind()
        server = self._server = _EmbeddedServer(self._config())
        self._task = asyncio.create_task(server.serve(sockets=[sock]),
                                         name=f"http:{self.host}:{self.port}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        while not server.started:
            if self._task.done() or loop.time() > deadline:  # e.g. the app's lifespan failed
                await self.aclose()
                raise RuntimeError(f"the HTTP server on {self.url} did not start (see the log)")
            await asyncio.sleep(0.01)
        return self

    async def aclose(self) -> None:
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        await asyncio.wait({task}, timeout=10)
        if not task.done():  # open streams (SSE) that did not end: cut them
            server.force_exit = True
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._server = self._task = None

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
