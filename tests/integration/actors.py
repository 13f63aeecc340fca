"""Actors used by the integration tests (importable by Ray's worker processes)."""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

from llmspell import ActorBase, Envelope, Event


class Recorder(ActorBase):
    """Records what it handles: (stream sender, payload) in handling order."""

    def setup(self, delay: float = 0.0) -> None:
        self.seen: list[Any] = []
        self.events: list[dict[str, Any]] = []
        self.delay = delay

    async def handle(self, msg: Envelope) -> Any:
        if msg.type == "dump":
            return self.seen
        if msg.type == "events":
            return self.events
        if msg.type == "fail":
            raise KeyError(f"no such thing: {msg.payload}")
        if msg.type == "sleep":
            await asyncio.sleep(float(msg.payload))
            return "slept"
        if msg.type == "pid":
            return os.getpid()
        if msg.type == "gc":
            return {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
        if self.delay:
            await asyncio.sleep(self.delay)
        self.seen.append([msg.sender, msg.payload])
        return len(self.seen)

    async def on_event(self, event: Event) -> None:
        self.events.append(event.to_dict())


class Sender(ActorBase):
    """Sends `count` numbered tells to a target, then answers how many it sent."""

    async def handle(self, msg: Envelope) -> Any:
        if msg.type == "send":
            target, count = msg.payload["target"], msg.payload["count"]
            for i in range(count):
                await self.node.tell(target, "item", i)
                if i % 97 == 0:
                    await asyncio.sleep(0)  # interleave with the other senders
            await self.node.flush()
            return count
        if msg.type == "ask_peer":
            return await self.node.ask(msg.payload["target"], msg.payload["type"],
                                       msg.payload.get("payload"))
        raise ValueError(msg.type)


class Counter(ActorBase):
    """Keeps a count in its snapshot, checkpointed after every change."""

    def setup(self) -> None:
        self.count = 0
        self.restarts = 0

    async def handle(self, msg: Envelope) -> Any:
        if msg.type == "add":
            self.count += int(msg.payload)
            await self.checkpoint()
            return self.count
        if msg.type == "get":
            return {"count": self.count, "restarts": self.restarts, "pid": os.getpid()}
        raise ValueError(msg.type)

    async def on_restart(self) -> None:
        self.restarts += 1

    def snapshot(self) -> Any:
        return {"count": self.count, "restarts": self.restarts}

    def restore(self, snapshot: Any) -> None:
        if snapshot:
            self.count = snapshot["count"]
            self.restarts = snapshot["restarts"]


class Guarded(ActorBase):
    """Writes state through hooks that refuse some keys and rewrite some values."""

    def setup(self) -> None:
        from llmspell.runtime.hooks import Cancel, HookContext, Modify

        def guard(ctx: HookContext) -> Cancel | Modify | None:
            if ctx.payload["key"].endswith("secret"):
                return Cancel("secrets are not written to shared state")
            if ctx.payload["key"] == "job:name":
                return Modify({**ctx.payload, "value": str(ctx.payload["value"]).upper()})
            return None

        self.hooks.register("before_state_write", guard, name="guard")

    async def handle(self, msg: Envelope) -> Any:
        if msg.type == "write":
            return await self.state.set(msg.payload["key"], msg.payload["value"])
        if msg.type == "read":
            return await self.state.get(msg.payload)
        raise ValueError(msg.type)


class LimitedCaller(ActorBase):
    """Acquires a shared rate limit and reports when each grant came."""

    async def handle(self, msg: Envelope) -> Any:
        import time

        from llmspell.llm.ratelimit import Limits, SharedRateLimiter, limiter_service

        p = msg.payload
        limiter = SharedRateLimiter(p["key"], Limits(p["rpm"], None, p["window"]),
                                    limiter_service(self.settings.namespace))

        async def one() -> float:
            await limiter.acquire()
            return time.time()

        return list(await asyncio.gather(*(one() for _ in range(p["calls"]))))


class LLMCaller(ActorBase):
    """Calls a model through `LLM` with a rate limit shared by every actor of the runtime:
    `calls` calls at once against an OpenAI-compatible server, answers in order."""

    async def handle(self, msg: Envelope) -> Any:
        from llmspell.llm.client import LLM, Limiters
        from llmspell.llm.openai_provider import OpenAIProvider
        from llmspell.llm.ratelimit import Limits, RateLimiter, SharedRateLimiter, limiter_service
        from llmspell.llm.registry import ProviderRegistry, ProviderSettings
        from llmspell.llm.types import LLMRequest, Message

        p = msg.payload
        provider = OpenAIProvider(name="limited", api="chat", api_key="k", base_url=p["url"])
        registry = ProviderRegistry()
        registry.register("limited", provider,
                          ProviderSettings(requests_per_minute=p["rpm"]))
        # The limiter Limiters makes for these settings, with the test's short window instead
        # of a minute (settings have no window: real limits are per minute).
        shared = SharedRateLimiter(p["key"], Limits(p["rpm"], None, p["window"]),
                                   limiter_service(self.settings.namespace))

        class ShortWindow(Limiters):
            def get(self, name: str) -> RateLimiter | SharedRateLimiter | None:
                return shared if name == "limited" else super().get(name)

        llm = LLM(registry=registry, limiters=ShortWindow(registry), publish=self.publish,
                  job_id=self.job_id, caller=self.address)
        # One unlimited call first, so that the SDK's first-call setup (a connection, its
        # platform headers) does not delay a limited request between its grant and its send.
        await provider.complete(LLMRequest(model="m", messages=[Message.user("warm-up")]))

        async def one(i: int) -> str:
            response = await llm.complete("limited:m", [Message.user(f"{p['name']}-{i}")])
            return response.text

        return list(await asyncio.gather(*(one(i) for i in range(p["calls"]))))


class PoolCaller(ActorBase):
    """Calls a pool's tool from a process of its own: a lease holder other than the driver."""

    async def handle(self, msg: Envelope) -> Any:
        from llmspell.actors.pool import PoolExecutor
        from llmspell.tools import ToolContext
        from tests.integration import pool_tools

        if msg.type != "call":
            raise ValueError(f"PoolCaller does not handle {msg.type!r}")
        call = msg.payload
        tool = getattr(pool_tools, call["tool"])
        return await PoolExecutor(call["pool"], self.node).execute(
            tool, call["args"], ToolContext(idempotency_key=call.get("key")))
