"""`JSON`, `Log` and `Spell` (concurrency: all, sleep, timeout). `Args` is set by the runner.

    local a, b = table.unpack(Spell.all{
      function() return scout:run("Ray") end,
      function() return scout2:run("Dask") end})           -- both at once, results in order
    local ok, err = pcall(Spell.timeout, 2, function() return slow:run("x") end)
    -- ok == false, err == "timeout: ..."
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from llmspell.spells.bridges._base import later, now
from llmspell.spells.context import SpellContext
from llmspell.spells.values import from_lua, is_lua_function, is_lua_table, plain

__all__ = ["exports"]

_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "error": "error"}


def exports(spell: SpellContext) -> dict[str, Any]:
    def json_encode(value: Any) -> str:
        return json.dumps(plain(from_lua(value)), ensure_ascii=False)

    def json_decode(text: Any) -> Any:
        return json.loads(str(text))

    def log(level: str, message: Any, fields: Any) -> None:
        extra = from_lua(fields) if fields is not None else {}
        extra = extra if isinstance(extra, dict) else {"fields": extra}
        getattr(spell.log, _LEVELS[level])(str(message), **plain(extra))

    async def spell_all(fns: Any) -> list[Any]:
        items = from_lua(fns) if is_lua_table(fns) else None
        if not isinstance(items, list) or not all(is_lua_function(f) for f in items):
            raise TypeError("Spell.all takes a list of functions: Spell.all{f1, f2, ...}")
        # One task per function; the first error cancels the others and is raised.
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(spell.scheduler.first(f)) for f in items]
        except BaseExceptionGroup as errors:
            raise errors.exceptions[0] from None
        return [task.result() for task in tasks]

    async def spell_sleep(seconds: Any) -> None:
        await asyncio.sleep(float(seconds))

    async def spell_timeout(seconds: Any, fn: Any) -> Any:
        if not is_lua_function(fn):
            raise TypeError("Spell.timeout(seconds, fn): fn must be a function")
        try:
            async with asyncio.timeout(float(seconds)):
                return await spell.scheduler.first(fn)
        except TimeoutError:
            raise TimeoutError(f"the function took longer than {float(seconds):g}s") from None

    return {"json_encode": now(spell, json_encode), "json_decode": now(spell, json_decode),
            "log": now(spell, log), "spell_all": later(spell, spell_all),
            "spell_sleep": later(spell, spell_sleep),
            "spell_timeout": later(spell, spell_timeout),
            "spell_clock": now(spell, time.monotonic), "job_id": spell.job_id}
