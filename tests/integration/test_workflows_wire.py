"""Workflows in a driver, their agents in actors, against the local LLM server through the real
openai SDK. Each test checks the event log (driver and actor events, by branch), not only the
answer."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from llmspell import Runtime
from llmspell.actors.agent_actor import AgentHandle, HostSetup, spawn_host
from llmspell.agents import AgentSpec, RunStatus
from llmspell.llm.server import LocalLLMServer
from llmspell.runtime.events import Event
from llmspell.runtime.messages import new_id
from llmspell.runtime.state_client import StateClient
from llmspell.supervisors.hosted import HostedWorkflow
from llmspell.supervisors.swarm import WorkerSwarm
from llmspell.supervisors.workflows import (
    Conditional,
    Loop,
    MapReduce,
    Parallel,
    Pipeline,
    Sequential,
)
from llmspell.tools import ToolContext

pytestmark = pytest.mark.ray

SCENARIO: dict[str, Any] = {"rules": [
    {"match": {"contains": "Choose the branch"}, "reply": "Refunds."},
    # Far slower than the rest of the module: the join is met long before; the server is idle
    # again by the time it stops (this test runs first).
    {"match": {"contains": "SLOW"}, "latency_ms": 2000, "reply": "too late"},
    {"match": {"contains": "ESCALATE"},
     "reply": '{"escalate": true, "reason": "needs a human"}'},
]}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(SCENARIO) as s:
        yield s


NAMES = ("planner", "writer", "router", "a", "b", "editor", "m0", "m1", "m2", "reducer", "s1",
         "s2", "quick", "closer", "slow", "fast", "first", "second", "third")


@pytest.fixture(scope="module")
def wf_job(runtime: Runtime) -> Iterator[str]:
    """One job for the module, so that its agents' host starts once (about 2 s here). Each test
    runs workflows with names of their own and reads only their branches from the log."""
    job = f"wf-{new_id()[-12:]}"
    yield job
    runtime.kill_job(job)


@pytest.fixture(scope="module")
def agents(runtime: Runtime, wf_job: str, server: LocalLLMServer) -> dict[str, AgentHandle]:
    specs = [AgentSpec(name=n, model="openai:m", stream=False) for n in NAMES]
    providers: dict[str, Any] = {"openai": {"base_url": server.openai_base_url,
                                            "api_key": "sk-test"}}
    handles = spawn_host(runtime, "agents", HostSetup(specs, providers=providers),
                         job_id=wf_job)
    return {h.name: h for h in handles}


def driver_ctx(runtime: Runtime, job_id: str) -> ToolContext:
    """A job's root context in the driver: its events go to the job's log through the
    driver's node, its state to the state service."""
    return ToolContext(job_id=job_id, state=StateClient(runtime.node, job_id=job_id),
                       emit=lambda t, p: runtime.node.publish_nowait(t, p, job_id=job_id))


async def logged(runtime: Runtime, job_id: str, agents: dict[str, AgentHandle],
                 *roots: str) -> list[Event]:
    """The job's logged events under the workflows named `roots`."""
    await agents["planner"].ref.flush()  # the host's events (all the agents share it)
    return [e for e in await runtime.replay(job_id) if _under(e, roots)]


def _under(event: Event, roots: tuple[str, ...]) -> bool:
    branch = str(event.payload.get("branch", "")) if isinstance(event.payload, dict) else ""
    return any(branch == r or branch.startswith(r + "/") for r in roots)


def steps(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.payload["branch"], e.payload["step"], e.payload["status"]) for e in events
            if e.topic == "workflow.step.finished"]


def runs(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.payload["branch"], e.payload["status"]) for e in events
            if e.topic == "agent.run.finished"]


async def test_join_any_cancels_the_losing_run_in_its_actor(
        runtime: Runtime, wf_job: str, agents: dict[str, AgentHandle],
        server: LocalLLMServer) -> None:
    slow = Sequential("slow_path", [lambda s: "SLOW " + s, agents["slow"]])
    race = Parallel("race", {"slow": slow, "fast": agents["fast"]}, join="any")
    result = await race.run("go", ctx=driver_ctx(runtime, wf_job))
    assert result.ok and result.output == {"fast": "echo: go"}
    status = {c.agent: c.status for c in result.children}
    assert status == {"slow_path": RunStatus.cancelled, "fast": RunStatus.completed}
    events = await logged(runtime, wf_job, agents, "race")
    assert ("race/slow_path/slow", "cancelled") in runs(events)  # the actor stopped the run
    [join] = [e.payload for e in events if e.topic == "workflow.join"]
    assert join["taken"] == ["fast"]


async def test_sequential_parallel_and_conditional(
        runtime: Runtime, wf_job: str, agents: dict[str, AgentHandle],
        server: LocalLLMServer) -> None:
    ctx = driver_ctx(runtime, wf_job)
    seq = await Sequential("seq", [agents["planner"], agents["writer"]]).run("plan", ctx=ctx)
    assert seq.ok and seq.output == "echo: echo: plan"
    par = await Parallel("par", {"a": agents["a"], "b": agents["b"]}, concurrency=2).run(
        "fan", ctx=ctx)
    assert par.ok and par.output == {"a": "echo: fan", "b": "echo: fan"}
    cond = Conditional("triage", {"billing": agents["a"], "refunds": agents["b"]},
                       router=agents["router"])
    routed = await cond.run("I want my money back", ctx=ctx)
    assert routed.ok and routed.output == "echo: I want my money back"
    events = await logged(runtime, wf_job, agents, "seq", "par", "triage")
    got = steps(events)
    assert [s for s in got if s[0] == "seq"] == [("seq", "planner", "completed"),
                                                 ("seq", "writer", "completed")]
    assert sorted(s for s in got if s[0] == "par") == [("par", "a", "completed"),
                                                       ("par", "b", "completed")]
    assert [s for s in got if s[0] == "triage"] == [("triage", "router", "completed"),
                                                    ("triage", "refunds", "completed")]
    assert sorted(runs(events)) == sorted([
        ("seq/planner", "completed"), ("seq/writer", "completed"), ("par/a", "completed"),
        ("par/b", "completed"), ("triage/router", "completed"), ("triage/b", "completed")])
    [route] = [e.payload for e in events if e.topic == "workflow.route"]
    assert route["route"] == "refunds" and route["by"] == "router" and route["answer"] == \
        "Refunds."
    senders = {e.sender for e in events if e.topic == "agent.run.finished"}
    assert senders == {f"{wf_job}/agents"}  # the agents ran in the actor


async def test_loop_map_reduce_and_pipeline(
        runtime: Runtime, wf_job: str, agents: dict[str, AgentHandle],
        server: LocalLLMServer) -> None:
    ctx = driver_ctx(runtime, wf_job)
    loop = Loop("refine", agents["editor"], until=lambda r: r.text.count("echo") >= 3,
                max_iterations=5)
    looped = await loop.run("draft", ctx=ctx)
    assert looped.ok and looped.output == "echo: echo: echo: draft"
    escalated = await Loop("review", agents["editor"], max_iterations=5).run("ESCALATE", ctx=ctx)
    assert escalated.ok and escalated.reason == "escalated at iteration 1: needs a human"
    items = [f"item{i}" for i in range(6)]
    mr = MapReduce("mr", [agents["m0"], agents["m1"], agents["m2"]], reduce=agents["reducer"])
    reduced = await mr.run(json.dumps(items), ctx=ctx)
    mapped = [f"echo: {i}" for i in items]
    assert reduced.ok and reduced.output == "echo: " + json.dumps(mapped)
    pipe = Pipeline("pipe", [agents["s1"], agents["s2"]], queue_size=2)
    piped = await pipe.run(json.dumps(items[:4]), ctx=ctx)
    assert piped.ok and piped.output == [f"echo: echo: {i}" for i in items[:4]]
    events = await logged(runtime, wf_job, agents, "refine", "review", "mr", "pipe")
    assert [s for s in steps(events) if s[0] == "refine"] == [("refine", "editor",
                                                               "completed")] * 3
    mr_runs = [b for b, _ in runs(events) if b.startswith("mr/")]
    assert sorted(set(mr_runs)) == ["mr/m0", "mr/m1", "mr/m2", "mr/reducer"]
    assert len(mr_runs) == 7
    # Prefetch: a mapper was sent its next item while it still ran one (the driver's events),
    # and each mapper still ran one item at a time (its actor's events).
    assert most_held(events, "workflow.step", "mr", "step") == 2
    assert all(one_at_a_time(events, f"mr/{name}") for name in ("m0", "m1", "m2"))
    assert sorted(b for b, _ in runs(events) if b.startswith("pipe/")) == \
        ["pipe/s1"] * 4 + ["pipe/s2"] * 4
    [split] = [e.payload for e in events if e.topic == "workflow.split"]
    assert split == {"workflow": "mr", "items": 6, "branch": "mr"}


def most_held(events: list[Event], topic: str, branch: str, key: str) -> int:
    """The most items any one worker held at once: started minus finished, per worker, in the
    order the driver published them."""
    held: dict[str, int] = {}
    most = 0
    for e in events:
        if e.topic in (topic + ".started", topic + ".finished") and \
                e.payload.get("branch") == branch:
            worker = e.payload[key]
            held[worker] = held.get(worker, 0) + (1 if e.topic.endswith(".started") else -1)
            most = max(most, held[worker])
    return most


def one_at_a_time(events: list[Event], branch: str) -> bool:
    """The agent behind `branch` ran one run at a time (its actor's events, in its order)."""
    marks = [e.topic for e in events if e.topic in ("agent.run.started", "agent.run.finished")
             and e.payload.get("branch") == branch]
    return marks == ["agent.run.started", "agent.run.finished"] * (len(marks) // 2)


async def test_a_worker_swarm_of_actor_agents_queues_each_its_next_task(
        runtime: Runtime, wf_job: str, agents: dict[str, AgentHandle],
        server: LocalLLMServer) -> None:
    tasks = [f"task{i}" for i in range(8)]
    crew = WorkerSwarm("crew", [agents["m0"], agents["m1"]])
    result = await crew.run(json.dumps(tasks), ctx=driver_ctx(runtime, wf_job))
    assert result.ok and result.output == [f"echo: {t}" for t in tasks]
    events = await logged(runtime, wf_job, agents, "crew")
    assert sorted(e.payload["index"] for e in events
                  if e.topic == "swarm.task.finished") == list(range(8))
    assert most_held(events, "swarm.task", "crew", "worker") == 2  # one queued behind another
    assert one_at_a_time(events, "crew/m0") and one_at_a_time(events, "crew/m1")


@pytest.mark.parametrize("placed", ["driver", "another_host"])
async def test_a_cancelled_map_reduce_stops_the_items_queued_at_its_agents(
        runtime: Runtime, wf_job: str, agents: dict[str, AgentHandle],
        server: LocalLLMServer, placed: str) -> None:
    """Run from the driver, or hosted in another host (its mappers RemoteAgents there): the
    cancel reaches the runs in the mappers' host either way."""
    def asked() -> dict[str, float]:
        """When each item first reached the model (its text, in the last message sent)."""
        seen: dict[str, float] = {}
        for r in server.requests[before:]:
            body = r.body if isinstance(r.body, dict) else {}
            messages = body.get("input") or body.get("messages")  # Responses or Chat API
            found = re.search(r"SLOW (queued\d)", json.dumps(messages[-1])) if messages else None
            if found:
                seen.setdefault(found.group(1), r.wall_time)
        return seen

    async def cancel_once_two_run() -> None:
        for _ in range(1500):  # 30 s at most
            if len(asked()) >= 2:
                break
            await asyncio.sleep(0.02)
        ctx.cancel.cancel("enough")

    ctx = driver_ctx(runtime, wf_job)
    items = [f"SLOW queued{i}" for i in range(6)]  # each would take the model 2 s
    before = len(server.requests)
    name = f"mrcancel-{placed}"
    flow: Any = MapReduce(name, [agents["m0"], agents["m1"]])
    if placed == "another_host":
        [there] = spawn_host(runtime, "elsewhere", HostSetup(
            [AgentSpec(name="there", model="openai:m", stream=False)],
            providers={"openai": {"base_url": server.openai_base_url, "api_key": "sk-test"}}),
            job_id=wf_job)
        flow = HostedWorkflow(flow, on=there)
    canceller = asyncio.ensure_future(cancel_once_two_run())
    result = await flow.run(json.dumps(items), ctx=ctx)
    await canceller
    assert result.status == RunStatus.cancelled
    if placed == "another_host":
        await there.ref.flush()
    events = await logged(runtime, wf_job, agents, name)
    assert most_held(events, "workflow.step", name, "step") == 2  # items 1 and 3 queued
    started = {e.payload["index"] for e in events if e.topic == "workflow.step.started"}
    assert started == {0, 1, 2, 3}  # items 4 and 5 were never sent
    assert {status for _, status in runs(events)} <= {"cancelled"}  # none ran to its end
    # Items 0 and 2 were running; 1 and 3, queued behind them, never reached the model: the
    # cancels of one agent host leave in one batch, so the run ahead of a queued one cannot
    # end and let it start before its own cancel has landed.
    assert set(asked()) == {"queued0", "queued2"}


async def test_three_deep_with_events_by_branch(
        runtime: Runtime, wf_job: str, agents: dict[str, AgentHandle],
        server: LocalLLMServer) -> None:
    loop = Loop("refine", agents["editor"], until=lambda r: r.text.count("echo") >= 3,
                max_iterations=4)
    fan = Parallel("fan", {"refine": loop, "quick": agents["quick"]})
    outer = Sequential("outer", [agents["planner"], fan, agents["closer"]])
    result = await outer.run("task", ctx=driver_ctx(runtime, wf_job))
    assert result.ok
    assert result.children[1].output == {"refine": "echo: echo: echo: task",
                                         "quick": "echo: echo: task"}
    events = await logged(runtime, wf_job, agents, "outer")
    assert sorted(runs(events)) == sorted([
        ("outer/planner", "completed"), ("outer/fan/refine/editor", "completed"),
        ("outer/fan/refine/editor", "completed"), ("outer/fan/quick", "completed"),
        ("outer/closer", "completed")])
    assert ("outer/fan/refine", "editor", "completed") in steps(events)
    assert ("outer/fan", "refine", "completed") in steps(events)
    finished = [(e.payload["branch"], e.payload["status"]) for e in events
                if e.topic == "workflow.finished"]
    assert finished == [("outer/fan/refine", "completed"), ("outer/fan", "completed"),
                        ("outer", "completed")]
    calls = [e for e in events if e.topic == "agent.llm.response"]
    assert {e.payload["branch"] for e in calls} == {
        "outer/planner", "outer/fan/refine/editor", "outer/fan/quick", "outer/closer"}


async def test_a_resumed_job_does_not_call_the_model_again(
        runtime: Runtime, wf_job: str, agents: dict[str, AgentHandle],
        server: LocalLLMServer) -> None:
    failures: list[str] = []

    def flaky(s: str) -> str:
        if not failures:
            failures.append(s)
            raise RuntimeError("the disk was full")
        return s + " (checked)"

    def workflow() -> Sequential:
        return Sequential("job", [agents["first"], agents["second"], flaky, agents["third"]])

    server.clear_requests()
    failed = await workflow().run("resume me", ctx=driver_ctx(runtime, wf_job))
    assert failed.status == RunStatus.failed and "the disk was full" in failed.reason
    assert len(server.requests) == 2
    done = await workflow().run("resume me", ctx=driver_ctx(runtime, wf_job), resume=True)
    assert done.ok and done.output == "echo: echo: echo: resume me (checked)"
    assert len(server.requests) == 3  # only the third agent called the model again
    events = await logged(runtime, wf_job, agents, "job")
    skipped = [e.payload["step"] for e in events if e.topic == "workflow.step.skipped"]
    assert skipped == ["first", "second"]
