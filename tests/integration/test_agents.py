"""Agents in actors against the local LLM server, through the real SDKs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmspell import Runtime
from llmspell.actors.agent_actor import HostSetup, spawn_agent, spawn_host
from llmspell.agents import AgentSpec, RunResult, RunStatus
from llmspell.llm.server import LocalLLMServer
from llmspell.runtime.events import Event
from tests.integration.agent_tools import get_weather, transfer, whoami

pytestmark = pytest.mark.ray

SCENARIO = {"rules": [
    {"match": {"contains": "weather", "after_tool_result": False},
     "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}},
                              {"name": "whoami", "arguments": {}}]}},
    {"match": {"contains": "weather", "after_tool_result": True},
     "reply": "It is sunny in Paris."},
    {"match": {"contains": "research", "tools": ["researcher"], "after_tool_result": False},
     "reply": {"tool_calls": [{"name": "researcher", "arguments": {"input": "weather please"}}]}},
    {"match": {"contains": "research", "after_tool_result": True},
     "reply": "The researcher says: sunny."},
    {"match": {"contains": "pay", "after_tool_result": False},
     "reply": {"tool_calls": [{"name": "transfer",
                               "arguments": {"amount": 7, "path": "__PATH__"}}]}},
    {"match": {"contains": "pay", "after_tool_result": True}, "reply": "Payment done."},
]}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(SCENARIO) as s:
        yield s


def providers(server: LocalLLMServer) -> dict[str, Any]:
    return {"openai": {"base_url": server.openai_base_url, "api_key": "sk-test"},
            "anthropic": {"base_url": server.anthropic_base_url, "api_key": "sk-ant-test"}}


@pytest.mark.parametrize("model", ["openai:gpt-test", "anthropic:claude-test"])
async def test_agent_calls_two_tools_in_parallel_through_the_real_sdk(
        runtime: Runtime, job_id: str, server: LocalLLMServer, model: str) -> None:
    agent = spawn_agent(runtime, {"name": "weather", "model": model,
                                  "tools": ["get_weather", "whoami"]},
                        job_id=job_id, tools=[get_weather, whoami], providers=providers(server))
    result = await agent.run("what is the weather?", timeout=60)
    assert result.status == RunStatus.completed and result.output == "It is sunny in Paris."
    assert result.turns == 2 and result.usage.input_tokens > 0
    tool_results = [p for m in result.messages for p in m.parts if p.kind == "tool_result"]
    assert sorted(r.content for r in tool_results)[1] == "sunny in Paris"
    assert int(sorted(r.content for r in tool_results)[0]) != os.getpid()  # ran in the actor


async def test_one_of_two_parallel_tools_runs_in_a_pool_of_three_replicas(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    pool = runtime.spawn_pool("pids", [whoami], job_id=job_id, min_replicas=3, max_replicas=3)
    await pool.wait_ready()
    agent = spawn_agent(runtime, {"name": "pooled", "model": "openai:m",
                                  "tools": ["get_weather", "whoami"]},
                        job_id=job_id, tools=[get_weather, whoami], providers=providers(server),
                        pools={"whoami": pool.address})
    result = await agent.run("what is the weather?", timeout=60)
    assert result.ok and result.output == "It is sunny in Paris."
    contents = {r.call_id: r.content for m in result.messages for r in m.parts
                if r.kind == "tool_result"}
    assert "sunny in Paris" in contents.values()
    stats = await pool.stats()
    assert stats["replicas"] == 3 and stats["completed"] == 1  # whoami ran in the pool
    status = await agent.ref.ping()
    replica_pid = int(next(c for c in contents.values() if c.isdigit()))
    assert replica_pid != status["pid"]  # not in the agent's process


async def test_concurrent_requests_to_one_agent_never_interleave(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    agent = spawn_agent(runtime, {"name": "chat", "model": "openai:m"}, job_id=job_id,
                        providers=providers(server))
    results = await asyncio.gather(*(agent.run(f"message {i}", timeout=60) for i in range(20)))
    assert all(r.ok for r in results)
    history = await agent.history()
    assert len(history) == 40
    for user, reply in zip(history[::2], history[1::2], strict=True):
        text = user["parts"][0]["text"]
        assert reply["role"] == "assistant" and reply["parts"][0]["text"] == f"echo: {text}"


async def test_sub_agent_tool_events_reach_the_callers_stream_with_their_branch(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    specs = [AgentSpec(name="manager", model="openai:m", tools=["researcher"]),
             AgentSpec(name="researcher", model="openai:m", tools=["get_weather", "whoami"],
                       description="Finds facts.")]
    manager, _ = spawn_host(runtime, "host", HostSetup(specs, tools=[get_weather, whoami],
                                                       providers=providers(server)),
                            job_id=job_id)
    seen: list[Event] = []
    final: RunResult | None = None
    async for item in manager.stream("do some research"):
        if isinstance(item, RunResult):
            final = item
        else:
            seen.append(item)
    assert final is not None and final.output == "The researcher says: sunny."
    tools = [(e.payload["branch"], e.payload["tool"]) for e in seen
             if e.topic == "agent.tool.result"]
    assert ("manager/researcher", "get_weather") in tools
    assert ("manager", "researcher") in tools
    assert any(e.topic == "agent.llm.delta" and e.payload["branch"] == "manager/researcher"
               for e in seen)
    stats = await runtime.ask(f"{job_id}/host", "host.stats")
    assert stats["local_messages"] == 1  # manager -> researcher stayed inside the host


async def test_delegation_to_an_agent_on_another_host(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    [researcher] = spawn_host(runtime, "h2", HostSetup(
        [AgentSpec(name="researcher", model="openai:m", tools=["get_weather", "whoami"])],
        tools=[get_weather, whoami], providers=providers(server)), job_id=job_id)
    [manager] = spawn_host(runtime, "h1", HostSetup(
        [AgentSpec(name="manager", model="openai:m", tools=["researcher"])],
        directory={"researcher": researcher.host}, providers=providers(server)), job_id=job_id)
    result = await manager.run("research this", timeout=60)
    assert result.ok and result.output == "The researcher says: sunny."


async def test_an_approval_paused_run_is_resumed_by_another_process(
        runtime: Runtime, job_id: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    scenario = json.loads(json.dumps(SCENARIO).replace("__PATH__", str(effects)))
    with LocalLLMServer(scenario) as server:
        agent = spawn_agent(runtime, {"name": "payer", "model": "openai:m",
                                      "tools": ["transfer"]},
                            job_id=job_id, tools=[transfer], providers=providers(server))
        paused = await agent.run("pay the bill", timeout=60)
        assert paused.status == RunStatus.paused and paused.pending is not None
        assert not effects.exists()
        script = textwrap.dedent(f"""
            import asyncio, json
            from llmspell import Runtime
            from llmspell.actors.agent_actor import AgentHandle
            async def main():
                rt = Runtime({runtime.gcs_address!r}, job_id={job_id!r},
                             namespace={runtime.settings.namespace!r})
                rt.start()
                agent = AgentHandle(rt, {agent.host!r}, "payer")
                decisions = {{{paused.pending.approvals_needed[0]!r}: True}}
                result = await agent.resume({paused.run_id!r}, decisions)
                print(json.dumps({{"status": result.status, "output": result.output}}))
            asyncio.run(main())
        """)
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True,
            timeout=120, cwd=Path(__file__).parents[2])
        assert done.returncode == 0, done.stderr[-2000:]
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
        assert outcome == {"status": "completed", "output": "Payment done."}
        assert effects.read_text() == "transfer 7\n"  # ran once, after the approval


async def test_a_secret_is_absent_from_events_and_the_event_log(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    secret = "sk-live-TOPSECRET-4242"
    agent = spawn_agent(runtime, {"name": "keeper", "model": "openai:m"}, job_id=job_id,
                        providers=providers(server),
                        hook_specs=[{"name": "redaction", "options": {"secrets": [secret]}}])
    result = await agent.run(f"my key is {secret}", timeout=60)
    assert result.ok and secret not in result.output  # the model never saw it either
    assert secret not in json.dumps(server.requests[-1].body)
    await agent.ref.flush()
    logged = await runtime.replay(job_id)
    assert logged and not [e.topic for e in logged if secret in json.dumps(e.payload)]
    assert any("[REDACTED]" in json.dumps(e.payload) for e in logged
               if e.topic == "agent.run.started")


async def test_cancel_reaches_a_running_run_and_a_queued_one(
        runtime: Runtime, job_id: str) -> None:
    scenario = {"rules": [{"match": {"contains": "slow"}, "latency_ms": 30_000, "reply": "late"}]}
    with LocalLLMServer(scenario) as server:
        agent = spawn_agent(runtime, {"name": "patient", "model": "openai:m"}, job_id=job_id,
                            providers=providers(server))
        await agent.ref.wait_ready()
        running = asyncio.ensure_future(agent.run("slow one", run_id="r1", timeout=60))
        queued = asyncio.ensure_future(agent.run("slow two", run_id="r2", timeout=60))
        for _ in range(600):  # until r1 is with the model; r2 waits in the agent's mailbox
            if server.requests:
                break
            await asyncio.sleep(0.05)
        assert await agent.cancel("r2", "not needed") and await agent.cancel("r1", "stop")
        first, second = await asyncio.wait_for(asyncio.gather(running, queued), 10)
        assert (first.status, first.reason) == (RunStatus.cancelled, "stop")
        assert (second.status, second.reason) == (RunStatus.cancelled, "not needed")
        assert len(server.requests) == 1  # the queued run never called the model
