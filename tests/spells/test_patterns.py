"""Delegation, Swarm and Pipeline built from Lua tables, run against agent actors and the
local LLM server, with the Lua hooks at their driver-side points seeing what they do."""

from __future__ import annotations

import pytest

from llmspell import Runtime
from llmspell.spells import SpellOptions
from tests.spells.conftest import run

pytestmark = pytest.mark.ray


async def test_delegation_from_lua_asks_both_specialists_and_its_hooks_fire(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        local asked = {}
        Hook.register("before_delegation", function(ctx)
          table.insert(asked, ctx.target)
        end)
        local researcher = Agent.new{name = "researcher", model = "local:researcher"}
        local writer = Agent.new{name = "writer", model = "local:writer"}
        local manager = Agent.new{name = "manager", model = "local:manager"}
        local team = Pattern.delegation{name = "team", manager = manager,
                                        specialists = {researcher, writer}}
        local r = team:run("brief me on Ray")
        table.sort(asked)
        return {text = r.text, kind = tostring(team), asked = asked}
    """)
    assert out["text"] == "Manager: both answered." and out["kind"] == "delegation(team)"
    assert out["asked"] == ["researcher", "writer"]
    delegated = [e.payload for e in await runtime.replay(job_id, pattern="agent.delegate")]
    assert sorted(d["tool"] for d in delegated) == ["delegate_to_researcher", "delegate_to_writer"]
    finished = {e.payload["agent"]: e.payload for e in
                await runtime.replay(job_id, pattern="agent.run.finished")}
    assert {"researcher", "writer"} <= set(finished)  # the specialists ran in their actor


async def test_swarm_from_lua_hands_off_with_a_lua_handoff_hook_watching(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        local seen = {}
        Hook.register("before_handoff", function(ctx)
          local p = ctx.payload
          table.insert(seen, p.from .. "->" .. p.to .. ": " .. p.reason)
        end)
        local front = Agent.new{name = "front", model = "local:front", handoffs = {"back"}}
        local back = Agent.new{name = "back", model = "local:back"}
        local desk = Pattern.swarm{name = "desk", agents = {front, back}, entry = "front",
                                   max_handoffs = 3}
        local r = desk:run("I want a refund")
        return {text = r.text, seen = seen, active = State.get("job:swarm:desk:active")}
    """)
    assert out["text"] == "Back office: refund issued."
    assert out["seen"] == ["front->back: a billing question"] and out["active"] == "back"
    handoffs = [e.payload for e in await runtime.replay(job_id, pattern="swarm.handoff")]
    assert [(h["from"], h["to"]) for h in handoffs] == [("front", "back")]


async def test_pipeline_from_lua_streams_items_through_an_agent_and_a_lua_stage(
        runtime: Runtime, job_id: str, options: SpellOptions) -> None:
    out = await run(runtime, job_id, options, """
        local researcher = Agent.new{name = "researcher", model = "local:researcher"}
        local line = Workflow.pipeline{name = "line", queue_size = 1,
          split = function(input)
            local items = {}
            for word in input:gmatch("%S+") do table.insert(items, word) end
            return items
          end,
          stages = {function(topic) return "what are " .. topic .. "?" end, researcher,
                    function(text) return text:upper() end}}
        return line:run("actors tasks objects").output
    """)
    assert out == ["RAY ACTORS ARE STATEFUL WORKERS.", "RAY TASKS ARE STATELESS FUNCTIONS.",
                   "RAY OBJECTS LIVE IN A SHARED STORE."]
