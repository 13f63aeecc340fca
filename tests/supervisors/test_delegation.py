"""Delegation: specialists as tools, in parallel, nested, within a depth and a budget."""

from __future__ import annotations

import asyncio

import pytest

from llmspell.agents import AgentSpec, RunStatus, SpecError
from llmspell.llm.types import LLMRequest
from llmspell.runtime.hooks import HookContext, HookPoint, Modify
from llmspell.supervisors.delegation import Budget, Delegation, DelegationResult
from llmspell.tools import Tool, tool
from tests.supervisors.pattern_helpers import Team, call, tool_results


def meeting(parties: int) -> Tool:
    """A tool that returns only once `parties` callers wait in it at the same time."""
    barrier = asyncio.Barrier(parties)

    @tool
    async def meet() -> str:
        """Wait for the other specialists."""
        await asyncio.wait_for(barrier.wait(), 5)
        return "met"

    return meet


def report(request: LLMRequest) -> str:
    return "report: " + " | ".join(sorted(tool_results(request)))


async def test_two_specialists_called_in_one_turn_run_in_parallel() -> None:
    team = Team()
    meet = meeting(2)  # neither specialist can finish unless both run at once
    researcher = team.agent("researcher", [call("meet")], "facts about Ray", tools=[meet],
                            description="Finds facts.")
    writer = team.agent("writer", [call("meet")], "a tidy paragraph", tools=[meet])
    lead = team.agent("lead", [call("delegate_to_researcher", "c1", input="find facts"),
                               call("delegate_to_writer", "c2", input="write it")], report)
    seen: list[tuple[str, str]] = []

    @team.hooks.on(HookPoint.before_delegation)
    def before(ctx: HookContext) -> Modify:
        seen.append(("before", ctx.payload["specialist"]))
        return Modify({**ctx.payload, "input": ctx.payload["input"] + " (briefed)"})

    @team.hooks.on(HookPoint.after_delegation)
    def after(ctx: HookContext) -> None:
        seen.append(("after", ctx.payload.agent))

    team_pattern = Delegation("team", lead, [researcher, writer])
    result = await team_pattern.run("Write a brief on Ray", ctx=team.ctx())

    assert isinstance(result, DelegationResult) and result.ok
    assert result.output == "report: a tidy paragraph | facts about Ray"
    # The manager offered both tools, asked both in one answer, and both came back to it.
    offered = {t.name for t in team.requests("lead")[0].tools}
    assert offered == {"delegate_to_researcher", "delegate_to_writer"}
    assert len(team.requests("lead")) == 2
    r, w = sorted(result.delegations, key=lambda d: d.specialist)
    assert (r.specialist, w.specialist) == ("researcher", "writer")
    assert r.started_ms < w.finished_ms and w.started_ms < r.finished_ms  # they overlapped
    assert team.requests("researcher")[0].messages[-1].text == "find facts (briefed)"
    assert sorted(seen) == [("after", "researcher"), ("after", "writer"),
                            ("before", "researcher"), ("before", "writer")]
    # The specialists' runs are the pattern's children: their usage is counted in the total.
    assert {c.agent for c in result.children} == {"lead", "researcher", "writer"}
    assert result.usage.total_tokens == sum(c.usage.total_tokens for c in result.children) > 0
    delegated = [(p["branch"], p["target"]) for p in team.payloads("agent.delegate")]
    assert sorted(delegated) == [("team/lead/researcher", "researcher"),
                                 ("team/lead/writer", "writer")]
    runs = {p["branch"] for p in team.payloads("agent.run.finished")}
    assert {"team/lead", "team/lead/researcher", "team/lead/writer"} <= runs


async def test_managers_nest_a_delegation_and_a_manager_agent() -> None:
    team = Team()
    worker = team.agent("worker", "deep fact")
    sub = team.agent("sub", [call("delegate_to_worker", input="dig")],
                     lambda r: f"sub found {tool_results(r)[0]}")
    mid = Delegation("mid", sub, [worker], description="A team that digs.")
    analyst = team.agent("analyst", "numbers")
    chief = team.agent("chief", [call("analyst", input="count")],
                       lambda r: f"chief counted {tool_results(r)[0]}", tools=[analyst.as_tool()])
    lead = team.agent("lead", [call("delegate_to_mid", "c1", input="research"),
                               call("delegate_to_chief", "c2", input="analyse")], report)

    result = await Delegation("top", lead, [mid, chief]).run("go", ctx=team.ctx())

    assert result.ok and result.output == "report: chief counted numbers | sub found deep fact"
    assert isinstance(result, DelegationResult)
    nested = next(c for c in result.children if c.agent == "mid")
    assert isinstance(nested, DelegationResult)
    assert [d.specialist for d in nested.delegations] == ["worker"]
    assert nested.delegations[0].depth == 2
    branches = {p["branch"] for p in team.payloads("agent.run.finished")}
    assert "top/lead/mid/sub/worker" in branches and "top/lead/chief/analyst" in branches


async def test_a_delegation_deeper_than_max_depth_is_a_tool_error() -> None:
    team = Team()
    worker = team.agent("worker", "never asked")
    sub = team.agent("sub", [call("delegate_to_worker", input="dig")],
                     lambda r: f"sub alone: {tool_results(r)[0]}")
    mid = Delegation("mid", sub, [worker])
    lead = team.agent("lead", [call("delegate_to_mid", input="research")],
                      lambda r: tool_results(r)[0])

    result = await Delegation("top", lead, [mid], max_depth=1).run("go", ctx=team.ctx())

    assert result.ok and result.output.startswith("sub alone: tool 'delegate_to_worker': ")
    assert "delegation depth 2 below 'top' exceeds its max_depth=1 (top -> mid -> worker)" \
        in result.output
    assert team.requests("worker") == []
    nested = next(c for c in result.children if c.agent == "mid")
    assert isinstance(nested, DelegationResult)
    assert [d.status for d in nested.delegations] == ["refused"]
    assert len(nested.breaches) == 1 and "max_depth=1" in nested.breaches[0]
    refused = team.payloads("delegation.refused")
    assert [(p["delegation"], p["specialist"]) for p in refused] == [("mid", "worker")]


async def test_budget_of_calls_and_of_tokens_per_level() -> None:
    team = Team()
    helper = team.agent("helper", *[f"answer {i}" for i in range(5)])
    asks = [call("delegate_to_helper", f"c{i}", input=f"part {i}") for i in range(3)]
    lead = team.agent("lead", asks, report)
    calls = Delegation("calls", lead, [helper], budget=Budget(max_calls=2))

    result = await calls.run("three parts", ctx=team.ctx())

    assert isinstance(result, DelegationResult) and result.ok
    assert sorted(d.status for d in result.delegations) == ["completed", "completed", "refused"]
    assert len(team.requests("helper")) == 2
    assert len(result.breaches) == 1 and "2 of max_calls=2 calls made" in result.breaches[0]
    assert "max_calls=2" in result.output  # the manager read the refusal as a tool error

    team2 = Team()
    helper2 = team2.agent("helper", "first", "second")
    lead2 = team2.agent("lead", [call("delegate_to_helper", input="a")],
                        [call("delegate_to_helper", input="b")], report)
    tokens = Delegation("tokens", lead2, [helper2], budget=Budget(max_tokens=1))
    result2 = await tokens.run("two turns", ctx=team2.ctx())
    assert isinstance(result2, DelegationResult)
    assert [d.status for d in result2.delegations] == ["completed", "refused"]
    assert "max_tokens=1 tokens used" in result2.output and len(team2.requests("helper")) == 1


async def test_control_comes_back_when_a_specialist_hands_off_or_fails() -> None:
    team = Team()
    drifter = team.agent("drifter", [call("transfer_to_other", reason="not mine")],
                         handoffs=["other"])
    lead = team.agent("lead", [call("delegate_to_drifter", input="do it")],
                      lambda r: "lead finished it: " + tool_results(r)[0])

    result = await Delegation("team", lead, [drifter]).run("task", ctx=team.ctx())

    assert result.ok and result.agent == "team"
    assert "ended with status handoff (it tried to hand off to 'other')" in result.output
    assert "the task came back to you" in result.output


async def test_a_cancelled_delegation_stops_its_specialists() -> None:
    team = Team()
    started, never = asyncio.Event(), asyncio.Event()

    @tool
    async def wait_forever() -> str:
        """Never returns."""
        started.set()
        await never.wait()
        return "unreachable"

    slow = team.agent("slow", [call("wait_forever")], tools=[wait_forever])
    lead = team.agent("lead", [call("delegate_to_slow", input="x")], "never")
    ctx = team.ctx()

    async def cancel_soon() -> None:
        await started.wait()
        ctx.cancel.cancel("the user gave up")

    canceller = asyncio.create_task(cancel_soon())
    result = await asyncio.wait_for(Delegation("team", lead, [slow]).run("x", ctx=ctx), 5)
    await canceller
    assert result.status == RunStatus.cancelled and "the user gave up" in result.reason


def test_bad_delegations_are_refused_with_their_reason() -> None:
    team = Team()
    a = team.agent("a")
    with pytest.raises(SpecError, match="two specialists named 'a'"):
        Delegation("d", AgentSpec(name="m"), [a, a])
    with pytest.raises(SpecError, match="max_depth must be at least 1"):
        Delegation("d", AgentSpec(name="m"), [a], max_depth=0)
    with pytest.raises(SpecError, match="an AgentSpec or an agent handle"):
        Delegation("d", object(), [a])  # type: ignore[arg-type]


async def test_a_delegation_wraps_as_a_tool() -> None:
    team = Team()
    worker = team.agent("worker", "done by worker")
    sub = team.agent("sub", [call("delegate_to_worker", input="w")], lambda r: tool_results(r)[0])
    boss = team.agent("boss", [call("crew", input="go")], lambda r: "boss: " + tool_results(r)[0],
                      tools=[Delegation("crew", sub, [worker]).as_tool()])
    result = await boss.run("start")
    assert result.ok and result.output == "boss: done by worker"
