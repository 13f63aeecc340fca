"""The other globals against real actors and the local LLM server: concurrency, timeouts,
events from sub-agents, state, workflows, and a spell's actors stopped when it fails."""

from __future__ import annotations

import pytest

from llmspell import Runtime
from llmspell.jobs.result import JobStatus
from llmspell.spells import SpellOptions, exec_spell
from tests.spells.conftest import run

pytestmark = pytest.mark.ray


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


async def test_agent_template_gives_its_instructions_and_tools(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    from llmspell.agents.templates import TEMPLATES

    out = await run(runtime, job_id, options, """
        local system
        Hook.register("before_llm_call", function(ctx)
          system = ctx.payload.messages[1].parts[1].text
        end)
        local analyst = Agent.template("data", {name = "analyst", model = "local:calc"})
        local r = analyst:run("what is 6*7?")
        local ok, err = pcall(Agent.template, "poet", {name = "p"})
        return {text = r.text, system = system, templates = Agent.templates(), err = err,
                name = analyst.name}
    """)
    assert out["text"] == "The answer is 42."  # the template's calculator did the sum
    assert out["system"].startswith(TEMPLATES["data"]["instructions"])
    assert out["templates"] == sorted(TEMPLATES) and out["name"] == "analyst"
    assert "unknown agent template 'poet'" in out["err"]


async def test_tool_list_and_get_describe_builtin_lua_and_agent_tools(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    from llmspell.tools.builtin import builtin_registry

    out = await run(runtime, job_id, options, """
        local maths = {}
        for _, t in ipairs(Tool.list("math")) do table.insert(maths, t.name) end
        local before = #Tool.list()
        Tool.define{name = "shout", description = "Upper-case a text.",
          parameters = {type = "object", properties = {text = {type = "string"}},
                        required = {"text"}},
          fn = function(args) return args.text:upper() end}
        local helper = Agent.new{name = "helper", model = "local:echo",
                                 description = "Echoes what it is told."}
        local ok, err = pcall(Tool.get, "calculater")
        return {maths = maths, before = before, after = #Tool.list(),
                calc = Tool.get("calculator"), shout = Tool.get("shout"),
                helper = Tool.get("helper"), ok = ok, err = err}
    """)
    assert out["maths"] == ["calculator", "unit_convert"]
    assert out["before"] == len(list(builtin_registry())) and out["after"] == out["before"] + 1
    calc = out["calc"]
    assert calc["category"] == "math" and calc["parameters"]["required"] == ["expression"]
    assert out["shout"]["category"] == "spell"
    assert out["shout"]["parameters"]["required"] == ["text"]
    assert out["helper"]["name"] == "helper"
    assert out["helper"]["description"] == "Echoes what it is told."
    assert out["ok"] is False and "calculator" in out["err"]  # the suggestion


async def test_the_spells_own_coroutines_can_call_functions_that_wait(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        local calc = Agent.new{name = "calc", model = "local:calc", tools = {"calculator"}}
        local gen = coroutine.wrap(function()
          for i = 1, 3 do
            coroutine.yield(Tool.call("calculator", {expression = i .. " * 2"}).result)
          end
          coroutine.yield(calc:run("what is 6*7?").text)
          return "done"
        end)
        local outs = {gen(), gen(), gen(), gen(), gen()}
        -- an error raised by a waiting call inside a coroutine reaches its resume
        local co = coroutine.create(function()
          return Tool.call("calculator", {expression = "1 +"})
        end)
        local ok, err = coroutine.resume(co)
        -- Spell.all from inside a coroutine, with a nested coroutine in one branch
        local both = coroutine.wrap(function()
          return Spell.all{
            function() return Tool.call("calculator", {expression = "1 + 1"}).result end,
            function()
              local inner = coroutine.wrap(function()
                coroutine.yield(State.set("job:inner", "set"))
              end)
              inner()
              return State.get("job:inner")
            end}
        end)
        return {outs = outs, ok = ok, err = err, status = coroutine.status(co),
                both = both()}
    """)
    assert out["outs"] == [2, 4, 6, "The answer is 42.", "done"]
    assert out["ok"] is False and out["status"] == "dead" and "not a valid expression" in out["err"]
    assert out["both"] == [2, "set"]


async def test_stream_deltas_reach_a_lua_hook_in_order_through_the_relay(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        local deltas = {}
        Hook.register("on_stream_delta", function(ctx)
          table.insert(deltas, ctx.payload)
        end)
        local talker = Agent.new{name = "talker", model = "local:echo", stream = true}
        local r = talker:run("one two three four five six")
        return {deltas = deltas, text = r.text}
    """)
    assert out["text"] == "echo: one two three four five six"
    assert "".join(out["deltas"]) == out["text"] and len(out["deltas"]) > 5
    sent = [e.payload["text"] for e in await runtime.replay(job_id, pattern="agent.llm.delta")]
    assert sent == out["deltas"]  # every delta, in order, before the run returned


async def test_state_write_hooks_see_the_spells_writes_and_an_actors(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    """A Lua state_write hook sees the spell's own writes and, relayed, an agent's writes made
    in its actor."""
    out = await run(runtime, job_id, options, """
        local writes = {}
        Hook.register("before_state_write", function(ctx)
          table.insert(writes, ctx.payload.key)
        end)
        State.set("job:from_lua", 1)
        local noter = Agent.new{name = "noter", model = "local:noter", tools = {"state_write"}}
        local r = noter:run("note it")
        return {writes = writes, text = r.text, note = State.get("job:note")}
    """)
    assert out["text"] == "noted" and out["note"] == "from the actor"
    assert out["writes"] == ["job:from_lua", "job:note"]
