"""The Lua sandbox: escape attempts refused with a clear error, limits, errors with lines.

These spells start no agent, so they need no actor: only the session's runtime (for the job's
state and events)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmspell import Runtime
from llmspell.jobs.result import JobStatus
from llmspell.spells import SpellLimits, SpellOptions, SpellSyntaxError, exec_spell, run_spell
from llmspell.spells.sandbox import LuaSandbox

pytestmark = pytest.mark.ray


async def run(runtime: Runtime, job_id: str, code: str, **limits: Any) -> Any:
    return await exec_spell(code, inputs={}, runtime=runtime, job_id=job_id,
                            options=SpellOptions(), limits=SpellLimits(**limits),
                            print_line=lambda line: None)


@pytest.mark.parametrize(("attempt", "refusal"), [
    ("os.execute('echo pwned')", "attempt to call a nil value (field 'execute')"),
    ("io.open('/etc/passwd')", "attempt to index a nil value (global 'io')"),
    ("python.eval('1+1')", "attempt to index a nil value (global 'python')"),
    ("debug.getupvalue(Agent.new, 1)", "attempt to index a nil value (global 'debug')"),
    ("package.loadlib('libc.so.6', 'system')", "attempt to index a nil value (global 'package')"),
    ("dofile('/etc/passwd')", "attempt to call a nil value (global 'dofile')"),
    ("loadfile('/etc/passwd')", "attempt to call a nil value (global 'loadfile')"),
    ("string.dump(function() end)", "attempt to call a nil value (field 'dump')"),
    ("assert(load('\\27Lua'))", "bytecode is not allowed"),
    ("require('os')", "this spell has no folder to load modules from"),
    ("require('../../etc/passwd')", "is not a module name"),
    ("collectgarbage('stop')", "only 'collect' and 'count' are allowed"),
    ("os.getenv('HOME')", "attempt to call a nil value (field 'getenv')"),
])
async def test_an_escape_attempt_is_refused_with_a_clear_error(
        runtime: Runtime, job_id: str, attempt: str, refusal: str) -> None:
    result = await run(runtime, job_id, attempt)
    assert result.status == JobStatus.failed
    assert refusal in result.reason and "(exec):1:" in result.reason


async def test_no_python_object_is_reachable_from_the_globals(
        runtime: Runtime, job_id: str) -> None:
    # Walk every value reachable from _G, through tables, metatables and string's metatable:
    # only Lua values, never a Python object (userdata), so no __class__ walk can start.
    result = await run(runtime, job_id, """
        local seen, found = {}, {}
        local function walk(v, path)
          if seen[v] then return end
          local t = type(v)
          if t == "userdata" then table.insert(found, path) end
          if t ~= "table" then return end
          seen[v] = true
          for k, x in pairs(v) do walk(x, path .. "." .. tostring(k)) end
          local mt = getmetatable(v)
          if mt then walk(mt, path .. ".<mt>") end
        end
        walk(_G, "_G")
        walk(getmetatable(""), "string.<mt>")
        return found
    """)
    assert result.ok, result.reason
    assert result.output == {}


def test_python_attributes_are_refused_even_through_the_metatable() -> None:
    box = LuaSandbox()
    box.globals.fn = len  # what a bridge function is to Lua: an opaque callable
    attempts = ["return fn.__class__", "return fn.__self__", "return fn['__globals__']",
                "return getmetatable(fn).__index(fn, '__class__')"]
    for code in attempts:
        ok, error = box.lua.execute(f"return pcall(function() {code} end)")
        assert ok is False and "cannot reach Python objects" in str(error), code


async def test_an_infinite_loop_stops_at_the_instruction_limit(
        runtime: Runtime, job_id: str) -> None:
    result = await run(runtime, job_id, "local n = 0\nwhile true do n = n + 1 end",
                       max_instructions=2_000_000)
    assert result.status == JobStatus.failed
    assert "instruction limit exceeded: the spell ran more than 2,000,000" in result.reason
    assert "(exec):2" in result.reason


async def test_catching_the_limit_with_pcall_does_not_help(
        runtime: Runtime, job_id: str) -> None:
    result = await run(runtime, job_id, """
        while true do pcall(function() while true do end end) end
    """, max_instructions=2_000_000)
    assert "instruction limit exceeded" in result.reason


async def test_a_memory_bomb_stops_at_the_memory_limit(runtime: Runtime, job_id: str) -> None:
    result = await run(runtime, job_id, """
        local t = {}
        for i = 1, 1e9 do t[i] = string.rep("x", 1024) .. i end
    """, max_memory_mb=16)
    assert result.status == JobStatus.failed
    assert "memory limit exceeded: the spell used more than 16 MB" in result.reason


async def test_a_syntax_error_names_the_file_and_line(
        runtime: Runtime, job_id: str, tmp_path: Path) -> None:
    spell = tmp_path / "broken.lua"
    spell.write_text("local a = 1\nlocal b = = 2\n")
    with pytest.raises(SpellSyntaxError) as caught:
        await run_spell(spell, inputs={}, runtime=runtime, job_id=job_id)
    assert caught.value.line == 2 and caught.value.file == str(spell)
    assert str(caught.value).startswith(f"{spell}:2: unexpected symbol near '='")


async def test_a_runtime_error_shows_a_lua_traceback_with_the_spell_lines(
        runtime: Runtime, job_id: str, tmp_path: Path) -> None:
    (tmp_path / "helpers.lua").write_text(
        "local M = {}\nfunction M.check(x)\n  if x > 1 then error('too big: ' .. x) end\n"
        "end\nreturn M\n")
    spell = tmp_path / "main.lua"
    spell.write_text("local helpers = require('helpers')\nlocal function go(n)\n"
                     "  helpers.check(n)\nend\ngo(5)\n")
    result = await run_spell(spell, inputs={}, runtime=runtime, job_id=job_id,
                             print_line=lambda line: None)
    assert result.status == JobStatus.failed and result.exit_code == 1
    assert result.reason.startswith("helpers.lua:3: too big: 5")
    assert "stack traceback:" in result.reason
    assert "main.lua:3: in " in result.reason and "main.lua:5: in main chunk" in result.reason
    assert "[C]" not in result.reason  # the runtime's own frames are left out


async def test_require_refuses_a_symlink_out_of_the_spell_folder(
        runtime: Runtime, job_id: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside.lua"
    outside.write_text("return 'secret'")
    folder = tmp_path / "spell"
    folder.mkdir()
    (folder / "sneaky.lua").symlink_to(outside)
    spell = folder / "main.lua"
    spell.write_text("return require('sneaky')")
    result = await run_spell(spell, inputs={}, runtime=runtime, job_id=job_id)
    assert result.status == JobStatus.failed and "outside the spell's folder" in result.reason


async def test_the_spell_return_value_and_args(runtime: Runtime, job_id: str) -> None:
    printed: list[str] = []
    result = await exec_spell(
        "print('hello', Args.name)\nreturn {greeting = 'hi ' .. Args.name, n = 3}",
        inputs={"name": "Ada"}, runtime=runtime, job_id=job_id, print_line=printed.append)
    assert result.ok and result.output == {"greeting": "hi Ada", "n": 3}
    assert printed == ["hello\tAda"] and json.loads(result.text) == result.output
