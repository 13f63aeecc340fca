"""The bridges behind the spell globals, one module per global (or small family of globals).

Each bridge exports plain Python functions that the prelude (llmspell/spells/prelude.py) wraps
into the Lua globals. They only translate: Lua tables to Python arguments, the Python API's
results back to tables. Nothing here reimplements agents, tools, workflows or hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmspell.spells.context import SpellContext

__all__ = ["bridge_functions"]


def bridge_functions(spell: SpellContext) -> dict[str, Any]:
    """Every bridge function (and the job id), by the name the prelude uses."""
    from llmspell.spells.bridges import agents, basics, events, flows, hooks, state, tools

    exporters: list[Callable[[SpellContext], dict[str, Any]]] = [
        agents.exports, tools.exports, flows.exports, hooks.exports, events.exports,
        state.exports, basics.exports]
    functions: dict[str, Any] = {}
    for exports in exporters:
        functions.update(exports(spell))
    return functions
