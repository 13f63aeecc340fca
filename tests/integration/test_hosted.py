"""Workflows run in the host of their agents (llmspell.supervisors.hosted), against the local
LLM server through the real openai SDK: the same results and events as in the driver, its
steps on that host as local messages, the others as asks, cancel and resume across the two."""

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
from llmspell.agents import AgentSpec, RunStatus
from llmspell.agents.spec import SpecError
from llmspell.llm.server import LocalLLMServer
from llmspell.runtime.errors import ActorUnavailable, AskTimeout, RemoteError
from llmspell.runtime.events import Event
from llmspell.runtime.messages import new_id
from llmspell.supervisors.hosted import HostedWorkflow
from llmspell.supervisors.workers import prefetch_for
from llmspell.supervisors.workflows import MapReduce, Parallel, Sequential
from llmspell.supervisors.workflows._core import to_step
from llmspell.tools import tool
from tests.integration.shared import module_job, module_llm_server
from tests.integration.test_workflows_wire import driver_ctx, most_held, one_at_a_time, runs
from tests.waiting import until

pytestmark = pytest.mark.ray

SCENARIO: dict[str, Any] = {"rules": [
    {"match": {"contains": "SLOW"}, "latency_ms": 2000, "reply": "too late"},
    {"match": {"contains": "FREEZE", "after_tool_result": False},
     "reply": {"tool_calls": [{"name": "freeze", "arguments": {}}]}},
]}


@tool
async def freeze() -> str:
    """Block the host's event loop, as a stuck tool or library call would."""
    time.sleep(FROZEN_S)  # noqa: ASYNC251 - blocking the loop is the point
    return "thawed"


FROZEN_S = 15.0
NEAR = ("m0", "m1", "reducer", "first", "second", "third")


server = module_llm_server(SCENARIO)
job = module_job("hosted")


@pytest.fixture(scope="module")
def agents(runtime: Runtime, job: str, server: LocalLLMServer) -> dict[str, AgentHandle]:
    """Two hosts: the workflows run on `near`; `far` has an agent they reach by an ask."""
    providers: dict[str, Any] = {"openai": {"base_url": server.openai_base_url,
                                            "api_key": "sk-test"}}

    def host(name: str, agents: tuple[str, ...]) -> list[AgentHandle]:
        specs = [AgentSpec(name=n, model="openai:m", stream=False) for n in agents]
        return spawn_host(runtime, name, HostSetup(specs, providers=providers), job_id=job)

    return {h.name: h for h in [*host("near", NEAR), *host("far", ("remote",))]}


async def logged(runtime: Runtime, job: str, agents: dict[str, AgentHandle],
                 root: str) -> list[Event]:
    for handle in (agents["m0"], agents["remote"]):
        await handle.ref.flush()
    return [e for e in await runtime.replay(job)
            if str((e.payload or {}).get("branch", "")).split("/")[0] == root]


async def local_messages(agent: AgentHandle) -> int:
    stats = await agent.runtime.ask(agent.host, "host.stats", {})
    return int(stats["local_messages"])


async def test_a_hosted_map_reduce_runs_in_the_host_its_steps_as_local_messages(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle]) -> None:
    items = [f"item{i}" for i in range(6)]
    flow = MapReduce("hmr", [agents["m0"], agents["m1"]], reduce=agents["reducer"])
    before = await local_messages(agents["m0"])
    result = await HostedWorkflow(flow, on=agents["m0"]).run(
        json.dumps(items), ctx=driver_ctx(runtime, job))

    assert result.ok, result.reason
    assert [c.text for c in result.children[:6]] == [f"echo: {i}" for i in items]
    assert result.text.startswith("echo: ")  # the reducer's answer
    assert await local_messages(agents["m0"]) - before == 7  # 6 items and the reduce: no Ray
    events = await logged(runtime, job, agents, "hmr")
    host = agents["m0"].host
    assert {e.sender for e in events if e.topic.startswith("workflow.")} == {host}
    assert [e.payload["status"] for e in events if e.topic == "workflow.finished"] == \
        ["completed"]
    assert sorted(e.payload["index"] for e in events
                  if e.topic == "workflow.step.finished" and e.payload["branch"] == "hmr") \
        == list(range(7))  # the items, then the reduce
    assert most_held(events, "workflow.step", "hmr", "step") == 2  # prefetch, as in a driver
    assert one_at_a_time(events, "hmr/m0") and one_at_a_time(events, "hmr/m1")


async def test_a_hosted_workflow_reaches_an_agent_of_another_host_by_an_ask(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle]) -> None:
    flow = Sequential("hseq", [agents["first"], agents["remote"], agents["second"]])
    result = await HostedWorkflow(flow, on=agents["first"]).run("go",
                                                                ctx=driver_ctx(runtime, job))
    assert result.ok and result.output == "echo: echo: echo: go"
    events = await logged(runtime, job, agents, "hseq")
    ran = {e.payload["branch"]: e.sender for e in events if e.topic == "agent.run.finished"}
    assert ran == {"hseq/first": agents["first"].host, "hseq/remote": agents["remote"].host,
                   "hseq/second": agents["first"].host}


async def test_a_cancel_in_the_driver_stops_the_hosted_run_and_its_queued_items(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle],
        server: LocalLLMServer) -> None:
    def asked() -> int:
        return sum("SLOW hq" in json.dumps(r.body) for r in server.requests)

    async def cancel_once_two_run() -> float:
        for _ in range(1500):  # 30 s at most
            if asked() >= 2:
                break
            await asyncio.sleep(0.02)
        ctx.cancel.cancel("enough")
        return time.monotonic()

    ctx = driver_ctx(runtime, job)
    canceller = asyncio.ensure_future(cancel_once_two_run())
    flow = MapReduce("hcancel", [agents["m0"], agents["m1"]])
    result = await HostedWorkflow(flow, on=agents["m0"]).run(
        json.dumps([f"SLOW hq{i}" for i in range(6)]), ctx=ctx)
    returned = time.monotonic()
    cancelled_at = await canceller
    assert result.status == RunStatus.cancelled
    assert returned - cancelled_at < 1.5  # the model calls take 2 s: they were abandoned
    events = await logged(runtime, job, agents, "hcancel")
    assert {status for _, status in runs(events)} <= {"cancelled"}
    started = {e.payload["index"] for e in events if e.topic == "workflow.step.started"}
    assert started <= {0, 1, 2, 3}  # two running, two queued behind them; the rest never sent


async def test_a_hosted_run_resumes_what_a_run_in_the_driver_checkpointed(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle], server: LocalLLMServer,
        tmp_path: Path) -> None:
    flag = tmp_path / "failed-once"

    def flaky(s: str) -> str:  # runs in the driver first, then in the host: a file remembers
        if not flag.exists():
            flag.write_text("x")
            raise RuntimeError("the disk was full")
        return s + " (checked)"

    def workflow() -> Sequential:
        return Sequential("hjob", [agents["first"], agents["second"], flaky, agents["third"]])

    server.clear_requests()
    failed = await workflow().run("resume me", ctx=driver_ctx(runtime, job))
    assert failed.status == RunStatus.failed and "the disk was full" in failed.reason
    assert len(server.requests) == 2
    done = await HostedWorkflow(workflow(), on=agents["first"]).run(
        "resume me", ctx=driver_ctx(runtime, job), resume=True)
    assert done.ok and done.output == "echo: echo: echo: resume me (checked)"
    assert len(server.requests) == 3  # only the third agent called the model again
    events = await logged(runtime, job, agents, "hjob")
    skipped = [(e.sender, e.payload["step"]) for e in events
               if e.topic == "workflow.step.skipped"]
    assert skipped == [(agents["first"].host, "first"), (agents["first"].host, "second")]


async def test_what_cannot_travel_or_be_found_is_refused_by_name(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle]) -> None:
    lock = threading.Lock()

    def guarded(s: str) -> str:
        with lock:
            return s

    with pytest.raises(SpecError, match=r"workflow 'locked' cannot be sent to host .*lock"):
        HostedWorkflow(Sequential("locked", [agents["first"], guarded]), on=agents["first"])

    ghost = AgentHandle(runtime, agents["first"].host, "ghost")
    hosted = HostedWorkflow(Sequential("haunted", [agents["first"], ghost]), on=agents["first"])
    with pytest.raises(RemoteError, match=r"cannot load the workflow.*no agent 'ghost'"):
        await hosted.run("boo", ctx=driver_ctx(runtime, job))
    # the host lives on: the next run there completes
    fine = HostedWorkflow(Sequential("after", [agents["first"]]), on=agents["first"])
    assert (await fine.run("still here", ctx=driver_ctx(runtime, job))).ok


async def test_a_hosted_run_the_caller_stops_waiting_for_is_cancelled_in_the_host(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle]) -> None:
    flow = Sequential("htimeout", [lambda s: "SLOW " + s, agents["first"]])  # the model: 2 s
    hosted = HostedWorkflow(flow, on=agents["first"], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(AskTimeout):
        await hosted.run("wait", ctx=driver_ctx(runtime, job))
    assert time.monotonic() - started < 1.5

    async def finished() -> list[str]:
        events = await logged(runtime, job, agents, "htimeout")
        return [e.payload["status"] for e in events if e.topic == "workflow.finished"]

    assert await until(finished, 10.0, "the hosted run's end in the log") == ["cancelled"]


async def test_a_hosted_run_without_a_bound_outlives_the_default_ask_timeout(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A job's root runs hosted with no bound of its own: one ask for the whole job, which must
    # not end at the runtime's ask timeout (60 s by default; 0.5 s here) when the job is long.
    monkeypatch.setattr(runtime.node.settings, "ask_timeout_s", 0.5)
    flow = Sequential("hlong", [lambda s: "SLOW " + s, agents["second"]])  # the model: 2 s
    result = await HostedWorkflow(flow, on=agents["second"], timeout=None).run(
        "on", ctx=driver_ctx(runtime, job))
    assert result.ok and result.output == "too late"


async def test_a_hosted_run_takes_an_input_and_gives_a_result_over_the_frame_cap(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle]) -> None:
    # In the driver each item travels alone; hosted, the whole input goes in one message and
    # the whole result comes back in one: both over max_frame_bytes (4 MiB), as large jobs are.
    cap = runtime.settings.max_frame_bytes
    items = [f"{i}" + "x" * (cap // 3) for i in range(4)]
    flow = MapReduce("hbig", [agents["m0"], agents["m1"]])
    result = await HostedWorkflow(flow, on=agents["m0"]).run(json.dumps(items),
                                                            ctx=driver_ctx(runtime, job))
    assert result.ok, result.reason
    assert [c.text for c in result.children] == [f"echo: {i}" for i in items]


async def test_a_host_that_stops_answering_pings_fails_the_run_as_unavailable(
        runtime: Runtime, server: LocalLLMServer) -> None:
    job = f"hosted-frozen-{new_id()[-8:]}"
    [agent] = spawn_host(runtime, "frozen", HostSetup(
        [AgentSpec(name="stuck", model="openai:m", stream=False, tools=["freeze"])],
        tools=[freeze], providers={"openai": {"base_url": server.openai_base_url,
                                              "api_key": "sk-test"}}), job_id=job)
    agent.restart_wait_s = 30.0  # a hung host is not waited for: it may still be at work
    try:
        hosted = HostedWorkflow(Sequential("hfrozen", [agent]), on=agent, timeout=None)
        hosted.ping_every_s, hosted.ping_timeout_s = 0.2, 1.0
        started = time.monotonic()
        with pytest.raises(ActorUnavailable, match=r"hung: no answer to a ping within 1s"):
            await hosted.run("FREEZE", ctx=driver_ctx(runtime, job))
        assert time.monotonic() - started < FROZEN_S / 2  # not when the tool returns
    finally:
        runtime.kill_job(job)


def lone(runtime: Runtime, server: LocalLLMServer, name: str, *, restart_wait_s: float,
         max_restarts: int = 0) -> tuple[str, AgentHandle]:
    """A job of its own with one agent in one host, its handle waiting `restart_wait_s` for
    the host to come back after a death (Ray restarts it in place up to `max_restarts`)."""
    job = f"hosted-{name}-{new_id()[-8:]}"
    [agent] = spawn_host(runtime, name, HostSetup(
        [AgentSpec(name="solo", model="openai:m", stream=False)],
        providers={"openai": {"base_url": server.openai_base_url, "api_key": "sk-test"}}),
        job_id=job, max_restarts=max_restarts)
    return job, AgentHandle(runtime, agent.host, agent.name, restart_wait_s=restart_wait_s)


def calls(server: LocalLLMServer, text: str) -> int:
    return sum(text in json.dumps(r.body) for r in server.requests)


async def test_a_hosted_run_whose_host_is_not_back_in_time_fails_naming_the_wait(
        runtime: Runtime, server: LocalLLMServer) -> None:
    job, agent = lone(runtime, server, "gone", restart_wait_s=1.0)
    try:
        run = asyncio.ensure_future(HostedWorkflow(Sequential("hgone", [agent]), on=agent).run(
            "SLOW gone", ctx=driver_ctx(runtime, job)))
        await until(lambda: calls(server, "SLOW gone") == 1, 30, "the step's model call")
        ray.kill(runtime.node.handle(agent.host), no_restart=True)
        with pytest.raises(ActorUnavailable, match=r"ActorDiedError.*; not back within 1s"):
            await asyncio.wait_for(run, 30)
        lost = [e.payload for e in await runtime.replay(job, pattern="workflow.hosted.*")]
        assert [(p["host"], p["attempt"]) for p in lost] == [(agent.host, 1)]
    finally:
        runtime.kill_job(job)


async def test_a_hosted_run_that_keeps_killing_its_host_is_given_up(
        runtime: Runtime, server: LocalLLMServer) -> None:
    job, agent = lone(runtime, server, "poison", restart_wait_s=30.0, max_restarts=5)
    try:
        hosted = HostedWorkflow(Sequential("hpoison", [agent]), on=agent)
        hosted.max_resumes = 1  # the default, 2, only adds a third round of the same
        run = asyncio.ensure_future(hosted.run("SLOW poison", ctx=driver_ctx(runtime, job)))
        for death in (1, 2):  # each attempt's model call, then a crash under it
            await until(lambda n=death: calls(server, "SLOW poison") == n or run.done(), 60,
                        f"attempt {death}'s model call")
            assert not run.done(), run.exception()
            ray.kill(runtime.node.handle(agent.host), no_restart=False)
        with pytest.raises(ActorUnavailable, match="died 2 times under this run: not resumed"):
            await asyncio.wait_for(run, 60)
        events = await runtime.replay(job, pattern="workflow.hosted.*")
        assert [(e.topic, e.payload["attempt"]) for e in events] == [
            ("workflow.hosted.lost", 1), ("workflow.hosted.resumed", 1)]
    finally:
        runtime.kill_job(job)


async def test_a_hosted_workflow_is_a_step_that_runs_side_by_side(
        runtime: Runtime, job: str, agents: dict[str, AgentHandle]) -> None:
    inner = HostedWorkflow(Sequential("inner", [agents["m0"]]), on=agents["m0"])
    assert prefetch_for(to_step(inner), None) == 0  # no item queued behind a running one
    outer = Parallel("houter", {"a": inner, "b": agents["m1"]})
    result = await outer.run("both", ctx=driver_ctx(runtime, job))
    assert result.ok and result.output == {"a": "echo: both", "b": "echo: both"}
    events = await logged(runtime, job, agents, "houter")
    assert ("houter/inner/m0", "completed") in runs(events)
