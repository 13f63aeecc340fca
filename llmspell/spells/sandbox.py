"""The Lua state a spell runs in: Lua 5.4 (lupa) with the dangerous parts taken out.

What a spell cannot do, and how:
- reach Python: no `python` table (`register_eval=False`, `register_builtins=False`, and the
  table lupa still creates is removed); every attribute access on a Python object is refused
  by the attribute filter, so the bridge functions are opaque (no `__class__` or `__globals__`
  walks, not even through their metatable);
- run programs or touch files: no `os` (only its clocks), `io`, `dofile`, `loadfile` or
  `package`; files and the network are reached only through the tools and their sandbox;
- load bytecode: `load` takes text only, `string.dump` is gone;
- `require` anything but a Lua file below the spell's own folder;
- inspect or rewrite the runtime: `debug` is removed once the instruction hook is set.

Limits: lupa caps the memory of the Lua state (`max_memory`); a count hook stops a spell after
`max_instructions`. Lua copies a thread's hook settings but not its hook function, so every
coroutine (the driver's and the spell's own, through the wrapped `coroutine.create`) gets the
hook explicitly. Once the limit is passed the hook fires on every instruction, so a spell that
catches the error with pcall is stopped at its next instruction anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lupa import lua54

from llmspell.spells.errors import SpellSyntaxError

__all__ = ["LuaSandbox", "SpellLimits"]

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SYNTAX = re.compile(r"^(?P<file>.*?):(?P<line>\d+): (?P<message>.*)$", re.DOTALL)


@dataclass(frozen=True)
class SpellLimits:
    """How much a spell may use. The defaults let real spells run and stop runaway ones in
    about a second."""

    max_memory_mb: float = 64.0
    max_instructions: int = 200_000_000
    hook_every: int = 10_000  # instructions between two checks of the count


# The setup chunk runs before anything of the spell's, with the full standard library. It
# keeps private copies of what the driver needs (resume, traceback, the hook) in the table it
# returns to Python, then removes the dangerous globals.
_SETUP = r"""
local read_module, max_ticks, every, print_line = ...
local sethook, traceback = debug.sethook, debug.traceback
local raw_create, raw_resume, raw_yield = coroutine.create, coroutine.resume, coroutine.yield
local raw_status, raw_load = coroutine.status, load
local pack, unpack, concat = table.pack, table.unpack, table.concat
local tostring, select, type, error = tostring, select, type, error

local ticks, exceeded = 0, false
local hook
hook = function()
  ticks = ticks + 1
  if ticks > max_ticks then
    exceeded = true
    sethook(hook, "", 1)  -- from now on every instruction fails, pcall or not
    error("instruction limit exceeded", 2)
  end
end
sethook(hook, "", every)

local function new_thread(f)
  local co = raw_create(f)
  sethook(co, hook, "", every)
  return co
end

-- A marker only this chunk and the prelude hold: the spell cannot forge an await.
local AWAIT = {}

-- resume that lets the driver's awaits through: when a coroutine of the spell's own calls
-- agent:run, the whole chain suspends until the driver has the answer.
local function resume(co, ...)
  local r = pack(raw_resume(co, ...))
  while r[1] and r[2] == AWAIT and raw_status(co) == "suspended" do
    r = pack(raw_resume(co, raw_yield(AWAIT, r[3])))
  end
  return unpack(r, 1, r.n)
end

local function wrap(f)
  local co = new_thread(f)
  return function(...)
    local r = pack(resume(co, ...))
    if not r[1] then error(r[2], 2) end
    return unpack(r, 2, r.n)
  end
end

local function safe_load(chunk, name, _mode, env)
  if type(chunk) == "string" and chunk:byte(1) == 27 then
    return nil, "load: bytecode is not allowed in a spell"
  end
  if env == nil then env = _G end
  return raw_load(chunk, name, "t", env)
end

local loaded = {}
local function require(name)
  if loaded[name] ~= nil then return loaded[name] end
  local ok, source, chunkname = read_module(name)
  if not ok then error(source, 2) end
  local fn, err = raw_load(source, chunkname, "t", _G)
  if not fn then error(err, 2) end
  local value = fn(name)
  if value == nil then value = true end
  loaded[name] = value
  return value
end

local function print(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  print_line(concat(parts, "\t"))
end

local threads, next_id = {}, 0
local internals = {AWAIT = AWAIT}
function internals.spawn(f)
  next_id = next_id + 1
  threads[next_id] = new_thread(f)
  return next_id
end
-- One step of a driver thread: ("done", values...), ("await", op), or ("error", message,
-- traceback).
function internals.step(id, ...)
  local co = threads[id]
  local r = pack(raw_resume(co, ...))
  if not r[1] then
    local message = tostring(r[2])
    return "error", message, traceback(co, message)
  end
  if raw_status(co) == "dead" then return "done", unpack(r, 2, r.n) end
  if r[2] == AWAIT then return "await", r[3] end
  return "error", "coroutine.yield outside a coroutine of the spell's own",
         traceback(co, "coroutine.yield outside a coroutine of the spell's own")
end
function internals.drop(id) threads[id] = nil end
function internals.exceeded() return exceeded end
function internals.compile(source, chunkname)
  return raw_load(source, chunkname, "t", _G)
end
function internals.await(op)
  return raw_yield(AWAIT, op)
end

coroutine.create, coroutine.resume, coroutine.wrap = new_thread, resume, wrap
-- _G: `require` and `print` are locals here, and a bare name would assign the local.
_G.load, _G.require, _G.print = safe_load, require, print
string.dump = nil
local clock, time, date, difftime = os.clock, os.time, os.date, os.difftime
os = {clock = clock, time = time, date = date, difftime = difftime}
local raw_collect = collectgarbage
collectgarbage = function(opt)
  if opt == nil or opt == "collect" or opt == "count" then return raw_collect(opt) end
  error("collectgarbage: only 'collect' and 'count' are allowed in a spell", 2)
end
io, debug, dofile, loadfile, package, python = nil, nil, nil, nil, nil, nil
return internals
"""


def _refuse_attributes(obj: Any, name: Any, is_setting: bool) -> Any:
    raise AttributeError("a spell cannot reach Python objects")


class LuaSandbox:
    """One spell's Lua state and the private functions that drive it."""

    def __init__(self, limits: SpellLimits | None = None, *, folder: Path | None = None,
                 print_line: Any = print) -> None:
        self.limits = limits or SpellLimits()
        self.folder = folder.resolve() if folder is not None else None
        self.lua: Any = lua54.LuaRuntime(
            register_eval=False, register_builtins=False, unpack_returned_tuples=True,
            attribute_filter=_refuse_attributes,
            max_memory=int(self.limits.max_memory_mb * 1024 * 1024))
        ticks = max(1, self.limits.max_instructions // self.limits.hook_every)
        self.internals: Any = self.lua.execute(_SETUP, self._read_module, ticks,
                                               self.limits.hook_every, print_line)
        self.globals: Any = self.lua.globals()

    def compile(self, source: str, file: str) -> Any:
        """The spell as a Lua function, or SpellSyntaxError naming the file and line. Lua
        names the chunk by the file's name (it cuts longer names to 60 characters); the
        syntax error carries the whole path."""
        compiled = self.internals.compile(source, f"@{Path(file).name}")
        if isinstance(compiled, tuple):  # (nil, message): lupa returns one value as itself
            raise _syntax_error(file, str(compiled[1]))
        return compiled

    def load(self, source: str, chunkname: str) -> Any:
        """Runtime code (the prelude) as a Lua function; its lines read `chunkname:N`."""
        compiled = self.internals.compile(source, chunkname)
        if isinstance(compiled, tuple):
            raise RuntimeError(f"{chunkname} does not compile: {compiled[1]}")
        return compiled

    def exceeded(self) -> bool:
        """Whether the instruction limit has stopped the spell."""
        return bool(self.internals.exceeded())

    def _read_module(self, name: Any) -> tuple[bool, str, str]:
        """`require(name)`: the source of <folder>/<name with dots as slashes>.lua."""
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            return False, f"require: {name!r} is not a module name (use letters, digits, _ " \
                          "and dots)", ""
        if self.folder is None:
            return False, f"require {name!r}: this spell has no folder to load modules from", ""
        path = (self.folder / (name.replace(".", "/") + ".lua")).resolve()
        if not path.is_relative_to(self.folder):
            return False, f"require {name!r}: outside the spell's folder", ""
        if not path.is_file():
            return False, f"require {name!r}: no file {path.name} in the spell's folder", ""
        return True, path.read_text(encoding="utf-8"), f"@{path.relative_to(self.folder)}"


def _syntax_error(file: str, error: str) -> SpellSyntaxError:
    found = _SYNTAX.match(error)
    if found is None:
        return SpellSyntaxError(file, None, f"{file}: {error}")
    return SpellSyntaxError(file, int(found["line"]),
                            f"{file}:{found['line']}: {found['message']}")
