"""The other globals against real actors and the local LLM server: concurrency, timeouts,
events from sub-agents, state, workflows, and a spell's actors stopped when it fails."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell import Runtime
from llmspell.jobs.result import JobStatus
from llmspell.spells import SpellOptions, exec_spell

pytestmark = pytest.mark.ray


async def run(runtime: Runtime, job_id: str, options: SpellOptions, code: str) -> Any:
    result = await exec_spell(code, inputs={}, runtime=runtime, job_id=job_id, options=options,
                              print_line=lambda line: None)
    assert result.ok, result.reason
    return result.output


async def test_concurrent_agent_runs_take_little_longer_than_one(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        local slow = {}
        for i = 1, 3 do slow[i] = Agent.new{name = "slow-" .. i, model = "local:slow"} end
        local warm = Agent.new{name = "warm", model = "local:echo"}
        warm:run("start the host")
        local t0 = Spell.clock()
        slow[1]:run("alone")
        local one = Spell.clock() - t0
        t0 = Spell.clock()
        local texts = Spell.all{
          function() return slow[1]:run("a").text end,
          function() return slow[2]:run("b").text end,
          function() return slow[3]:run("c").text end}
        return {one = one, three = Spell.clock() - t0, texts = texts}
    """)
    assert out["texts"] == ["finally"] * 3
    assert out["one"] >= 0.6 and out["three"] <= 1.5 * out["one"], out


async def test_timeouts_reach_lua_as_errors_pcall_catches(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        local slow = Agent.new{name = "slow", model = "local:slow"}
        local ok1, err1 = pcall(Spell.timeout, 0.2, function() return slow:run("x") end)
        local ok2, err2 = pcall(slow.run, slow, "y", {timeout = 0.2})
        return {ok1 = ok1, err1 = err1, ok2 = ok2, err2 = err2}
    """)
    assert out["ok1"] is False and out["err1"].startswith("timeout:")
    assert out["ok2"] is False and out["err2"].startswith("timeout:")


async def test_an_event_subscription_receives_a_sub_agents_events(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        local worker = Agent.new{name = "worker", model = "local:calc",
                                 tools = {"calculator"}}
        local lead = Agent.new{name = "lead", model = "local:echo", tools = {worker}}
        local sub = Event.subscribe("agent.**")
        local seen = {}
        Event.on("spell.ping", function(ev) State.set("job:pinged", ev.payload.n) end)
        local flow = Workflow.sequential{name = "chain", steps = {worker}}
        flow:run("what is 6*7?")
        for ev in sub:iter(2) do
          if ev.topic == "agent.tool.call" then table.insert(seen, ev.payload.tool) end
          if ev.topic == "agent.run.finished" then table.insert(seen, ev.payload.branch) end
          if ev.topic == "agent.run.finished" then break end
        end
        Event.publish("spell.ping", {n = 7})
        local pinged
        for _ = 1, 50 do
          pinged = State.get("job:pinged")
          if pinged then break end
          Spell.sleep(0.05)
        end
        return {seen = seen, pinged = pinged}
    """)
    assert out["seen"] == ["calculator", "chain/worker"] and out["pinged"] == 7


async def test_state_get_set_and_a_lost_compare_and_set(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        local v1 = State.set("job:counter", 1)
        local current = State.get_versioned("job:counter")
        State.compare_and_set("job:counter", current.value + 1, current.version)
        local ok, err = pcall(State.compare_and_set, "job:counter", 100, current.version)
        return {v1 = v1, value = State.get("job:counter"), ok = ok, err = err,
                missing = State.get("job:nothing")}
    """)
    assert out["value"] == 2 and out["ok"] is False and "VersionConflict" in out["err"]
    assert "missing" not in out


async def test_workflows_with_lua_steps_predicates_and_reducers(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        local echo = Agent.new{name = "echo", model = "local:echo"}
        local route = Workflow.conditional{name = "route",
          branches = {short = function(x) return "short:" .. x end, long = echo},
          predicate = function(input) return #input < 5 and "short" or "long" end}
        local count = 0
        local loop = Workflow.loop{name = "grow", body = function(x) return x .. "!" end,
          ["until"] = function(result, i) return #result.text >= 4 end, max_iterations = 5}
        local mr = Workflow.map_reduce{name = "squares",
          mapper = function(item) return tonumber(item) ^ 2 end,
          split = function(input) return {1, 2, 3} end,
          reduce = function(outputs)
            local sum = 0
            for _, v in ipairs(outputs) do sum = sum + v end
            return sum
          end}
        return {short = route:run("hi").text, long = route:run("a longer one").text,
                loop = loop:run("a").text, sum = mr:run("").output}
    """)
    assert out == {"short": "short:hi", "long": "echo: a longer one", "loop": "a!!!",
                   "sum": 14}


async def test_a_failing_spell_stops_its_actors(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    result = await exec_spell("""
        local a = Agent.new{name = "doomed", model = "local:echo"}
        a:run("hello")
        error("the spell broke")
    """, inputs={}, runtime=runtime, job_id=job_id, options=options,
        print_line=lambda line: None)
    assert result.status == JobStatus.failed and "(exec):4: the spell broke" in result.reason
    assert not runtime.exists(f"{job_id}/spell-agents-1")
    stopped = [e.payload for e in await runtime.replay(job_id, pattern="actor.stopped")]
    assert stopped and result.usage.total_tokens > 0
