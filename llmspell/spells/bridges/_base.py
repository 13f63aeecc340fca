"""How a bridge function answers Lua: `ok, value` at once, or `ok, operation` to wait for."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from llmspell.spells.context import SpellContext
from llmspell.spells.scheduler import error_message
from llmspell.spells.values import to_lua

__all__ = ["later", "now"]


def now(spell: SpellContext, fn: Callable[..., Any]) -> Callable[..., tuple[bool, Any]]:
    """A bridge function that answers at once: (True, the value in Lua) or (False, message)."""
    def bridge(*args: Any) -> tuple[bool, Any]:
        try:
            return True, to_lua(spell.lua, fn(*args))
        except Exception as exc:
            return False, error_message(exc)

    return bridge


def later(spell: SpellContext, fn: Callable[..., Awaitable[Any]]
          ) -> Callable[..., tuple[bool, Any]]:
    """A bridge function whose work takes time: it starts `fn(*args)` and returns the
    operation the prelude waits for. Argument errors raised before the first await still
    reach Lua at the calling line."""
    def bridge(*args: Any) -> tuple[bool, Any]:
        try:
            return True, spell.scheduler.start(fn(*args))
        except Exception as exc:
            return False, error_message(exc)

    return bridge
