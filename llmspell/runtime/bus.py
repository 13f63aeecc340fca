"""The event bus of one process.

Publishers call `await bus.publish(topic, payload, job_id=..., sender=...)`. Each subscription
holds a pattern and a bounded buffer; when the buffer is full its policy decides: "block" makes
the publisher wait for the subscriber, "drop_oldest" drops the oldest event and counts it. Drops
are reported as `bus.dropped` events, never silent.

Sinks see every event after the subscribers: the event log (one SQLite transaction per batch)
and, in an actor process, the forwarder that batches events to the event hub.

A bus with `sequencer=True` numbers events per job: that bus owns the job's log (the event hub,
or a standalone bus in tests and benchmarks). Buses in actor processes forward unsequenced
events and the hub numbers them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

from llmspell.runtime.events import Event, TopicPattern, check_topic, plain

Overflow = Literal["block", "drop_oldest"]
_DROP_REPORT_INTERVAL = 1.0


class Sink(Protocol):
    """Receives every event after the subscribers. `full` asks publishers to `await room()`."""

    def accept(self, event: Event) -> None: ...

    @property
    def full(self) -> bool: ...

    async def room(self) -> None: ...


class Subscription:
    """A bounded buffer of the events matching a pattern; an async iterator of them."""

    def __init__(
        self, bus: EventBus, pattern: str, *, buffer: int, overflow: Overflow, job_id: str | None
    ) -> None:
        if buffer < 1:
            raise ValueError(f"subscription buffer must be at least 1, got {buffer}")
        if overflow not in ("block", "drop_oldest"):
            raise ValueError(f"overflow must be 'block' or 'drop_oldest', got {overflow!r}")
        self.pattern = TopicPattern(pattern)
        self.job_id = job_id
        self.maxsize = buffer
        self.overflow: Overflow = overflow
        self.dropped = 0
        self.delivered = 0
        self._unreported = 0
        self._last_report = 0.0
        self._bus = bus
        self._buffer: deque[Event] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._space: asyncio.Event | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def closed(self) -> bool:
        return self._closed

    def wants(self, event: Event) -> bool:
        return self.job_id is None or self.job_id == event.job_id

    def offer(self, event: Event) -> bool:
        """Take an event; False only for a full "block" subscription."""
        buf = self._buffer
        if len(buf) >= self.maxsize:
            if self.overflow == "block":
                return False
            buf.popleft()
            self.dropped += 1
            self._unreported += 1
        buf.append(event)
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)
        return True

    def force(self, event: Event) -> None:
        """Take an event past the bound (sync publishers only; see EventBus.publish_nowait)."""
        if not self.offer(event):
            self._buffer.append(event)

    async def space(self) -> None:
        while len(self._buffer) >= self.maxsize and not self._closed:
            if self._space is None:
                self._space = asyncio.Event()
            self._space.clear()
            await self._space.wait()

    def _freed(self) -> None:
        if self._space is not None:
            self._space.set()

    def get_nowait(self, max_items: int = 1_000) -> list[Event]:
        """Up to `max_items` buffered events, without waiting."""
        buf = self._buffer
        n = min(max_items, len(buf))
        out = [buf.popleft() for _ in range(n)]
        self.delivered += n
        if n:
            self._freed()
        return out

    async def get_batch(self, max_items: int = 1_000, timeout: float | None = None) -> list[Event]:
        """Wait for at least one event (or the timeout, or close) and return up to max_items."""
        if not self._buffer and not self._closed:
            self._getter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._getter
            except TimeoutError:
                pass
            finally:
                self._getter = None
        return self.get_nowait(max_items)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._buffer:
                self.delivered += 1
                event = self._buffer.popleft()
                self._freed()
                return event
            if self._closed:
                raise StopAsyncIteration
            await self.get_batch(0)

    def close(self) -> None:
        """Stop receiving; a waiting iterator ends once the buffer is drained."""
        if self._closed:
            return
        self._closed = True
        self._bus.unsubscribe(self)
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)
        self._freed()


class EventBus:
    """Pattern-routed publish/subscribe inside one process."""

    def __init__(self, *, sequencer: bool = True, sinks: list[Sink] | None = None) -> None:
        self.sequencer = sequencer
        self.published = 0
        self._sinks: list[Sink] = list(sinks or [])
        self._subs: list[Subscription] = []
        self._routes: dict[str, tuple[Subscription, ...]] = {}
        self._seqs: dict[str, int] = {}

    # -- subscribing --------------------------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        *,
        buffer: int = 10_000,
        overflow: Overflow = "block",
        job_id: str | None = None,
    ) -> Subscription:
        """Subscribe to topics matching `pattern` (raises PatternError for a bad one)."""
        sub = Subscription(self, pattern, buffer=buffer, overflow=overflow, job_id=job_id)
        self._subs.append(sub)
        self._routes.clear()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._routes.clear()

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def start_seq(self, job_id: str, last_seq: int) -> None:
        """Continue a job's numbering after `last_seq` (its log's last sequence number)."""
        self._seqs[job_id] = max(self._seqs.get(job_id, 0), last_seq)

    def _route(self, topic: str) -> tuple[Subscription, ...]:
        subs = self._routes.get(topic)
        if subs is None:
            check_topic(topic)
            subs = tuple(s for s in self._subs if s.pattern.matches(topic))
            if len(self._routes) > 100_000:
                self._routes.clear()
            self._routes[topic] = subs
        return subs

    # -- publishing ---------------------------------------------------------------------------

    def make(self, topic: str, payload: Any = None, *, job_id: str = "", sender: str = "") -> Event:
        return Event(topic, plain(payload), job_id=job_id, sender=sender)

    def _sequence(self, event: Event) -> None:
        if self.sequencer:
            seq = self._seqs.get(event.job_id, 0) + 1
            self._seqs[event.job_id] = seq
            event.seq = seq

    async def publish(
        self, topic: str, payload: Any = None, *, job_id: str = "", sender: str = ""
    ) -> Event:
        """Publish an event; waits while a "block" subscriber or a sink is full."""
        event = Event(topic, plain(payload), job_id=job_id, sender=sender)
        await self.publish_event(event)
        return event

    async def publish_event(self, event: Event) -> None:
        subs = self._route(event.topic)
        self._sequence(event)
        self.published += 1
        for sub in subs:
            if sub.wants(event):
                while not sub.offer(event):
                    await sub.space()
                    if sub.closed:
                        break
        for sink in self._sinks:
            sink.accept(event)
            if sink.full:
                await sink.room()
        if subs:
            self._report_drops(subs)

    def publish_nowait(
        self, topic: str, payload: Any = None, *, job_id: str = "", sender: str = ""
    ) -> Event:
        """Publish from synchronous code. A full "block" subscriber takes the event past its
        bound rather than lose it; the next `publish` waits until it is back under the bound."""
        event = Event(topic, plain(payload), job_id=job_id, sender=sender)
        subs = self._route(topic)
        self._sequence(event)
        self.published += 1
        for sub in subs:
            if sub.wants(event):
                sub.force(event)
        for sink in self._sinks:
            sink.accept(event)
        if subs:
            self._report_drops(subs)
        return event

    def _report_drops(self, subs: tuple[Subscription, ...]) -> None:
        """Report drops as a `bus.dropped` event, at most once a second per subscription."""
        for sub in subs:
            if not sub._unreported:
                continue
            now = time.monotonic()
            if now - sub._last_report < _DROP_REPORT_INTERVAL and sub._last_report:
                continue
            count, sub._unreported, sub._last_report = sub._unreported, 0, now
            self.publish_nowait(
                "bus.dropped",
                {"pattern": sub.pattern.text, "dropped": count, "total_dropped": sub.dropped},
            )
