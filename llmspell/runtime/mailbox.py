"""The mailbox of one actor: bounded, prioritised, ordered per sender, deduplicated.

Ray keeps no order between calls to an async actor, so order is ours: every message of a
*stream* (one sender to one recipient) carries a sequence number. A message that arrives early is
held until the ones before it arrive; a gap that is not filled within `gap_timeout` seconds is
reported and skipped. A message that comes after its gap was skipped is late: a tell becomes a dead
letter (its place in the order is gone), an ask is delivered out of order, because its sender is
waiting for the reply and an order already broken is better than lost work. Messages without a
stream (seq 0) are not ordered.

Nothing is dropped silently. Every message put is delivered, rejected (`MailboxFull`, raised to
the sender), dropped as a duplicate (counted; an ask gets the original's reply), or turned into a
dead letter (`on_dead_letter` is called and an ask's reply future fails).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from llmspell.runtime.errors import MailboxClosed, MailboxError, MailboxFull
from llmspell.runtime.messages import Envelope, Kind, Priority

Overflow = Literal["block", "reject"]
DeadLetterHandler = Callable[[Envelope, str], None]
GapHandler = Callable[[str, int, int], None]

_LANES = len(Priority)
_REJECTED = None  # marks a seq that was rejected: the stream moves past it without waiting


@dataclass(slots=True)
class MailboxStats:
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    gaps: int = 0
    late_asks: int = 0
    delivered: int = 0


@dataclass(slots=True)
class _Stream:
    next_seq: int = 1
    held: dict[int, tuple[Envelope, Any] | None] = field(default_factory=dict)
    held_count: int = 0
    skipped: set[int] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None


class Mailbox:
    """An actor's inbox. One consumer calls `get()`; any number of producers call `put()`."""

    def __init__(
        self,
        owner: str,
        *,
        capacity: int = 10_000,
        overflow: Overflow = "block",
        gap_timeout: float = 2.0,
        dedupe_window: int = 10_000,
        on_dead_letter: DeadLetterHandler | None = None,
        on_gap: GapHandler | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be at least 1, got {capacity}")
        if overflow not in ("block", "reject"):
            raise ValueError(f"mailbox overflow must be 'block' or 'reject', got {overflow!r}")
        self.owner = owner
        self.capacity = capacity
        self.overflow = overflow
        self.gap_timeout = gap_timeout
        self.stats = MailboxStats()
        self._dedupe_window = dedupe_window
        self._on_dead_letter = on_dead_letter
        self._on_gap = on_gap
        self._lanes: list[deque[tuple[Envelope, Any]]] = [deque() for _ in range(_LANES)]
        self._size = 0  # messages in lanes plus messages held for ordering
        self._held = 0  # messages held for ordering (the consumer cannot take them yet)
        self._streams: dict[str, _Stream] = {}
        self._seen: OrderedDict[str, asyncio.Future[Any] | None] = OrderedDict()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def __len__(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    # -- producers ----------------------------------------------------------------------------

    async def put(self, env: Envelope, reply: asyncio.Future[Any] | None = None) -> bool:
        """Offer a message. Returns False if it was dropped as a duplicate.

        With overflow "block" a full mailbox makes the caller wait; with "reject" it raises
        MailboxFull. System messages are never refused for lack of room.
        """
        if self._is_duplicate(env, reply):
            return False
        while self._must_wait(env):
            if self.overflow == "reject":
                self._reject(env)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._putters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
        accepted = self._offer(env, reply)
        if self._putters and (self._size < self.capacity or self._size == self._held):
            _wake(self._putters)  # pass the turn on: the next producer may not need to wait
        return accepted

    def put_nowait(self, env: Envelope, reply: asyncio.Future[Any] | None = None) -> bool:
        """Offer a message without waiting: raises MailboxFull when there is no room."""
        if self._is_duplicate(env, reply):
            return False
        if self._must_wait(env):
            self._reject(env)
        return self._offer(env, reply)

    def _is_duplicate(self, env: Envelope, reply: asyncio.Future[Any] | None) -> bool:
        """Drop a duplicate before any capacity check: refusing it for lack of room would
        consume a seq that its original still holds."""
        if self._closed:
            raise MailboxClosed(self.owner)
        key = env.idempotency_key
        if key is not None and key in self._seen:
            self._duplicate(env, reply, self._seen[key])
            return True
        stream = self._streams.get(env.stream) if env.seq and env.stream else None
        if stream is not None and env.seq not in stream.skipped and (
                env.seq < stream.next_seq or stream.held.get(env.seq) is not None):
            self._duplicate(env, reply, None)
            return True
        return False

    def _must_wait(self, env: Envelope) -> bool:
        if self._closed:
            raise MailboxClosed(self.owner)
        if self._size < self.capacity or env.priority == Priority.SYSTEM:
            return False
        if self._size == self._held:
            # Every queued message is held for a missing seq, so the consumer cannot make room:
            # waiting could only end with a gap timeout, and the missing message may be the
            # very one queued behind this put. Take it.
            return False
        # A message that fills a gap releases held messages: refusing it would deadlock them.
        stream = self._streams.get(env.stream) if env.seq else None
        return not (stream is not None and stream.held_count and env.seq == stream.next_seq)

    def _reject(self, env: Envelope) -> None:
        self.stats.rejected += 1
        if env.seq and env.stream:
            self._consume_seq(env.stream, env.seq)
        raise MailboxFull(self.owner, self.capacity)

    def _offer(self, env: Envelope, reply: asyncio.Future[Any] | None) -> bool:
        key = env.idempotency_key
        if key is not None and key in self._seen:
            self._duplicate(env, reply, self._seen[key])
            return False
        if not env.seq or not env.stream:
            self._accept(key, reply)
            self._admit(env, reply)
            return True
        stream = self._streams.get(env.stream)
        if stream is None:
            stream = self._streams[env.stream] = _Stream()
        seq = env.seq
        if seq in stream.skipped:
            stream.skipped.discard(seq)
            self._accept(key, reply)
            if env.kind == Kind.ASK:
                self.stats.late_asks += 1
                self._admit(env, reply)
            else:
                self._dead_letter(env, reply, "arrived after its sequence gap was skipped")
            return True
        if seq < stream.next_seq or seq in stream.held:
            self._duplicate(env, reply, None)
            return False
        self._accept(key, reply)
        if seq > stream.next_seq:
            stream.held[seq] = (env, reply)
            stream.held_count += 1
            self._held += 1
            self._size += 1
            self._arm_gap_timer(env.stream, stream)
            # A waiting putter may hold the message that fills this gap: it may now pass.
            while self._putters:
                _wake(self._putters)
            return True
        self._admit(env, reply)
        stream.next_seq += 1
        self._release(env.stream, stream)
        return True

    def _accept(self, key: str | None, reply: asyncio.Future[Any] | None) -> None:
        self.stats.accepted += 1
        if key is not None:
            self._seen[key] = reply
            if len(self._seen) > self._dedupe_window:
                self._seen.popitem(last=False)

    def _consume_seq(self, stream_id: str, seq: int) -> None:
        """A rejected message's seq is used up, so later messages do not wait for it."""
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream()
        if seq == stream.next_seq:
            stream.next_seq += 1
            self._release(stream_id, stream)
        elif seq > stream.next_seq:
            stream.held[seq] = _REJECTED

    def _duplicate(
        self, env: Envelope, reply: asyncio.Future[Any] | None, original: asyncio.Future[Any] | None
    ) -> None:
        """Drop a duplicate. An ask gets the original's reply when it is known."""
        self.stats.duplicates += 1
        if reply is None or reply.done():
            return
        if original is not None:
            _chain(original, reply)
        else:
            reply.set_exception(
                MailboxError(f"{env.type!r} to {self.owner!r} is a duplicate of a message "
                             "already accepted; its reply is not available")
            )

    def _admit(self, env: Envelope, reply: asyncio.Future[Any] | None) -> None:
        lane = env.priority if 0 <= env.priority < _LANES else Priority.LOW
        self._lanes[lane].append((env, reply))
        self._size += 1
        if self._getters:
            _wake(self._getters)

    def _release(self, stream_id: str, stream: _Stream) -> None:
        held = stream.held
        while stream.next_seq in held:
            item = held.pop(stream.next_seq)
            stream.next_seq += 1
            if item is not None:
                stream.held_count -= 1
                self._held -= 1
                self._size -= 1
                self._admit(*item)
        if not stream.held_count:
            # Only rejected markers remain; those above next_seq must stay, or the stream
            # would wait for a seq that was refused.
            for passed in [s for s in held if s < stream.next_seq]:
                del held[passed]
            if stream.timer is not None:
                stream.timer.cancel()
                stream.timer = None

    # -- gaps ---------------------------------------------------------------------------------

    def _arm_gap_timer(self, stream_id: str, stream: _Stream) -> None:
        if stream.timer is None:
            loop = asyncio.get_running_loop()
            stream.timer = loop.call_later(self.gap_timeout, self._gap_expired, stream_id)

    def _gap_expired(self, stream_id: str) -> None:
        """The missing messages did not come in time: report the gap and move on."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.timer = None
        pending = [s for s, item in stream.held.items() if item is not None]
        if not pending:
            return
        first_held = min(pending)
        missing = [s for s in range(stream.next_seq, first_held) if s not in stream.held]
        stream.skipped.update(missing)
        self.stats.gaps += 1
        if self._on_gap is not None:
            self._on_gap(stream_id, stream.next_seq, first_held - 1)
        stream.next_seq = first_held
        self._release(stream_id, stream)
        if stream.held_count:
            self._arm_gap_timer(stream_id, stream)

    # -- consumer -----------------------------------------------------------------------------

    async def get(self) -> tuple[Envelope, asyncio.Future[Any] | None]:
        """The next message: system lane first, FIFO within a lane. Raises MailboxClosed."""
        while True:
            item = self._pop()
            if item is not None:
                return item
            if self._closed:
                raise MailboxClosed(self.owner)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()

    def get_nowait(self) -> tuple[Envelope, asyncio.Future[Any] | None] | None:
        """The next message, or None if there is none ready."""
        return self._pop()

    def _pop(self) -> tuple[Envelope, asyncio.Future[Any] | None] | None:
        for lane in self._lanes:
            while lane:
                env, reply = lane.popleft()
                self._size -= 1
                if self._putters:
                    _wake(self._putters)
                if env.deadline is not None and env.expired():
                    self._dead_letter(env, reply, "deadline expired before it was handled")
                    continue
                self.stats.delivered += 1
                return env, reply
        return None

    # -- dead letters and shutdown ------------------------------------------------------------

    def _dead_letter(self, env: Envelope, reply: asyncio.Future[Any] | None, reason: str) -> None:
        self.stats.dead_letters += 1
        if reply is not None and not reply.done():
            reply.set_exception(MailboxError(f"{env.type!r} to {self.owner!r}: {reason}"))
        if self._on_dead_letter is not None:
            self._on_dead_letter(env, reason)

    def close(self, reason: str = "the actor stopped") -> int:
        """Stop accepting; every queued or held message becomes a dead letter. Returns how many."""
        if self._closed:
            return 0
        self._closed = True
        dropped = 0
        for lane in self._lanes:
            while lane:
                self._dead_letter(*lane.popleft(), reason)
                dropped += 1
        for stream in self._streams.values():
            if stream.timer is not None:
                stream.timer.cancel()
            for item in stream.held.values():
                if item is not None:
                    self._dead_letter(*item, reason)
                    dropped += 1
            stream.held.clear()
        self._size = 0
        self._held = 0
        for waiters in (self._getters, self._putters):
            while waiters:
                _wake(waiters)
        return dropped

    # -- snapshots ----------------------------------------------------------------------------

    def positions(self) -> dict[str, int]:
        """The next expected seq of every stream, so that a restarted actor continues them."""
        return {sid: s.next_seq for sid, s in self._streams.items()}

    def restore_positions(self, positions: dict[str, int]) -> None:
        for sid, next_seq in positions.items():
            self._streams.setdefault(sid, _Stream()).next_seq = max(1, int(next_seq))


def _wake(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    def copy(src: asyncio.Future[Any]) -> None:
        if target.done():
            return
        if src.cancelled():
            target.cancel()
        elif (exc := src.exception()) is not None:
            target.set_exception(exc)
        else:
            target.set_result(src.result())

    source.add_done_callback(copy)
