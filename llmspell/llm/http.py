"""The HTTP transport under the SDK clients, and one SDK client per event loop.

Both SDKs ship two transports: httpx (their default) and aiohttp (`DefaultAioHttpClient`). On a
busy agent host the aiohttp one costs about a quarter less CPU per call (httpcore's connection
pool scans its connections for every request), and a fan-out's makespan is that host's CPU.
It does not read HTTP(S)_PROXY, so "auto" takes httpx when a proxy is set.

An aiohttp session belongs to the event loop that opened it, so a provider keeps one client per
loop (`LoopClients`). Each is closed when its loop shuts down (asyncio.run and pytest close a
loop's async generators first, which is the hook used here), or by `aclose()`.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any, Generic, Literal, Protocol, TypeVar

HttpKind = Literal["auto", "aiohttp", "httpx"]

_PROXY_ENV = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


def resolve_kind(kind: HttpKind) -> Literal["aiohttp", "httpx"]:
    if kind == "auto":
        return "httpx" if any(os.environ.get(v) for v in _PROXY_ENV) else "aiohttp"
    return kind


def http_client(sdk: Any, kind: HttpKind, timeout: float) -> Any:
    """The SDK's own HTTP client of that kind (`sdk` is the openai or anthropic module)."""
    if resolve_kind(kind) == "aiohttp":
        return sdk.DefaultAioHttpClient(timeout=timeout)
    return sdk.DefaultAsyncHttpxClient(timeout=timeout)


Clients = dict[asyncio.AbstractEventLoop, tuple[Any, AsyncGenerator[None, None]]]

# Every open client, by loop, held here rather than by its provider: a provider dropped in a
# reference cycle would take its client into the garbage with it, to be finalized (and warn
# "Unclosed client session") before anything could close it.
_OPEN: dict[asyncio.AbstractEventLoop, dict[object, AsyncGenerator[None, None]]] = {}
_CLOSING: set[asyncio.Task[None]] = set()


class LoopClients(Generic[C]):
    """One client per running event loop, made on first use, closed by `aclose`, by its loop's
    shutdown, or soon after this object is dropped. A `given` client is used as it is on every
    loop and never closed here: its owner closes it."""

    def __init__(self, make: Callable[[], C], given: C | None = None) -> None:
        self._make = make
        self._given = given
        self._clients: Clients = {}
        weakref.finalize(self, _close_all, self._clients)

    async def get(self) -> C:
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            client = self._make()
            token = object()
            keeper = _keep(client, self._clients, loop, token)
            await anext(keeper)  # started, so that the loop's shutdown closes it
            _OPEN.setdefault(loop, {})[token] = keeper
            entry = self._clients[loop] = (client, keeper)
        client_: C = entry[0]
        return client_

    def made(self) -> bool:
        """Whether the running loop has its client already (a given one counts)."""
        return self._given is not None or asyncio.get_running_loop() in self._clients

    async def aclose(self) -> None:
        """Close the client of the running loop (the others close with their own loops)."""
        entry = self._clients.get(asyncio.get_running_loop())
        if entry is not None:
            await entry[1].aclose()


class SDKClients(Generic[C]):
    """What the SDK-backed providers share: one SDK client per loop (`clients`), closed by
    `aclose`, made ahead of the first call by `warm`."""

    clients: LoopClients[C]

    def _use_sdk(self, sdk: Any, make: Callable[..., C], *, api_key: str | None,
                 base_url: str | None, timeout: float, http: HttpKind,
                 given: C | None) -> None:
        """`make` (the SDK's async client class) with our settings; `given`: a ready client,
        used on every loop as it is, and closed by its owner."""
        # A Timeout object, not a float: the SDK rebuilds it per request, and from a float
        # that costs an isinstance check against a typing Protocol (slow in Python 3.11).
        limit = sdk.Timeout(timeout)
        self.clients = LoopClients(lambda: make(
            api_key=api_key or "unset", base_url=base_url, timeout=limit, max_retries=0,
            http_client=http_client(sdk, http, timeout)), given=given)

    async def aclose(self) -> None:
        await self.clients.aclose()

    async def warm(self) -> None:
        """This loop's SDK client, made before the first call needs it."""
        await self.clients.get()


async def _keep(client: Closable, clients: Clients, loop: asyncio.AbstractEventLoop,
                token: object) -> AsyncGenerator[None, None]:
    """Holds `client` until closed, then forgets it everywhere and closes it."""
    try:
        yield  # never resumed: only closed
    finally:
        clients.pop(loop, None)
        kept = _OPEN.get(loop, {})
        kept.pop(token, None)
        if not kept:
            _OPEN.pop(loop, None)
        await client.close()


def _close_all(clients: Clients) -> None:
    """The owner is gone: close its clients, each on its own loop (a weakref callback may run
    on any thread)."""
    for loop, (_, keeper) in list(clients.items()):
        if not loop.is_closed():
            loop.call_soon_threadsafe(_close_on_loop, keeper)


def _close_on_loop(keeper: AsyncGenerator[None, None]) -> None:
    task = asyncio.get_running_loop().create_task(keeper.aclose())
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)
