"""Delegation, swarm and consensus with agents in actors, against the local LLM server through
the real openai SDK; each checked in the job's event log, not only by its answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llmspell import Runtime
from llmspell.actors.agent_actor import AgentHandle, HostSetup, spawn_host
from llmspell.agents import Agent, AgentEnv, AgentSpec
from llmspell.llm.registry import ProviderRegistry, ProviderSettings
from llmspell.llm.server import LocalLLMServer
from llmspell.runtime.events import Event
from llmspell.runtime.hooks import HookContext, HookPoint, HookRegistry
from llmspell.runtime.state_client import StateClient
from llmspell.supervisors.consensus import Consensus, ConsensusResult
from llmspell.supervisors.delegation import Budget, Delegation, DelegationResult
from llmspell.supervisors.swarm import Swarm, SwarmResult
from llmspell.tools import ToolContext, tool

pytestmark = pytest.mark.ray


@tool
async def remember(key: str, value: str, ctx: ToolContext) -> str:
    """Write a value to the job's state.

    Args:
        key: a scoped state key
        value: the value
    """
    assert ctx.state is not None
    await ctx.state.set(key, value)
    return f"saved {key}"


def calls(*items: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "arguments": args} for name, args in items]}


SCENARIO = {"rules": [
    # delegation: the manager asks both specialists in one answer, then sums up
    {"match": {"model": "^lead$", "after_tool_result": False},
     "reply": calls(("delegate_to_researcher", {"input": "find facts on Ray"}),
                    ("delegate_to_writer", {"input": "draft a paragraph"}))},
    {"match": {"model": "^lead$", "after_tool_result": True}, "reply": "Brief: facts + draft."},
    {"match": {"model": "^researcher$"}, "reply": "Ray runs actors."},
    {"match": {"model": "^writer$"}, "reply": "A tidy draft."},
    # delegation with managers in actors: alead asks researcher and the nested delegation
    # "inner" at once; inner's manager asub asks writer twice in one answer
    {"match": {"model": "^alead$", "after_tool_result": False},
     "reply": calls(("delegate_to_researcher", {"input": "find facts on Ray"}),
                    ("delegate_to_inner", {"input": "draft two paragraphs"}))},
    {"match": {"model": "^alead$", "after_tool_result": True}, "reply": "Lead: done."},
    {"match": {"model": "^asub$", "after_tool_result": False},
     "reply": calls(("delegate_to_writer", {"input": "paragraph 1"}),
                    ("delegate_to_writer", {"input": "paragraph 2"}))},
    {"match": {"model": "^asub$", "after_tool_result": True}, "reply": "Sub: done."},
    # swarm: triage saves the order and hands off; billing hands off only if it saw the
    # conversation and the carried state; refunds answers
    {"match": {"model": "^triage$", "after_tool_result": False},
     "reply": calls(("remember", {"key": "job:order", "value": "A-17"}))},
    {"match": {"model": "^triage$", "after_tool_result": True},
     "reply": calls(("transfer_to_billing", {"reason": "refund", "summary": "order A-17"}))},
    {"match": {"model": "^billing$", "regex": "(?s)user: I want my money back.*"
                                               "triage: \\[called remember"},
     "reply": calls(("transfer_to_refunds", {"reason": "approved", "summary": "pay back"}))},
    {"match": {"model": "^refunds$", "contains": "- job:order = \"A-17\""},
     "reply": "Refund issued for A-17."},
    # consensus: four say Paris (spelled their own way), one says Lyon
    {"match": {"model": "^voter-5$"}, "reply": "Lyon"},
    {"match": {"model": "^voter-1$"}, "reply": "Paris"},
    {"match": {"model": "^voter-2$"}, "reply": "paris."},
    {"match": {"model": "^voter-"}, "reply": "PARIS"},
    # debate: c holds out in round 1, then joins the others
    {"match": {"model": "^debater-c$", "contains": "The other agents answered"},
     "reply": "Paris"},
    {"match": {"model": "^debater-c$"}, "reply": "Lyon"},
    {"match": {"model": "^debater-"}, "reply": "Paris"},
]}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(SCENARIO) as s:
        yield s


def providers(server: LocalLLMServer) -> dict[str, Any]:
    return {"openai": {"base_url": server.openai_base_url, "api_key": "sk-test"}}


def driver_ctx(runtime: Runtime, job_id: str, hooks: HookRegistry | None = None) -> ToolContext:
    """The driver's side of a job: its state, its events into the job's log, its hooks."""
    node = runtime.node

    def emit(topic: str, payload: dict[str, Any]) -> None:
        node.publish_nowait(topic, payload, job_id=job_id)

    return ToolContext(job_id=job_id, state=StateClient(node, job_id=job_id), emit=emit,
                       hooks=hooks or HookRegistry(emit=emit))


def host(runtime: Runtime, job_id: str, server: LocalLLMServer,
         specs: list[AgentSpec]) -> list[AgentHandle]:
    return spawn_host(runtime, "agents", HostSetup(specs, tools=[remember],
                                                   providers=providers(server)), job_id=job_id)


async def logged(runtime: Runtime, job_id: str, handles: list[AgentHandle]) -> list[Event]:
    await handles[0].ref.flush()  # the host's events are batched: send them to the log first
    return await runtime.replay(job_id)


async def test_a_delegation_job_with_specialists_in_actors(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    specialists = host(runtime, job_id, server, [
        AgentSpec(name="researcher", model="openai:researcher", description="Finds facts."),
        AgentSpec(name="writer", model="openai:writer", description="Writes.")])
    ctx = driver_ctx(runtime, job_id)
    env = AgentEnv(providers=ProviderRegistry({"openai": ProviderSettings(
        base_url=server.openai_base_url, api_key="sk-test")}), emit=ctx.emit, state=ctx.state,
        job_id=job_id)
    delegated: list[str] = []
    assert ctx.hooks is not None

    @ctx.hooks.on(HookPoint.before_delegation)
    def note(hook: HookContext) -> None:
        delegated.append(hook.payload["specialist"])

    lead = Agent(env=env, name="lead", model="openai:lead", stream=False)
    result = await Delegation("team", lead, specialists).run("Write a brief on Ray", ctx=ctx)

    assert isinstance(result, DelegationResult) and result.ok
    assert result.output == "Brief: facts + draft." and sorted(delegated) == ["researcher",
                                                                             "writer"]
    assert {d.specialist: d.status for d in result.delegations} == {
        "researcher": "completed", "writer": "completed"}
    events = await logged(runtime, job_id, specialists)
    topics = [e.topic for e in events]
    assert topics.count("agent.delegate") == 2 and topics.count("delegation.result") == 2
    assert "delegation.started" in topics and "delegation.finished" in topics
    finished = {e.payload["branch"] for e in events if e.topic == "agent.run.finished"}
    assert {"team/lead", "team/lead/researcher", "team/lead/writer"} <= finished
    results = {e.payload["specialist"]: e.payload["tokens"] for e in events
               if e.topic == "delegation.result"}
    assert set(results) == {"researcher", "writer"} and all(t > 0 for t in results.values())


def actor_team(runtime: Runtime, job_id: str, server: LocalLLMServer, *, outer_depth: int = 3
               ) -> tuple[Delegation, list[AgentHandle]]:
    """Two hosts: lead and researcher on one, the nested manager and the writer on the
    other. Every manager runs in its actor; the driver only starts the outer run."""
    lead, researcher = spawn_host(runtime, "team-a", HostSetup([
        AgentSpec(name="lead", model="openai:alead", stream=False),
        AgentSpec(name="researcher", model="openai:researcher", description="Finds facts.",
                  stream=False)], providers=providers(server)), job_id=job_id)
    sub, writer = spawn_host(runtime, "team-b", HostSetup([
        AgentSpec(name="sub", model="openai:asub", stream=False),
        AgentSpec(name="writer", model="openai:writer", stream=False)],
        providers=providers(server)), job_id=job_id)
    inner = Delegation("inner", sub, [writer], budget=Budget(max_calls=1),
                       description="Writes drafts with its own writer.")
    return Delegation("outer", lead, [researcher, inner], max_depth=outer_depth), [lead, sub]


async def test_a_delegation_whose_managers_run_in_actors(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    team, hosts = actor_team(runtime, job_id, server)
    result = await team.run("Write a brief on Ray", ctx=driver_ctx(runtime, job_id))

    assert isinstance(result, DelegationResult) and result.ok, result.reason
    assert result.output == "Lead: done."
    assert {d.specialist: d.status for d in result.delegations} == {
        "researcher": "completed", "inner": "completed"}
    inner = next(c for c in result.children if isinstance(c, DelegationResult))
    assert inner.output == "Sub: done."
    assert sorted(d.status for d in inner.delegations) == ["completed", "refused"]
    assert len(inner.breaches) == 1 and "max_calls=1" in inner.breaches[0]
    assert result.usage.total_tokens > 0

    for handle in hosts:
        await handle.ref.flush()
    events = await runtime.replay(job_id)
    topics = [e.topic for e in events]
    assert topics.count("agent.delegate") == 3  # researcher, inner, one writer call
    assert topics.count("delegation.result") == 3 and topics.count("delegation.refused") == 1
    refused = next(e.payload for e in events if e.topic == "delegation.refused")
    assert refused["delegation"] == "inner" and refused["specialist"] == "writer"
    finished = {e.payload["branch"] for e in events if e.topic == "agent.run.finished"}
    assert any(b.endswith("lead/researcher") for b in finished)
    assert any(b.endswith("lead/inner/sub/writer") for b in finished)


async def test_a_depth_limit_holds_across_the_actors_of_a_delegation(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    team, _ = actor_team(runtime, job_id, server, outer_depth=1)
    result = await team.run("Write a brief on Ray", ctx=driver_ctx(runtime, job_id))

    assert isinstance(result, DelegationResult) and result.ok, result.reason
    inner = next(c for c in result.children if isinstance(c, DelegationResult))
    assert [d.status for d in inner.delegations] == ["refused", "refused"]
    assert all("exceeds its max_depth=1 (outer -> inner -> writer)" in b
               for b in inner.breaches)


def test_a_manager_in_an_actor_needs_specialists_in_actors(runtime: Runtime) -> None:
    handle = AgentHandle(runtime, "j/host", "lead")
    with pytest.raises(Exception, match="'helper' is not an agent in an actor"):
        Delegation("team", handle, [Agent(name="helper")])


async def test_a_swarm_with_two_handoffs_carrying_state(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    agents = host(runtime, job_id, server, [
        AgentSpec(name="triage", model="openai:triage", tools=["remember"],
                  handoffs=["billing"]),
        AgentSpec(name="billing", model="openai:billing", handoffs=["refunds"]),
        AgentSpec(name="refunds", model="openai:refunds")])
    ctx = driver_ctx(runtime, job_id)
    swarm = Swarm("help", agents, entry="triage", state_keys=["job:order"])
    result = await swarm.run("I want my money back", ctx=ctx)

    assert isinstance(result, SwarmResult) and result.ok, result.reason
    assert result.output == "Refund issued for A-17."
    assert result.path == ["triage", "billing", "refunds"]
    assert ctx.state is not None
    assert await ctx.state.get("job:order") == "A-17"  # written by the tool, in the actor
    assert await ctx.state.get("job:swarm:help:active") == "refunds"
    events = await logged(runtime, job_id, agents)
    handoffs = [e.payload for e in events if e.topic == "swarm.handoff"]
    assert [(h["from"], h["to"], h["reason"]) for h in handoffs] == [
        ("triage", "billing", "refund"), ("billing", "refunds", "approved")]
    assert all(h["state_keys"] == ["job:order"] for h in handoffs)
    assert all(h["state"] == {"job:order": "A-17"} for h in handoffs)
    asked = [(e.payload["agent"], e.payload["target"]) for e in events
             if e.topic == "agent.handoff"]  # the agents' own side, from the actor
    assert asked == [("triage", "billing"), ("billing", "refunds")]
    changes = {e.payload["key"] for e in events if e.topic == "state.changed"}
    assert {"job:order", "job:swarm:help:active", "job:swarm:help:history"} <= changes


async def test_a_consensus_of_five_and_a_debate_in_two_rounds(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    specs = [AgentSpec(name=f"voter-{i}", model=f"openai:voter-{i}") for i in range(1, 6)]
    specs += [AgentSpec(name=f"debater-{c}", model=f"openai:debater-{c}") for c in "abc"]
    handles = host(runtime, job_id, server, specs)
    ctx = driver_ctx(runtime, job_id)

    vote = await Consensus("vote", handles[:5]).run("Capital of France?", ctx=ctx)
    debate = await Consensus("debate", handles[5:], "debate", rounds=3,
                             threshold=1.0).run("Capital of France?", ctx=ctx)

    assert isinstance(vote, ConsensusResult) and vote.ok
    assert vote.decision == "Paris" and vote.agreement == 0.8 and vote.dissent == ["voter-5"]
    assert isinstance(debate, ConsensusResult) and debate.ok
    assert [r.agreement for r in debate.rounds] == [round(2 / 3, 6), 1.0]
    events = await logged(runtime, job_id, handles)
    votes = [e.payload for e in events if e.topic == "consensus.vote"
             and e.payload["consensus"] == "vote"]
    assert sorted(v["agent"] for v in votes) == [f"voter-{i}" for i in range(1, 6)]
    ran = [e.payload["agent"] for e in events if e.topic == "agent.run.finished"
           and e.payload["branch"].startswith("vote/")]
    assert sorted(ran) == sorted(set(ran)) == [f"voter-{i}" for i in range(1, 6)]
    rounds = [(e.payload["round"], e.payload["agreement"]) for e in events
              if e.topic == "consensus.round" and e.payload["consensus"] == "debate"]
    assert rounds == [(1, round(2 / 3, 6)), (2, 1.0)]
    decided = {e.payload["consensus"]: e.payload for e in events
               if e.topic == "consensus.decided"}
    assert decided["vote"]["dissent"] == ["voter-5"] and decided["debate"]["rounds"] == 2
