"""Batching of items bound for another process.

A Ray call costs about a millisecond; a msgpack'd item a microsecond. So tells and events to
another process are collected and sent many per call: a batch leaves when it holds `max_items`
or its oldest item is `max_delay` seconds old, whichever comes first. One batch is in flight at
a time, which keeps a publisher's items in order; what piles up meanwhile leaves in the next
call (up to `max_batch` items). The pending buffer is bounded: past
`max_pending`, `wait_room()` makes producers wait for the sender to catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from llmspell.runtime.logs import get_logger

T = TypeVar("T")
SendBatch = Callable[[list[T]], Awaitable[None]]


class Batcher(Generic[T]):
    """Collects items and hands them to `send` in batches, from one owned flusher task."""

    def __init__(
        self,
        send: SendBatch[T],
        *,
        name: str,
        max_items: int = 200,
        max_delay: float = 0.002,
        max_pending: int = 50_000,
        max_batch: int | None = None,
        on_error: Callable[[BaseException, int], None] | None = None,
    ) -> None:
        self.name = name
        self.max_items = max_items
        self.max_delay = max_delay
        self.max_pending = max_pending
        self.max_batch = max_batch or max_items * 10
        self.sent_batches = 0
        self.sent_items = 0
        self.failed_items = 0
        self._send = send
        self._on_error = on_error
        self._pending: list[T] = []
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._flushing = False
        self._oldest = 0.0
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.max_pending

    def add(self, item: T) -> None:
        """Queue an item; never waits. Producers that can wait call `wait_room()` after."""
        if self._closed:
            raise RuntimeError(f"batcher {self.name!r} is closed")
        pending = self._pending
        if not pending:
            self._oldest = asyncio.get_running_loop().time()
            self._idle.clear()
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(
                    self._run(), name=f"batcher:{self.name}"
                )
            self._wakeup.set()
        pending.append(item)
        if len(pending) >= self.max_items:
            self._wakeup.set()
            if len(pending) >= self.max_pending:
                self._room.clear()

    async def wait_room(self) -> None:
        if not self._room.is_set():
            await self._room.wait()

    async def flush(self) -> None:
        """Send what is pending now, and wait until everything added so far has been sent."""
        if self._pending:
            self._flushing = True
            self._wakeup.set()
        await self._idle.wait()

    async def close(self) -> None:
        """Send what is pending, then stop the flusher task."""
        if self._closed:
            return
        await self.flush()
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._flushing = False
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # A batch leaves when it is full, when its oldest item is max_delay old, or when
            # someone flushes; until then more items may join it.
            wait = self._oldest + self.max_delay - loop.time()
            if len(self._pending) < self.max_items and wait > 0 and not self._flushing:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wakeup.wait()
                continue
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self._oldest = loop.time()
            if len(self._pending) < self.max_pending:
                self._room.set()
            await self._send_one(batch)

    async def _send_one(self, batch: list[T]) -> None:
        try:
            await self._send(batch)
            self.sent_batches += 1
            self.sent_items += len(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the flusher must outlive a failed send; report it
            self.failed_items += len(batch)
            try:
                if self._on_error is not None:
                    self._on_error(exc, len(batch))
                    return
            except Exception as report_exc:  # a broken reporter must not kill the flusher
                exc = report_exc
            get_logger(batcher=self.name).warning(
                "batch send failed", items=len(batch), error=repr(exc)
            )
