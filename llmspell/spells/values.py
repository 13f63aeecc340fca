"""Values across the Lua boundary: Python data to Lua tables and back.

Only plain data crosses: nil, booleans, numbers, strings and tables. A Python object never
reaches Lua (the bridges keep objects on the Python side and hand Lua a numbered reference);
a Lua function comes back to Python as itself, for the bridges that take callbacks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["from_lua", "is_lua_function", "is_lua_table", "plain", "to_lua"]

_MAX_DEPTH = 100  # a table that contains itself must not recurse forever


def is_lua_table(value: Any) -> bool:
    return type(value).__name__ == "_LuaTable"


def is_lua_function(value: Any) -> bool:
    return type(value).__name__ == "_LuaFunction"


def plain(value: Any) -> Any:
    """Python data made of dicts, lists and scalars only (models as their JSON data); Lua
    values inside are left as they are."""
    if is_lua_table(value) or is_lua_function(value):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.loads(json.dumps(value, default=str))


def to_lua(lua: Any, value: Any) -> Any:
    """A Python value as a Lua value (dicts and lists become tables, recursively); Lua values
    pass through."""
    if is_lua_table(value) or is_lua_function(value):
        return value
    value = plain(value)
    if isinstance(value, dict | list):
        return lua.table_from(value, recursive=True)
    return value


def from_lua(value: Any, depth: int = 0) -> Any:
    """A Lua value as Python data: a table with keys 1..n is a list, other tables are dicts
    (an empty table is an empty dict). Lua functions are returned as they are."""
    if not is_lua_table(value):
        return value
    if depth > _MAX_DEPTH:
        raise ValueError("table nested too deeply (or containing itself)")
    items = list(value.items())
    keys = [k for k, _ in items]
    if keys and all(isinstance(k, int) and not isinstance(k, bool) for k in keys) and \
            sorted(keys) == list(range(1, len(keys) + 1)):
        return [from_lua(v, depth + 1) for _, v in sorted(items, key=lambda kv: kv[0])]
    return {str(k): from_lua(v, depth + 1) for k, v in items}
