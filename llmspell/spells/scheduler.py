"""Lua coroutines driven from asyncio: a spell waits without blocking the runtime.

Every piece of Lua the driver runs (the spell's body, a hook, a Lua tool, a workflow step, an
event callback) runs in a coroutine of its own. A bridge function that has to wait (an agent
run, a tool call) starts the work as an asyncio task and returns an operation number; the
prelude yields it. `Scheduler.call` awaits that task, then resumes the coroutine with
`true, result` or `false, message`, which the prelude turns into a Lua error (catchable with
pcall). Lua itself only ever runs on the event loop's thread, one coroutine at a time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from lupa import lua54

from llmspell.runtime.errors import AskTimeout, Cancelled, HookCancelled
from llmspell.spells.errors import SpellLimitExceeded, SpellRunFailed, SpellRuntimeError
from llmspell.spells.sandbox import LuaSandbox
from llmspell.spells.values import to_lua

__all__ = ["Scheduler", "error_message"]

# Lines of a traceback that are the runtime's, not the spell's.
_INTERNAL = ("[C]:", '[string "<python>"]', "llmspell:", "(...tail calls...)")


def error_message(exc: BaseException) -> str:
    """How a Python error reads in Lua: a kind a spell can test for, then the detail."""
    if isinstance(exc, SpellRuntimeError):
        return exc.message
    if isinstance(exc, SpellRunFailed):
        return str(exc)
    if isinstance(exc, AskTimeout | TimeoutError):
        return f"timeout: {exc}" if str(exc) else "timeout"
    if isinstance(exc, HookCancelled | Cancelled | asyncio.CancelledError):
        return f"cancelled: {exc}" if str(exc) else "cancelled"
    return f"{type(exc).__name__}: {exc}"


class Scheduler:
    def __init__(self, box: LuaSandbox) -> None:
        self.box = box
        self._ops: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)

    def start(self, work: Awaitable[Any]) -> int:
        """Start `work` for the coroutine that is running now; the number it yields."""
        op = next(self._ids)
        self._ops[op] = asyncio.ensure_future(work)
        return op

    async def call(self, fn: Any, *args: Any) -> tuple[Any, ...]:
        """Run the Lua function `fn(*args)` in a new coroutine to its end; its return values.
        A Lua error it does not catch raises SpellRuntimeError with its traceback."""
        internals = self.box.internals
        thread = internals.spawn(fn)
        send: tuple[Any, ...] = args
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                try:
                    out = internals.step(thread, *send)
                except lua54.LuaMemoryError:
                    # Out of memory while reporting the error itself (its traceback).
                    out = ("error", "not enough memory", "")
                out = out if isinstance(out, tuple) else (out,)
                if out[0] == "done":
                    return out[1:]
                if out[0] == "error":
                    raise self._error(str(out[1]), str(out[2]))
                pending = self._ops.pop(int(out[1]))
                send = await self._settle(pending)
                pending = None
        finally:
            internals.drop(thread)
            if pending is not None and not pending.done():
                pending.cancel()

    async def _settle(self, op: asyncio.Future[Any]) -> tuple[Any, ...]:
        """Wait for an operation; what the coroutine is resumed with."""
        try:
            value = await asyncio.shield(op)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                op.cancel()  # the spell itself is being cancelled: so is its work
                raise
            return False, error_message(Cancelled("the operation was cancelled"))
        except Exception as exc:
            return False, error_message(exc)
        return True, to_lua(self.box.lua, value)

    def _error(self, message: str, traceback: str) -> SpellRuntimeError:
        frames = traceback.partition("\nstack traceback:\n")[2].splitlines()
        lines = [line for line in frames if not line.strip().startswith(_INTERNAL)]
        tb = "\n".join(["stack traceback:", *lines]) if lines else ""
        if self.box.exceeded():
            return SpellLimitExceeded(
                f"instruction limit exceeded: the spell ran more than "
                f"{self.box.limits.max_instructions:,} Lua instructions (at {message})", tb)
        if message.endswith("not enough memory"):
            return SpellLimitExceeded(
                f"memory limit exceeded: the spell used more than "
                f"{self.box.limits.max_memory_mb:g} MB", tb)
        return SpellRuntimeError(message, tb)

    async def first(self, fn: Any, *args: Any) -> Any:
        """`call`, keeping only the first return value."""
        values = await self.call(fn, *args)
        return values[0] if values else None

    def callback(self, fn: Any, convert: Callable[[Any], Any]) -> Callable[..., Awaitable[Any]]:
        """An async Python function that runs the Lua function `fn` (its arguments converted
        with `convert`) and returns its first result, for the bridges that take callbacks."""
        async def run(*args: Any) -> Any:
            return await self.first(fn, *(convert(a) for a in args))

        return run
