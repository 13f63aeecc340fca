"""`State`: the job's state store by scoped key (app:, job:, agent:<name>:, temp:).

    State.set("job:plan", {steps = 3})
    local v = State.get_versioned("job:counter")     -- {value = ..., version = n} or nil
    State.compare_and_set("job:counter", v.value + 1, v.version)  -- error if it moved

Writes go through the spell's state_write hooks, as a Python StateClient's do. A lost
compare-and-set raises `VersionConflict: ...` (catch it with pcall and read again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmspell.spells.bridges._base import later
from llmspell.spells.context import SpellContext
from llmspell.spells.values import from_lua, plain

__all__ = ["exports"]


def exports(spell: SpellContext) -> dict[str, Callable[..., Any]]:
    state = spell.state

    async def state_get(key: Any) -> Any:
        return plain(await state.get(str(key)))

    async def state_get_versioned(key: Any) -> dict[str, Any] | None:
        found = await state.get_versioned(str(key))
        return None if found is None else {"value": plain(found.value),
                                           "version": found.version}

    async def state_set(key: Any, value: Any) -> int:
        return await state.set(str(key), from_lua(value))

    async def state_cas(key: Any, value: Any, expected: Any) -> int:
        return await state.compare_and_set(str(key), from_lua(value),
                                           None if expected is None else int(expected))

    async def state_delete(key: Any) -> bool:
        return await state.delete(str(key))

    async def state_list(prefix: Any) -> dict[str, Any]:
        return {k: {"value": plain(v.value), "version": v.version}
                for k, v in (await state.list(str(prefix or ""))).items()}

    return {"state_get": later(spell, state_get),
            "state_get_versioned": later(spell, state_get_versioned),
            "state_set": later(spell, state_set), "state_cas": later(spell, state_cas),
            "state_delete": later(spell, state_delete), "state_list": later(spell, state_list)}
