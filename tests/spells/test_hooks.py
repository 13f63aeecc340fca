"""Lua hooks: each hook result, from Lua, at points in agent actors and in the driver."""

from __future__ import annotations

import pytest

from llmspell import Runtime
from llmspell.spells import SpellOptions
from tests.spells.conftest import run

pytestmark = pytest.mark.ray


async def test_cancel_from_lua_stops_a_tool_call_inside_an_agent_actor(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        Hook.register("before_tool_call", function(ctx)
          return Hook.cancel("no maths today: " .. ctx.payload.tool)
        end, {name = "no_maths"})
        local calc = Agent.new{name = "calc", model = "local:calc", tools = {"calculator"}}
        local r = calc:run("what is 6*7?")
        local ok, err = pcall(Tool.call, "calculator", {expression = "1+1"})
        return {text = r.text, direct_ok = ok, direct_err = err}
    """)
    assert out["text"] == "The answer is 42." and out["direct_ok"] is False
    assert out["direct_err"].startswith("cancelled:") and "no maths today" in out["direct_err"]
    results = [e.payload for e in await runtime.replay(job_id, pattern="agent.tool.result")]
    assert len(results) == 1 and "no maths today: calculator" in str(results[0])
    cancelled = [e.payload for e in await runtime.replay(job_id, pattern="hook.cancelled")]
    assert {c["hook"] for c in cancelled} == {"no_maths"}


async def test_modify_from_lua_changes_the_prompt_the_model_sees(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        Hook.register("before_llm_call", function(ctx)
          local request = ctx.payload
          local last = request.messages[#request.messages]
          last.parts[1].text = last.parts[1].text .. " [checked]"
          return Hook.modify(request)
        end)
        local guarded = Agent.new{name = "guarded", model = "local:guarded"}
        return guarded:run("hello").text
    """)
    assert out == "saw the checked prompt"


async def test_replace_from_lua_short_circuits_the_model_and_a_tool(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        Hook.register("before_llm_call", function(ctx)
          return Hook.replace("from the cache")
        end)
        Hook.register("before_tool_call", function(ctx)
          return Hook.replace({result = 99})
        end)
        local a = Agent.new{name = "cached", model = "local:guarded"}
        return {agent = a:run("hello").text,
                tool = Tool.call("calculator", {expression = "1+1"}).result}
    """)
    assert out == {"agent": "from the cache", "tool": 99}


async def test_continue_from_lua_and_priority_order(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        local order = {}
        for _, p in ipairs({1, 10, 5}) do
          Hook.register("before_tool_call", function(ctx)
            table.insert(order, p)
            if p == 5 then return Hook.continue() end   -- nil means continue too
          end, {priority = p})
        end
        local r = Tool.call("calculator", {expression = "2+3"})
        return {order = order, result = r.result}
    """)
    assert out == {"order": [10, 5, 1], "result": 5}


async def test_retry_from_lua_runs_the_operation_again(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        local attempts = {}
        Hook.register("after_tool_call", function(ctx)
          table.insert(attempts, ctx.attempt)
          if ctx.attempt == 0 then return Hook.retry(0) end
        end)
        local r = Tool.call("calculator", {expression = "2*3"})
        return {attempts = attempts, result = r.result}
    """)
    assert out == {"attempts": [0, 1], "result": 6}


async def test_redirect_from_lua_sends_a_tool_call_elsewhere(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        Tool.define{name = "safe_calc", description = "A calculator that always says 0.",
                    parameters = {type = "object", properties = {expression = {type = "string"}}},
                    fn = function(args) return "0 (for " .. args.expression .. ")" end}
        Hook.register("before_tool_call", function(ctx)
          if ctx.payload.tool == "calculator" then return Hook.redirect("safe_calc") end
        end)
        return Tool.call("calculator", {expression = "6*7"})
    """)
    assert out == "0 (for 6*7)"


async def test_a_failing_lua_hook_is_isolated_and_reported(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        Hook.register("before_tool_call", function(ctx) error("hook bug") end,
                      {name = "buggy"})
        return Tool.call("calculator", {expression = "1+1"}).result
    """)
    assert out == 2
    failed = [e.payload for e in await runtime.replay(job_id, pattern="hook.failed")]
    assert failed[0]["hook"] == "buggy" and "hook bug" in failed[0]["error"]


async def test_a_cancelled_agent_run_is_an_error_pcall_catches(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        Hook.register("before_agent_run", function(ctx) return Hook.cancel("not now") end)
        local a = Agent.new{name = "refused", model = "local:echo"}
        local ok, err = pcall(a.run, a, "hello")
        return {ok = ok, err = err}
    """)
    assert out["ok"] is False and out["err"].startswith("cancelled:") and "not now" in out["err"]
