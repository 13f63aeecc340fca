"""ActorBase: the async Ray actor shell every llmspell actor is built on.

A subclass implements `handle(msg)` (and, if it keeps state, `snapshot()` / `restore()`);
`Runtime.spawn` turns it into a named Ray actor. The shell owns the rest:

- `deliver(frames)` (a batch of tells) and `ask(frame)` (one request, resolves to the reply
  frame) are the only ways in. Frames are decoded at this trust boundary; a bad one is refused
  with a clear error and counted, and never disturbs the messages queued behind it.
- A mailbox orders, bounds and deduplicates; `concurrency` consumer tasks handle one message
  each at a time. A handler that raises fails that message (an asker gets RemoteError with the
  type and message), never the actor.
- Lifecycle: on_start, on_stop, on_restart (after Ray restarted a crashed actor, once its last
  snapshot has been restored). Each transition is an event.
- Snapshots go to the state store, so state outlives the process that held it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

import ray

from llmspell.runtime.errors import CodecError, MailboxClosed, MailboxError
from llmspell.runtime.events import Event
from llmspell.runtime.hooks import HookRegistry
from llmspell.runtime.logs import get_logger
from llmspell.runtime.mailbox import Mailbox
from llmspell.runtime.messages import Envelope, Kind, decode, encode
from llmspell.runtime.node import ERROR_TYPE, ActorConfig, Node, error_payload, untracked
from llmspell.runtime.process import settle_gc
from llmspell.runtime.state_client import StateClient

SNAPSHOT_KEY = "__snapshot__"
STOP = "system.stop"


class ActorBase:
    """Base class of llmspell actors. Subclasses override `handle` and the lifecycle hooks."""

    # One of the runtime's own services (its events are bookkeeping: they wait longer in the
    # process for a batch, see RuntimeSettings.service_event_batch_delay_s).
    service: ClassVar[bool] = False

    def __init__(self, config: ActorConfig, args: tuple[Any, ...] = (),
                 kwargs: dict[str, Any] | None = None) -> None:
        self.config = config
        self.address = config.address
        self.job_id = config.job_id
        self.settings = config.settings
        self.node = Node(config.settings, identity=config.address, job_id=config.job_id,
                         service=self.service)
        self.hooks = HookRegistry(emit=self.node.publish_nowait)
        self.state = StateClient(self.node, job_id=config.job_id, hooks=self.hooks)
        self.log = get_logger(actor=self.address, job_id=self.job_id)
        self.bad_frames = 0
        self.handled = 0
        self.mailbox = self._make_mailbox()
        self._started: asyncio.Future[None] | None = None
        self._consumers: list[asyncio.Task[None]] = []
        self._since_snapshot = 0
        self._stopping = False
        self.setup(*args, **(kwargs or {}))
        settle_gc(self.settings.gc_young_threshold)  # after the setup: its objects are frozen too

    def _make_mailbox(self) -> Mailbox:
        s = self.settings
        return Mailbox(
            self.address,
            capacity=int(self.config.extra.get("mailbox_capacity", s.mailbox_capacity)),
            overflow=self.config.extra.get("mailbox_overflow", s.mailbox_overflow),
            gap_timeout=s.gap_timeout_s,
            dedupe_window=s.dedupe_window,
            on_dead_letter=self._dead_letter,
            on_gap=self._gap,
        )

    # -- to override --------------------------------------------------------------------------

    def setup(self, *args: Any, **kwargs: Any) -> None:
        """Take the arguments given to `Runtime.spawn` (runs in the actor's constructor)."""

    async def handle(self, msg: Envelope) -> Any:
        """Handle one message; the return value is the reply to an ask."""
        raise NotImplementedError(f"{type(self).__name__} does not handle {msg.type!r}")

    async def on_event(self, event: Event) -> None:
        """Handle an event from a subscription made with `Runtime.subscribe_actor`."""

    async def on_start(self) -> None:
        """Called once before the first message of a fresh actor."""

    async def on_restart(self) -> None:
        """Called instead of on_start after Ray restarted this actor and its snapshot is back."""

    async def on_stop(self) -> None:
        """Called when the actor is stopped gracefully, after its mailbox closed."""

    async def on_standby(self) -> None:
        """Called once in a warm standby, long before it may take over: load now what the
        first message would load (SDKs imported on first use, clients). No messages, no
        snapshot and no effects: the child it stands by for is alive."""

    def snapshot(self) -> Any:
        """State to carry across a restart (plain data); None keeps nothing."""
        return None

    def restore(self, snapshot: Any) -> None:
        """Take back what `snapshot()` returned before the restart."""

    # -- helpers for subclasses ---------------------------------------------------------------

    async def publish(self, topic: str, payload: Any = None) -> None:
        await self.node.publish(topic, payload)

    async def checkpoint(self) -> None:
        """Save a snapshot now (user state and stream positions)."""
        await self.state.set(self._snapshot_key(), {
            "user": self.snapshot(),
            "streams": self.mailbox.positions(),
        }, run_hooks=False)  # the runtime's own bookkeeping is not a user's state write
        self._since_snapshot = 0

    def _snapshot_key(self) -> str:
        return f"agent:{self.address}:{SNAPSHOT_KEY}"

    # -- lifecycle ----------------------------------------------------------------------------

    async def _ensure_started(self) -> None:
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            try:
                await self._start()
                self._started.set_result(None)
            except BaseException as exc:
                self._started.set_exception(exc)
                raise
        elif not self._started.done():
            await asyncio.shield(self._started)

    async def _start(self) -> None:
        # A replacement started by a supervisor (a fresh actor under the old name) restores the
        # last snapshot just as a process Ray restarted does.
        restarted = (ray.get_runtime_context().was_current_actor_reconstructed
                     or bool(self.config.extra.get("restore")))
        if restarted:
            saved = await self.state.get(self._snapshot_key())
            if isinstance(saved, dict):
                self.mailbox.restore_positions(saved.get("streams") or {})
                self.restore(saved.get("user"))
            await self.on_restart()
            await self.publish("actor.restarted", {"pid": os.getpid()})
        else:
            await self.on_start()
            await self.publish("actor.started", {"pid": os.getpid()})
        loop = asyncio.get_running_loop()
        self._consumers = [
            loop.create_task(self._consume(), name=f"{self.address}:consumer{i}")
            for i in range(max(1, self.config.concurrency))
        ]

    async def _consume(self) -> None:
        while True:
            try:
                env, reply = await self.mailbox.get()
            except MailboxClosed:
                return
            await self._handle_one(env, reply)

    async def _handle_one(self, env: Envelope, reply: asyncio.Future[Any] | None) -> None:
        is_event = env.type == "event" and env.kind == Kind.TELL
        try:
            if is_event:
                await self.on_event(Event.from_wire(env.payload))
                result = None
            else:
                result = await self.handle(env)
        except Exception as exc:  # a handler's failure fails its message, not the actor
            if reply is not None and not reply.done():
                reply.set_exception(exc)
            else:
                self.log.warning("tell failed", type=env.type, error=repr(exc))
            await self.publish("actor.message.failed", {
                "type": env.type, "id": env.id, "error_type": type(exc).__name__,
                "error": str(exc)[:1000],
            })
        else:
            if reply is not None and not reply.done():
                reply.set_result(result)
            if not is_event:  # an event about handling an event would feed back forever
                self.node.publish_nowait("actor.message.handled",
                                         {"type": env.type, "seq": env.seq})
        self.handled += 1
        if self.config.snapshot_every:
            self._since_snapshot += 1
            if self._since_snapshot >= self.config.snapshot_every:
                await self.checkpoint()

    def _dead_letter(self, env: Envelope, reason: str) -> None:
        self.node.publish_nowait("deadletter", {
            "recipient": self.address, "sender": env.sender, "type": env.type, "id": env.id,
            "reason": reason,
        })

    def _gap(self, stream: str, first: int, last: int) -> None:
        self.log.warning("sequence gap skipped", stream=stream, first=first, last=last)
        self.node.publish_nowait("mailbox.gap", {
            "recipient": self.address, "stream": stream, "first": first, "last": last,
        })

    # -- the Ray-facing methods ---------------------------------------------------------------

    @untracked
    async def deliver(self, frames: list[bytes]) -> dict[str, Any]:
        """Take a batch of tells. Returns how many were accepted and the errors of the rest."""
        await self._ensure_started()
        accepted, errors = 0, []
        for index, frame in enumerate(frames):
            try:
                env = decode(frame, max_bytes=self.settings.max_frame_bytes)
                if await self.mailbox.put(env):
                    accepted += 1
            except (CodecError, MailboxError) as exc:
                errors.append({"index": index, "error_type": type(exc).__name__,
                               "error": str(exc)})
                if isinstance(exc, CodecError):
                    self._refuse_frame(exc)
        return {"accepted": accepted, "errors": errors}

    @untracked
    async def ask(self, frame: bytes) -> bytes:
        """Take one request; resolves to the reply frame (an error frame if it failed)."""
        return await self._ask(frame, self.settings.max_frame_bytes)

    @untracked
    async def ask_large(self, frame: bytes) -> bytes:
        """`ask` for a request, and its reply, up to `max_run_bytes` (Node.ask's `large`)."""
        return await self._ask(frame, self.settings.max_run_bytes)

    async def _ask(self, frame: bytes, cap: int) -> bytes:
        await self._ensure_started()
        try:
            env = decode(frame, max_bytes=cap)
        except CodecError as exc:
            self._refuse_frame(exc)
            return self._error_frame(Envelope(type="?", kind=Kind.ASK, recipient=self.address),
                                     exc)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            await self.mailbox.put(env, reply)
            result = await reply
        except Exception as exc:
            return self._error_frame(env, exc)
        try:
            return encode(env.reply(result), max_bytes=cap)
        except CodecError as exc:
            return self._error_frame(env, exc)

    def _error_frame(self, env: Envelope, exc: BaseException) -> bytes:
        return encode(env.reply(error_payload(exc), type=ERROR_TYPE))

    def _refuse_frame(self, exc: CodecError) -> None:
        self.bad_frames += 1
        self.log.warning("frame refused", reason=exc.reason, error=str(exc))
        self.node.publish_nowait("deadletter", {
            "recipient": self.address, "reason": f"bad frame: {exc}", "code": exc.reason,
        })

    @untracked
    async def ping(self) -> dict[str, Any]:
        if not self.config.extra.get("standby"):
            await self._ensure_started()
        stats = self.mailbox.stats
        return {
            "address": self.address, "job_id": self.job_id, "pid": os.getpid(),
            "handled": self.handled, "queued": len(self.mailbox), "bad_frames": self.bad_frames,
            "mailbox": {
                "accepted": stats.accepted, "rejected": stats.rejected,
                "duplicates": stats.duplicates, "dead_letters": stats.dead_letters,
                "gaps": stats.gaps, "late_asks": stats.late_asks, "delivered": stats.delivered,
            },
        }

    async def warm(self) -> dict[str, Any]:
        """A warm standby's preparation (`on_standby`), then its ping."""
        if self.config.extra.get("standby"):
            await self.on_standby()
        return await self.ping()

    async def promote(self) -> dict[str, Any]:
        """A warm standby takes over its address: it restores the last snapshot (as any
        replacement does) and starts. Until then it only answers pings, unstarted."""
        self.config.extra["standby"] = False
        return await self.ping()

    async def stop(self, reason: str = "stopped") -> int:
        """Stop gracefully: refuse new messages, finish the current ones, save a snapshot,
        call on_stop. Messages still queued become dead letters. Returns how many."""
        if self._stopping:
            return 0
        self._stopping = True
        if self.config.extra.get("standby"):
            # A spare never started: it has no messages and must not write a snapshot over
            # the one of the child it stands by for.
            await self.node.close()
            return 0
        await self._ensure_started()
        dropped = self.mailbox.close(reason)
        await asyncio.gather(*self._consumers, return_exceptions=True)
        try:
            await self.checkpoint()
            await self.on_stop()
        finally:
            await self.publish("actor.stopped", {"reason": reason, "dead_letters": dropped})
            await self.node.close()
        return dropped

    async def watch(self) -> None:
        """Never returns while this process lives: a supervisor awaits it, and Ray fails the
        call the moment the process dies, which is how the death is noticed at once."""
        await asyncio.Event().wait()

    async def flush(self) -> None:
        """Wait until this actor's outgoing tells and events have left the process."""
        await self.node.flush()
