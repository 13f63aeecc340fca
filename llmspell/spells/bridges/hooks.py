"""`Hook`: Lua functions as hooks, with the same points, order and results as Python hooks.

    Hook.register("before_tool_call", function(ctx)
      if ctx.payload.tool == "shell" then return Hook.cancel("no shell") end
    end, {priority = 10})

A Lua hook is registered in the spell's HookRegistry, so it fires at driver-side points (tool
calls from the spell, workflow steps, delegations, handoffs, state writes) in priority order
among Python hooks. At the points that fire inside agents (agent_run, llm_call, tool_call,
stream deltas, errors, retries) it is also installed in each agent host the spell starts,
through the relay. Its function gets a table {point, payload, job_id, actor, target, attempt,
error} and returns nothing (continue) or one of Hook.continue(), modify(value),
replace(value), cancel(reason), retry(after) or redirect(target).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from llmspell.llm.types import Message, Response
from llmspell.runtime.hooks import (
    Cancel,
    Continue,
    HookContext,
    HookPoint,
    HookResult,
    Modify,
    Redirect,
    Registration,
    Replace,
    Retry,
)
from llmspell.spells.bridges._base import now
from llmspell.spells.context import SpellContext
from llmspell.spells.hosts import AGENT_POINTS
from llmspell.spells.values import from_lua, is_lua_function, plain

__all__ = ["LuaHook", "exports", "hook_result"]

_LLM_POINTS = (HookPoint.before_llm_call, HookPoint.after_llm_call)


class LuaHook:
    """A Lua function as a hook (sync to the registry's eye: an async callable)."""

    def __init__(self, spell: SpellContext, fn: Any, number: int, name: str) -> None:
        self.spell, self.fn, self.number = spell, fn, number
        self.__qualname__ = name

    async def __call__(self, ctx: HookContext) -> HookResult | None:
        table = {"point": str(ctx.point), "payload": plain(ctx.payload), "job_id": ctx.job_id,
                 "actor": ctx.actor, "target": ctx.target, "attempt": ctx.attempt,
                 "error": None if ctx.error is None else str(ctx.error)}
        answer = await self.spell.scheduler.first(
            self.fn, self.spell.lua.table_from(table, recursive=True))
        return hook_result(ctx.point, ctx.payload, from_lua(answer))


def hook_result(point: HookPoint, payload: Any, answer: Any) -> HookResult | None:
    """What a Lua hook returned, as the HookResult a Python hook would return."""
    if answer is None:
        return None
    if not isinstance(answer, dict) or "__hook" not in answer:
        raise TypeError("a hook returns nothing or one of Hook.continue(), Hook.modify(v), "
                        "Hook.replace(v), Hook.cancel(reason), Hook.retry(after), "
                        "Hook.redirect(target)")
    kind = answer["__hook"]
    if kind == "continue":
        return Continue()
    if kind == "modify":
        return Modify(_like(payload, answer.get("value")))
    if kind == "replace":
        return Replace(_replacement(point, payload, answer.get("value")))
    if kind == "cancel":
        return Cancel(str(answer.get("reason", "cancelled")))
    if kind == "retry":
        return Retry(float(answer.get("after", 0)))
    if kind == "redirect":
        return Redirect(str(answer["target"]))
    raise TypeError(f"unknown hook result {kind!r}")


def _like(original: Any, value: Any) -> Any:
    """A modified payload, of the type the operation expects (a model stays a model)."""
    value = _shaped(plain(original), value)
    if isinstance(original, BaseModel) and isinstance(value, dict):
        return type(original).model_validate(value)
    return value


def _shaped(original: Any, value: Any) -> Any:
    """`value` with the empty tables that were lists in `original` made lists again (Lua has
    one empty table for both)."""
    if isinstance(original, list):
        if value == {}:
            return []
        if isinstance(value, list) and original:
            return [_shaped(original[min(i, len(original) - 1)], v)
                    for i, v in enumerate(value)]
    if isinstance(original, dict) and isinstance(value, dict):
        return {k: _shaped(original[k], v) if k in original else v for k, v in value.items()}
    return value


def _replacement(point: HookPoint, payload: Any, value: Any) -> Any:
    """A Replace value: a model call's replacement is a Response (text is enough)."""
    if point in _LLM_POINTS:
        if isinstance(value, str):
            return Response(message=Message.assistant(value))
        return Response.model_validate(value)
    return _like(payload, value) if point.value.startswith("after_") else value


def exports(spell: SpellContext) -> dict[str, Callable[..., Any]]:
    hooks: dict[int, LuaHook] = {}

    def hook_register(point: Any, fn: Any, options: Any) -> dict[str, Any]:
        hook_point = HookPoint(str(point)) if str(point) in HookPoint.__members__ else None
        if hook_point is None:
            raise ValueError(f"unknown hook point {point!r}; points: "
                             f"{', '.join(p.value for p in HookPoint)}")
        if not is_lua_function(fn):
            raise TypeError("Hook.register(point, fn, opts): fn must be a function")
        opts = from_lua(options) or {}
        number = len(hooks) + 1
        name = str(opts.get("name") or f"lua_hook_{number}")
        hook = hooks[number] = LuaHook(spell, fn, number, name)
        reg = spell.hooks.register(hook_point, hook, priority=int(opts.get("priority", 0)),
                                   timeout=float(opts["timeout"]) if "timeout" in opts
                                   else None, name=name)
        if hook_point in AGENT_POINTS and spell.hosts.started and \
                hook_point not in spell.hosts.hosted_points:
            spell.log.warning("a hook registered after the spell's agents started applies to "
                              "agents created after it", point=str(hook_point), hook=name)
        return spell.ref(reg, name=name, kind="hook")

    def hook_remove(this: Any) -> None:
        reg: Registration = spell.deref(this, Registration)
        reg.remove()

    async def serve(key: str, payload: Any, info: dict[str, Any]) -> HookResult | None:
        """A relayed hook, from an agent host: the same Lua hook, with the host's context."""
        ctx = HookContext(point=HookPoint(info["point"]), payload=payload,
                          job_id=info.get("job_id"), actor=info.get("actor"),
                          target=info.get("target"), attempt=int(info.get("attempt", 0)),
                          error=RuntimeError(info["error"]) if info.get("error") else None)
        return await hooks[int(key)](ctx)

    async def serve_batch(key: str, payload: Any, info: dict[str, Any]) -> None:
        """Stream deltas from an agent host, in order (their hooks' results are ignored, as
        the agent loop ignores a Python delta hook's): a failing hook is logged, the next
        delta still delivered."""
        for number, value, context in payload:
            try:
                await serve(number, value, context)
            except Exception as exc:
                spell.log.warning("a Lua on_stream_delta hook failed", hook=number,
                                  error=repr(exc))

    spell.handlers["hook"] = serve
    spell.handlers["hooks"] = serve_batch
    return {"hook_register": now(spell, hook_register), "hook_remove": now(spell, hook_remove),
            "hook_points": now(spell, lambda: [p.value for p in HookPoint])}
