"""The event hub: the one owner of the event log, and the router of events between processes.

Every process forwards its events here in batches. The hub numbers them per job, writes them
to the log and hands them to the subscriptions of other processes: a driver polls its
subscription (`poll`), an actor has them delivered into its mailbox. Logic lives in `EventBus`
and `EventLog`; `HubCore` holds it together and is tested without Ray; `EventHub` is the thin
Ray shell around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from llmspell.runtime.bus import EventBus, Overflow, Subscription
from llmspell.runtime.errors import CodecError
from llmspell.runtime.eventlog import EventLog
from llmspell.runtime.events import Event, pack_events, unpack_events
from llmspell.runtime.logs import get_logger
from llmspell.runtime.messages import new_id
from llmspell.runtime.node import HUB_NAME, Node, untracked
from llmspell.runtime.process import settle_gc
from llmspell.runtime.settings import RuntimeSettings

EVENT_MESSAGE = "event"


Deliver = Callable[[str, Event], Awaitable[None]]


class HubCore:
    """Sequencing, logging and fan-out of events arriving from other processes."""

    def __init__(self, log_path: str, deliver: Deliver | None = None) -> None:
        self.log = EventLog(log_path)
        self._deliver = deliver
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self.bus = EventBus(sequencer=True, sinks=[self.log])
        self.bad_batches = 0
        self.subs: dict[str, Subscription] = {}
        self._known_jobs: set[str] = set()
        self._first_sight = asyncio.Lock()
        self._logger = get_logger(actor="hub")

    async def publish_batch(self, data: bytes) -> int:
        """Take a batch of events from another process; returns how many were accepted."""
        try:
            events = unpack_events(data)
        except CodecError as exc:
            self.bad_batches += 1
            self._logger.warning("bad event batch refused", error=str(exc), size=len(data))
            await self.bus.publish("bus.rejected", {"error": str(exc), "bytes": len(data)})
            raise
        for event in events:
            await self.publish_event(event)
        return len(events)

    async def publish_event(self, event: Event) -> None:
        if event.job_id not in self._known_jobs:
            # Continue the job's numbering where its log left off (a resumed job). Under a lock,
            # so that a second batch of the same job cannot start numbering at 1 meanwhile.
            async with self._first_sight:
                if event.job_id not in self._known_jobs:
                    last = await asyncio.to_thread(self.log.last_seq, event.job_id)
                    self.bus.start_seq(event.job_id, last)
                    self._known_jobs.add(event.job_id)
        await self.bus.publish_event(event)

    def subscribe(self, pattern: str, buffer: int, overflow: Overflow, job_id: str | None) -> str:
        sub = self.bus.subscribe(pattern, buffer=buffer, overflow=overflow, job_id=job_id)
        sub_id = new_id()
        self.subs[sub_id] = sub
        return sub_id

    def subscription(self, sub_id: str) -> Subscription:
        sub = self.subs.get(sub_id)
        if sub is None:
            raise KeyError(f"no subscription {sub_id!r} on the event hub (closed or never made)")
        return sub

    async def poll(self, sub_id: str, max_items: int, timeout: float) -> tuple[bytes, int, bool]:
        """Up to max_items events (waiting up to timeout for the first), the drop count, closed."""
        sub = self.subscription(sub_id)
        events = await sub.get_batch(max_items, timeout)
        return pack_events(events), sub.dropped, sub.closed

    def subscribe_actor(self, pattern: str, address: str, buffer: int, overflow: Overflow,
                        job_id: str | None) -> str:
        """Deliver matching events into an actor's mailbox, from a pump task the hub owns."""
        if self._deliver is None:
            raise RuntimeError("this hub cannot deliver to actors")
        sub_id = self.subscribe(pattern, buffer, overflow, job_id)
        self._pumps[sub_id] = asyncio.get_running_loop().create_task(
            self._pump(sub_id, address), name=f"hub-pump:{address}"
        )
        return sub_id

    async def _pump(self, sub_id: str, address: str) -> None:
        sub = self.subs[sub_id]
        assert self._deliver is not None
        try:
            while not sub.closed:
                for event in await sub.get_batch(500, timeout=None):
                    await self._deliver(address, event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the subscriber is gone: end its subscription, say why
            self._logger.warning("actor subscription ended", subscriber=address, error=str(exc))
            self.unsubscribe(sub_id)  # nobody reads its buffer now: publishing must not wait on it
            await self.bus.publish("bus.subscriber_lost", {"subscriber": address,
                                                           "error": str(exc)})
        finally:
            self._pumps.pop(sub_id, None)
            self.unsubscribe(sub_id)

    def unsubscribe(self, sub_id: str) -> None:
        sub = self.subs.pop(sub_id, None)
        if sub is not None:
            sub.close()
        pump = self._pumps.pop(sub_id, None)
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()

    async def replay(self, job_id: str, from_seq: int, pattern: str, limit: int | None) -> bytes:
        events = await asyncio.to_thread(self.log.replay, job_id, from_seq, pattern, limit)
        return pack_events(events)

    def stats(self) -> dict[str, Any]:
        return {
            "published": self.bus.published,
            "logged": self.log.written,
            "log_transactions": self.log.transactions,
            "log_backlog": self.log.backlog,
            "bad_batches": self.bad_batches,
            "subscriptions": {
                sid: {"pattern": s.pattern.text, "buffered": len(s), "dropped": s.dropped}
                for sid, s in self.subs.items()
            },
        }

    async def close(self) -> None:
        pumps = list(self._pumps.values())
        for sub_id in list(self.subs):
            self.unsubscribe(sub_id)
        await asyncio.gather(*pumps, return_exceptions=True)
        await asyncio.to_thread(self.log.close)


class EventHub:
    """The Ray shell of HubCore; one per runtime namespace, named `llmspell.hub`."""

    def __init__(self, log_path: str, settings: RuntimeSettings) -> None:
        self.node = Node(settings, identity=HUB_NAME)
        self.core = HubCore(log_path, deliver=self._deliver)
        settle_gc(settings.gc_young_threshold)

    async def _deliver(self, address: str, event: Event) -> None:
        await self.node.tell(address, EVENT_MESSAGE, event.to_wire(), job_id=event.job_id)

    @untracked
    async def publish_batch(self, data: bytes) -> int:
        return await self.core.publish_batch(data)

    async def subscribe(self, pattern: str, buffer: int, overflow: Overflow,
                        job_id: str | None) -> str:
        return self.core.subscribe(pattern, buffer, overflow, job_id)

    @untracked
    async def poll(self, sub_id: str, max_items: int, timeout: float) -> tuple[bytes, int, bool]:
        return await self.core.poll(sub_id, max_items, timeout)

    async def subscribe_actor(self, pattern: str, address: str, buffer: int, overflow: Overflow,
                              job_id: str | None) -> str:
        return self.core.subscribe_actor(pattern, address, buffer, overflow, job_id)

    async def unsubscribe(self, sub_id: str) -> None:
        self.core.unsubscribe(sub_id)

    async def replay(self, job_id: str, from_seq: int, pattern: str, limit: int | None) -> bytes:
        return await self.core.replay(job_id, from_seq, pattern, limit)

    async def flush(self) -> None:
        await self.core.log.aflush()

    async def stats(self) -> dict[str, Any]:
        return self.core.stats()

    async def close(self) -> None:
        await self.node.close()
        await self.core.close()

    @untracked
    async def ping(self) -> str:
        return "hub"
