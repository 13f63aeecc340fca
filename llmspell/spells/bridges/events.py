"""`Event`: publish to the job's event stream, subscribe with patterns, iterate or call back.

    Event.publish("spell.progress", {done = 3})
    local sub = Event.subscribe("agent.tool.*")
    local ev = sub:next(5)                 -- nil after 5 s without an event
    for ev in sub:iter(1) do ... end       -- until 1 s passes without one
    Event.on("agent.run.finished", function(ev) Log.info(ev.payload.agent) end)

Subscriptions see the spell's job (every agent it started, in any actor) unless
`{all_jobs = true}`; they are closed when the spell ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from llmspell.runtime.events import Event
from llmspell.runtime.runtime import RemoteSubscription
from llmspell.spells.bridges._base import later
from llmspell.spells.context import SpellContext
from llmspell.spells.values import from_lua, is_lua_function, plain, to_lua

__all__ = ["event_table", "exports"]


def event_table(event: Event) -> dict[str, Any]:
    return {"topic": event.topic, "payload": plain(event.payload), "job_id": event.job_id,
            "sender": event.sender, "seq": event.seq, "ts": event.ts}


def exports(spell: SpellContext) -> dict[str, Callable[..., Any]]:
    async def subscribe(pattern: Any, options: Any) -> RemoteSubscription:
        opts = from_lua(options) or {}
        sub = await spell.runtime.subscribe(
            str(pattern), job_id=None if opts.get("all_jobs") else spell.job_id)
        spell.on_close(sub.close)
        return sub

    async def event_publish(topic: Any, payload: Any) -> None:
        await spell.runtime.publish(str(topic), plain(from_lua(payload)), job_id=spell.job_id)

    async def event_subscribe(pattern: Any, options: Any) -> dict[str, Any]:
        return spell.ref(await subscribe(pattern, options), kind="subscription")

    async def sub_next(this: Any, timeout: Any) -> dict[str, Any] | None:
        sub: RemoteSubscription = spell.deref(this, RemoteSubscription)
        try:
            return event_table(await sub.next(float(timeout) if timeout is not None
                                              else 3600.0))
        except (TimeoutError, StopAsyncIteration):
            return None

    async def sub_close(this: Any) -> None:
        sub: RemoteSubscription = spell.deref(this, RemoteSubscription)
        await sub.close()

    async def event_on(pattern: Any, fn: Any, options: Any) -> dict[str, Any]:
        if not is_lua_function(fn):
            raise TypeError("Event.on(pattern, fn): fn must be a function")
        sub = await subscribe(pattern, options)

        async def deliver() -> None:
            async for event in sub:
                # A failing callback is logged and the next event still delivered.
                with contextlib.suppress(Exception):
                    await spell.scheduler.call(fn, to_lua(spell.lua, event_table(event)))

        spell.spawn(deliver(), f"Event.on {pattern}")
        return spell.ref(sub, kind="subscription")

    return {"event_publish": later(spell, event_publish),
            "event_subscribe": later(spell, event_subscribe),
            "event_on": later(spell, event_on), "sub_next": later(spell, sub_next),
            "sub_close": later(spell, sub_close)}
