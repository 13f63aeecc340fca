"""A Parallel over agents on several hosts runs a share on each (llmspell.supervisors.workflows
.spread), against the local LLM server through the real openai SDK: the same result as from
the driver, each branch a local message in its host, each host's share of the concurrency
limit, checkpoints that resume across the two placements, cancel, and a host lost mid-run."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from llmspell import Runtime
from llmspell.actors.agent_actor import AgentHandle, HostSetup, spawn_host
from llmspell.actors.host import HOSTED_SIGNAL
from llmspell.agents import AgentSpec, RunStatus
from llmspell.llm.server import LocalLLMServer
from llmspell.runtime.events import Event
from llmspell.runtime.hooks import HookContext, HookPoint, HookRegistry
from llmspell.supervisors.merge import MergeRules
from llmspell.supervisors.workflows import Parallel
from llmspell.supervisors.workflows.spread import plan_shares
from tests.integration.shared import module_job, module_llm_server
from tests.integration.test_workflows_wire import driver_ctx
from tests.waiting import until

pytestmark = pytest.mark.ray

SCENARIO: dict[str, Any] = {"rules": [
    {"match": {"contains": "SLOW"}, "latency_ms": 2000, "reply": "too late"},
    {"match": {"model": "^slow$"}, "latency_ms": 2000, "reply": "slowly"},
]}
EAST = ("e0", "e1", "e2")
WEST = ("w0", "w1")

server = module_llm_server(SCENARIO)
job = module_job("spread")


def host(runtime: Runtime, job: str, server: LocalLLMServer, name: str,
         agents: tuple[str, ...], model: str = "m") -> list[AgentHandle]:
    providers: dict[str, Any] = {"openai": {"base_url": server.openai_base_url,
                                            "api_key": "sk-test"}}
    specs = [AgentSpec(name=n, model=f"openai:{model}", stream=False) for n in agents]
    return spawn_host(runtime, name, HostSetup(specs, providers=providers), job_id=job)


@pytest.fixture(scope="module")
def agents(runtime: Runtime, job: str, server: LocalLLMServer) -> dict[str, AgentHandle]:
    return {h.name: h for h in [*host(runtime, job, server, "east", EAST),
                                *host(runtime, job, server, "west", WEST)]}


def fan(name: str, agents: dict[str, AgentHandle], **options: Any) -> Parallel:
    return Parallel(name, {n: agents[n] for n in (*EAST, *WEST)}, concurrency=3, **options)


async def logged(runtime: Runtime, job: str, agents: dict[str, AgentHandle],
                 root: str) -> list[Event]:
    for agent in {a.host: a for a in agents.values()}.values():  # one per host
        await agent.ref.flush()
    return [e for e in await runtime.replay(job)
            if str((e.payload or {}).get("branch", "")).split("/")[0] == root]


async def local_messages(agent: AgentHandle) -> int:
    stats = await agent.runtime.ask(agent.host, "host.stats", {})
    return int(stats["local_messages"])


def most_at_once(events: list[Event], sender: str) -> int:
    """The most steps that one sender had running at once, by its events in its order."""
    running = most = 0
    for e in events:
        if e.sender == sender and e.topic in ("workflow.step.started",
                                              "workflow.step.finished"):
            running += 1 if e.topic.endswith("started") else -1
            most = max(most, running)
    return most


def handed(events: list[Event], host: str) -> int:
    """The slots handed over to `host`'s share by the ones that finished before it."""
    return sum(to["slots"] for e in events if e.topic == "workflow.spread.handover"
               for to in e.payload["to"] if to["host"] == host)


async def test_each_host_runs_its_share_as_local_messages_with_its_share_of_the_limit(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle]) -> None:
    east, west = agents["e0"].host, agents["w0"].host
    before = {h: await local_messages(agents[a]) for h, a in ((east, "e0"), (west, "w0"))}
    result = await fan("spread1", agents).run("go", ctx=driver_ctx(runtime, job))

    assert result.ok, result.reason
    assert result.output == {n: "echo: go" for n in (*EAST, *WEST)}
    assert [c.agent for c in result.children] == [*EAST, *WEST]  # in the branches' order
    assert await local_messages(agents["e0"]) - before[east] == 3  # no Ray call per branch
    assert await local_messages(agents["w0"]) - before[west] == 2
    events = await logged(runtime, job, agents, "spread1")
    spread = [e.payload for e in events if e.topic == "workflow.spread"]
    assert spread == [{"workflow": "spread1", "branch": "spread1", "shares": [
        {"host": east, "branches": 3, "concurrency": 2},
        {"host": west, "branches": 2, "concurrency": 1}]}]
    steps = {e.payload["step"]: (e.sender, e.payload["index"]) for e in events
             if e.topic == "workflow.step.finished"}
    assert steps == {"e0": (east, 0), "e1": (east, 1), "e2": (east, 2), "w0": (west, 3),
                     "w1": (west, 4)}
    # A share may be given the other's slots once that one is done (see the handover test)
    assert 2 <= most_at_once(events, east) <= 2 + handed(events, east)
    assert 1 <= most_at_once(events, west) <= 1 + handed(events, west)
    finished = [e for e in events if e.topic == "workflow.finished"]
    assert [(e.sender, e.payload["status"]) for e in finished] == \
        [(runtime.node.identity, "completed")]  # the Parallel itself: in the driver


async def test_spread_false_keeps_every_branch_call_in_the_driver(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle]) -> None:
    result = await fan("kept", agents, spread=False).run("go", ctx=driver_ctx(runtime, job))
    assert result.ok, result.reason
    events = await logged(runtime, job, agents, "kept")
    assert not [e for e in events if e.topic == "workflow.spread"]
    assert {e.sender for e in events if e.topic.startswith("workflow.step.")} == \
        {runtime.node.identity}


@pytest.mark.parametrize("first_spread", [False, True])
async def test_a_run_resumes_what_a_run_in_the_other_placement_checkpointed(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle], server: LocalLLMServer,
        first_spread: bool) -> None:
    name = f"resume{int(first_spread)}"
    server.clear_requests()
    first = await fan(name, agents, spread=first_spread).run("again", ctx=driver_ctx(runtime, job))
    assert first.ok and len(server.requests) == 5
    again = await fan(name, agents, spread=not first_spread).run(
        "again", ctx=driver_ctx(runtime, job), resume=True)
    assert again.ok and again.output == first.output
    assert len(server.requests) == 5  # no branch called the model again
    events = await logged(runtime, job, agents, name)
    skipped = sorted(e.payload["index"] for e in events if e.topic == "workflow.step.skipped")
    assert skipped == [0, 1, 2, 3, 4]


async def test_a_cancel_in_the_driver_stops_every_share(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle],
        server: LocalLLMServer) -> None:
    server.clear_requests()
    ctx = driver_ctx(runtime, job)
    run = asyncio.ensure_future(fan("stopped", agents).run("SLOW stop", ctx=ctx))
    await until(lambda: len(server.requests) >= 3, 30, "three branches calling the model")
    ctx.cancel.cancel("enough")
    cancelled_at = time.monotonic()
    result = await run
    assert time.monotonic() - cancelled_at < 1.5  # the model calls take 2 s: abandoned
    assert result.status == RunStatus.cancelled
    assert {c.status for c in result.children} == {RunStatus.cancelled}
    assert len(server.requests) == 3  # the two left never started


async def test_a_host_lost_mid_run_fails_its_share_by_name_and_the_others_finish(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle],
        server: LocalLLMServer) -> None:
    doomed = {h.name: h for h in host(runtime, job, server, "doomed", ("d0", "d1"))}
    flow = Parallel("lost", {"e0": agents["e0"], "e1": agents["e1"], **doomed})
    server.clear_requests()
    run = asyncio.ensure_future(flow.run("SLOW lost", ctx=driver_ctx(runtime, job)))
    await until(lambda: len(server.requests) >= 4, 30, "every branch calling the model")
    ray.kill(runtime.node.handle(doomed["d0"].host), no_restart=True)
    result = await asyncio.wait_for(run, 30)

    assert result.status == RunStatus.failed
    status = {c.agent: c.status for c in result.children}
    assert status == {"e0": RunStatus.completed, "e1": RunStatus.completed,
                      "d0": RunStatus.failed, "d1": RunStatus.failed}
    lost = result.children[2].reason
    assert lost.startswith(f"its share of the branches on host {doomed['d0'].host!r} did not "
                           "come back: ") and "ActorDiedError" in lost
    assert "2 of 4 branches did not complete: d0 (failed" in result.reason


async def test_the_callers_deadline_bounds_every_share(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle],
        server: LocalLLMServer) -> None:
    ctx = driver_ctx(runtime, job)
    ctx.deadline = time.monotonic() + 0.5
    started = time.monotonic()
    result = await fan("late", agents).run("SLOW late", ctx=ctx)  # each call takes 2 s
    assert time.monotonic() - started < 1.9  # before any model call could answer
    assert result.status == RunStatus.failed
    assert not [c for c in result.children if c.ok]
    assert "5 of 5 branches did not complete" in result.reason, result.reason


async def test_a_finished_shares_slots_go_to_a_share_still_running(
        runtime: Runtime, job: str, server: LocalLLMServer) -> None:
    """Three slots over a host of two quick agents (one slot) and a host of three whose model
    answers after 2 s (two): once the quick share is done, its slot goes to the slow one,
    which then runs its three branches at once instead of in two rounds."""
    quick = {h.name: h for h in host(runtime, job, server, "quick", ("q0", "q1"))}
    lag = {h.name: h for h in host(runtime, job, server, "lag", ("l0", "l1", "l2"), "slow")}
    flow = Parallel("handover", {**quick, **lag}, concurrency=3)
    result = await flow.run("go", ctx=driver_ctx(runtime, job))

    assert result.ok, result.reason
    assert result.output == {"q0": "echo: go", "q1": "echo: go", "l0": "slowly",
                             "l1": "slowly", "l2": "slowly"}
    events = await logged(runtime, job, {**quick, **lag}, "handover")
    q, slow = quick["q0"].host, lag["l0"].host
    assert [e.payload["shares"] for e in events if e.topic == "workflow.spread"] == [[
        {"host": q, "branches": 2, "concurrency": 1},
        {"host": slow, "branches": 3, "concurrency": 2}]]
    assert [e.payload for e in events if e.topic == "workflow.spread.handover"] == [{
        "workflow": "handover", "branch": "handover", "from": [q],
        "to": [{"host": slow, "slots": 1}]}]
    assert most_at_once(events, q) == 1 and most_at_once(events, slow) == 3
    # A signal to a run that is over, or never was, is dropped (an ask says so).
    assert await runtime.ask(slow, HOSTED_SIGNAL, {"run_id": "no-such-run", "name": "slots",
                                                   "data": 1}) is False


async def test_a_share_resumed_after_its_hosts_death_keeps_the_slots_handed_to_it(
        runtime: Runtime, job: str, server: LocalLLMServer) -> None:
    """As the handover test, with the slow host killed once its three branches run (one of
    them on the slot handed over): Ray restarts it, the share resumes there and is told its
    handed slots again, so it runs the three at once again, not two and then one."""
    quick = {h.name: h for h in host(runtime, job, server, "quick2", ("r0", "r1"))}
    providers: dict[str, Any] = {"openai": {"base_url": server.openai_base_url,
                                            "api_key": "sk-test"}}
    spawned = spawn_host(runtime, "lag2", HostSetup(
        [AgentSpec(name=n, model="openai:slow", stream=False) for n in ("m0", "m1", "m2")],
        providers=providers), job_id=job, max_restarts=1)
    lag = {h.name: AgentHandle(runtime, h.host, h.name, restart_wait_s=60.0) for h in spawned}
    slow = lag["m0"].host
    seen = len(server.requests)
    run = asyncio.ensure_future(Parallel("resumed", {**quick, **lag}, concurrency=3).run(
        "go", ctx=driver_ctx(runtime, job)))
    await until(lambda: sum(r.model == "slow" for r in server.requests[seen:]) == 3 or
                run.done(), 30, "the slow share's three calls")
    ray.kill(runtime.node.handle(slow), no_restart=False)
    result = await asyncio.wait_for(run, 60)

    assert result.ok, result.reason
    assert sum(r.model == "slow" for r in server.requests[seen:]) == 6  # each run twice
    events = await logged(runtime, job, {**quick, **lag}, "resumed")
    assert handed(events, slow) == 1
    back = next(e.seq for e in events if e.topic == "workflow.hosted.resumed")
    assert most_at_once([e for e in events if e.seq > back], slow) == 3


def test_only_a_join_of_all_over_actor_agents_on_several_hosts_spreads(
        agents: dict[str, AgentHandle]) -> None:
    assert plan_shares(fan("p", agents)) is not None
    assert plan_shares(fan("p", agents, join="any")) is None
    assert plan_shares(fan("p", agents, allow_partial=True)) is None
    assert plan_shares(Parallel("p", [agents[n] for n in EAST])) is None  # one host
    assert plan_shares(Parallel("p", [agents["e0"], agents["w0"]], concurrency=1)) is None
    assert plan_shares(Parallel("p", {"e0": agents["e0"], "w0": agents["w0"],
                                      "f": lambda s: s})) is None


async def test_a_share_that_does_not_pickle_runs_from_the_driver(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle], tmp_path: Path) -> None:
    lock = threading.Lock()

    def locked_sum(old: Any, new: Any) -> Any:
        with lock:
            return (old or 0) + new

    flow = fan("unsent", agents, merge=MergeRules({"job:total": locked_sum}))
    assert plan_shares(flow) is None
    result = await flow.run("go", ctx=driver_ctx(runtime, job))
    assert result.ok, result.reason
    events = await logged(runtime, job, agents, "unsent")
    assert {e.sender for e in events if e.topic.startswith("workflow.step.")} == \
        {runtime.node.identity}
    assert json.dumps(result.output)  # the same output as a spread run


@pytest.mark.parametrize("spread", [None, True])
async def test_the_callers_workflow_step_hooks_keep_the_branches_unless_told_to_spread(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle], spread: bool | None
        ) -> None:
    ctx = driver_ctx(runtime, job)
    ctx.hooks = HookRegistry()
    seen: list[str] = []

    def note(hook: HookContext) -> None:
        seen.append(hook.payload["step"])

    ctx.hooks.register(HookPoint.before_workflow_step, note)
    name = f"hooked{int(bool(spread))}"
    result = await fan(name, agents, spread=spread).run("go", ctx=ctx)
    assert result.ok, result.reason
    events = await logged(runtime, job, agents, name)
    senders = {e.sender for e in events if e.topic.startswith("workflow.step.")}
    if spread is None:  # the hook is the caller's: the branches stay where it runs
        assert sorted(seen) == [*EAST, *WEST] and senders == {runtime.node.identity}
    else:  # spread all the same: the hosts' hooks (none here) see the steps
        assert seen == [] and senders == {agents["e0"].host, agents["w0"].host}
