"""The way back from agent actors to the spell: Lua hooks and Lua tools run in the driver.

A spell's Lua functions live in one Lua state in the driver process, but its agents run in
actors. When an agent in an actor reaches a point where a Lua hook is registered, or calls a
tool defined in Lua, it asks the spell's relay actor; the driver pulls the request from the
relay (a long poll: Ray cannot call into a driver), runs the Lua function in its scheduler and
sends the answer back. The relay itself is a small queue of calls and their futures.

So a Lua hook fires inside the actor, at its point and in priority order among the host's
Python hooks, exactly like a Python hook there, and sees and returns the same values (the
payload crosses by pickle; the driver converts it for Lua). Hooks are installed on a host when
it starts: a spell registers its hooks before its agents first run (a hook registered later at
a point no running host has hooks for is reported with a warning, and applies to agents that
start after it).

Stream deltas are the exception to one round trip per call: an on_stream_delta hook's result
is ignored by the agent loop (it watches, it cannot change a delta), and a round trip to the
driver costs milliseconds, which per chunk would hold the stream back (about 5 ms a delta
measured by benchmarks/spells.py). So a relayed delta hook returns at once; the actor sends its
deltas in order, in batches (whatever came while the last batch was on its way), and the run's
after_agent_run waits for the last batch to be answered, so a spell's delta hooks have seen
every delta of a run before the run returns to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from llmspell.runtime.errors import LlmspellError
from llmspell.runtime.hooks import HookContext, HookPoint, HookRegistry, HookResult
from llmspell.runtime.logs import get_logger

__all__ = ["RelayError", "RelayHooks", "RelayPump", "SpellRelay", "relay_call"]

# Runs before every other after_agent_run hook: they may count on the deltas having arrived.
_FLUSH_PRIORITY = 1_000_000

Handler = Callable[[str, Any, dict[str, Any]], Awaitable[Any]]
_TAKE_TIMEOUT_S = 0.5


class RelayError(LlmspellError):
    """The spell's side of a relayed call failed (the Lua hook or tool raised, or the spell
    has ended)."""


class SpellRelay:
    """The relay actor: calls from agent actors wait here until the driver answers them."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[int, str, str, Any, dict[str, Any]]] | None = None
        self._waiting: dict[int, asyncio.Future[tuple[bool, Any]]] = {}
        self._ids = itertools.count(1)
        self._closed = False

    def _q(self) -> asyncio.Queue[tuple[int, str, str, Any, dict[str, Any]]]:
        if self._queue is None:  # made in the actor's event loop, not in __init__
            self._queue = asyncio.Queue()
        return self._queue

    async def call(self, kind: str, key: str, payload: Any, info: dict[str, Any]
                   ) -> tuple[bool, Any]:
        if self._closed:
            return False, "the spell has ended"
        request = next(self._ids)
        future: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        self._q().put_nowait((request, kind, key, payload, info))
        try:
            return await future
        finally:
            self._waiting.pop(request, None)

    async def take(self, timeout: float) -> list[tuple[int, str, str, Any, dict[str, Any]]]:
        """The calls waiting for the driver (at least one, or none after `timeout`)."""
        queue = self._q()
        items = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                items.append(await queue.get())
        while not queue.empty():
            items.append(queue.get_nowait())
        return items

    def answer(self, request: int, ok: bool, value: Any) -> None:
        future = self._waiting.get(request)
        if future is not None and not future.done():
            future.set_result((ok, value))

    def close(self) -> None:
        self._closed = True
        for future in self._waiting.values():
            if not future.done():
                future.set_result((False, "the spell has ended"))

    def ping(self) -> str:
        return "pong"


_handles: dict[tuple[str, str], Any] = {}


async def relay_call(relay: str, namespace: str, kind: str, key: str, payload: Any,
                     info: dict[str, Any]) -> Any:
    """From an actor: run the spell's `kind` callback `key` on `payload` and return its value."""
    handle = _handles.get((relay, namespace))
    if handle is None:
        handle = _handles[(relay, namespace)] = ray.get_actor(relay, namespace=namespace)
    ok, value = await handle.call.remote(kind, key, payload, info)
    if not ok:
        raise RelayError(str(value))
    return value


class _DeltaSender:
    """An actor's stream deltas for one relay, sent in order, a batch at a time."""

    def __init__(self, relay: str, namespace: str) -> None:
        self.relay, self.namespace = relay, namespace
        self.items: list[tuple[str, Any, dict[str, Any]]] = []
        self.task: asyncio.Task[None] | None = None

    def add(self, hook: str, payload: Any, info: dict[str, Any]) -> None:
        self.items.append((hook, payload, info))
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        log = get_logger(actor=self.relay)
        while self.items:
            batch, self.items = self.items, []
            try:
                await relay_call(self.relay, self.namespace, "hooks", "", batch, {})
            except Exception as exc:  # the spell has ended: nobody is left to watch
                log.warning("stream deltas not delivered to the spell", error=repr(exc),
                            deltas=len(batch))

    async def flush(self, ctx: HookContext) -> None:
        """An after_agent_run hook: wait until every delta sent so far is answered."""
        while self.task is not None and not self.task.done():
            await asyncio.shield(self.task)


_senders: dict[tuple[str, str], _DeltaSender] = {}


def _sender(relay: str, namespace: str) -> _DeltaSender:
    sender = _senders.get((relay, namespace))
    if sender is None:
        sender = _senders[(relay, namespace)] = _DeltaSender(relay, namespace)
    return sender


@dataclass(frozen=True)
class RelayedHook:
    """A hook in an actor that runs Lua hook number `hook` in the spell's driver."""

    relay: str
    namespace: str
    hook: int
    name: str

    async def __call__(self, ctx: HookContext) -> HookResult | None:
        info = {"point": str(ctx.point), "job_id": ctx.job_id, "actor": ctx.actor,
                "target": ctx.target, "attempt": ctx.attempt,
                "error": None if ctx.error is None else f"{type(ctx.error).__name__}: "
                                                       f"{ctx.error}"}
        if ctx.point == HookPoint.on_stream_delta:
            _sender(self.relay, self.namespace).add(str(self.hook), ctx.payload, info)
            return None
        result: HookResult | None = await relay_call(self.relay, self.namespace, "hook",
                                                     str(self.hook), ctx.payload, info)
        return result


@dataclass(frozen=True)
class RelayedHookSpec:
    point: str
    priority: int
    timeout: float
    hook: int
    name: str


@dataclass
class RelayHooks:
    """A host's hook installer (picklable: it crosses to the actor): one relayed hook per
    Lua hook, with the Lua hook's point, priority and name."""

    relay: str
    namespace: str
    hooks: list[RelayedHookSpec] = field(default_factory=list)

    def __call__(self, registry: HookRegistry) -> None:
        for spec in self.hooks:
            registry.register(spec.point, RelayedHook(self.relay, self.namespace, spec.hook,
                                                      spec.name),
                              priority=spec.priority, timeout=spec.timeout, name=spec.name)
        if any(spec.point == HookPoint.on_stream_delta for spec in self.hooks):
            registry.register(HookPoint.after_agent_run,
                              _sender(self.relay, self.namespace).flush,
                              priority=_FLUSH_PRIORITY, name="spell_stream_deltas")


class RelayPump:
    """The driver's side: starts the relay actor, serves its calls, stops it."""

    def __init__(self, namespace: str, address: str, handlers: dict[str, Handler]) -> None:
        self.namespace = namespace
        self.address = address
        self._handlers = handlers
        self._handle: Any = None
        self._loop: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.log = get_logger(actor=address)

    @property
    def started(self) -> bool:
        return self._handle is not None

    async def start(self) -> None:
        if self._handle is not None:
            return
        self._handle = ray.remote(SpellRelay).options(  # type: ignore[attr-defined]
            name=self.address, namespace=self.namespace, num_cpus=0,
            max_concurrency=1000).remote()
        await self._handle.ping.remote()
        self._loop = asyncio.create_task(self._serve_forever(), name=f"pump {self.address}")

    async def _serve_forever(self) -> None:
        while True:
            for request, kind, key, payload, info in await self._handle.take.remote(
                    _TAKE_TIMEOUT_S):
                task = asyncio.create_task(self._serve(request, kind, key, payload, info))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: int, kind: str, key: str, payload: Any,
                     info: dict[str, Any]) -> None:
        try:
            value = await self._handlers[kind](key, payload, info)
            ok = True
        except Exception as exc:
            ok, value = False, f"{type(exc).__name__}: {exc}"
        await self._handle.answer.remote(request, ok, value)

    async def close(self) -> None:
        """Stop serving, fail what still waits, and end the relay actor."""
        if self._loop is not None:
            self._loop.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*[t for t in (self._loop, *self._tasks) if t is not None],
                             return_exceptions=True)
        if self._handle is not None:
            with contextlib.suppress(Exception):
                await self._handle.close.remote()
            ray.kill(self._handle, no_restart=True)
            self._handle = None
