"""Jobs from specs on the session's Ray against the local LLM server, checked in their event
logs: the demo (delegation, a tool pool, consensus), budgets, outputs, failures, resume."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmspell import Runtime
from llmspell.jobs import JobSpec, JobStatus, run
from llmspell.jobs.demo import demo_scenario, demo_spec
from llmspell.llm.server import LocalLLMServer
from tests.jobs.common import two_steps

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def demo_server() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(demo_scenario(), latency_ms=0) as server:
        yield server


async def test_the_demo_job_delegates_uses_the_pool_and_votes(
        runtime: Runtime, job_id: str, demo_server: LocalLLMServer) -> None:
    spec = demo_spec(local_url=demo_server.openai_base_url)
    result = await run(spec, runtime=runtime, job_id=job_id)

    assert result.status == JobStatus.completed, result.reason
    assert result.output == "NATS" and result.exit_code == 0
    assert result.usage.total_tokens > 1500
    events = await result.events()
    topics = [e.topic for e in events]
    for topic in ("job.submitted", "job.started", "job.completed", "delegation.started",
                  "consensus.decided"):
        assert topic in topics, topic
    delegated = {e.payload["specialist"] for e in events if e.topic == "delegation.result"}
    assert delegated == {"researcher", "analyst"}
    assert any(e.topic == "pool.scaled" for e in events)
    ran = [e.sender for e in events if e.topic == "actor.message.handled"
           and e.payload["type"] == "pool.run"]
    assert ran and all(s.startswith(f"{job_id}/compute/replica-") for s in ran)  # in the pool
    votes = {e.payload["agent"]: e.payload for e in events if e.topic == "consensus.vote"}
    assert sorted(votes) == ["reviewer-1", "reviewer-2", "reviewer-3"]
    assert await runtime.state.get("job:brief") is None  # job state is per job...
    brief = [e.payload for e in events if e.topic == "state.changed"
             and e.payload["key"] == "job:brief"]
    assert brief  # ...and the brief was written to this job's
    asked = [r for r in demo_server.requests if r.model == "analyst"]
    assert len(asked) == 2  # the tool call, then the answer after the tool's result
    assert not [n for n in await _alive(runtime) if n.startswith(f"{job_id}/")]


async def test_a_flushed_job_replays_every_event_of_its_hosts_and_pool_before_it_closes(
        runtime: Runtime, job_id: str, demo_server: LocalLLMServer) -> None:
    from llmspell.jobs.runner import JobRun

    job = JobRun(demo_spec(local_url=demo_server.openai_base_url), runtime, job_id=job_id)
    try:
        await job.start(save=False)
        result = await job.execute()
        assert result.status == JobStatus.completed, result.reason
        await job.flush()  # the events still batched in the hosts and the pool's replicas
        events = await runtime.replay(job_id)
        assert [e for e in events if e.topic == "agent.tool.result"]  # from a host
        assert [e for e in events if e.topic == "actor.message.handled"  # from a replica
                and e.sender.startswith(f"{job_id}/compute/replica-")]
        assert "job.completed" in [e.topic for e in events]  # from this driver
    finally:
        await job.close()


async def _alive(runtime: Runtime) -> list[str]:
    import ray

    return list(ray.util.list_named_actors())


SEQUENTIAL = {"rules": [
    {"match": {"model": "^drafter$"}, "reply": {"text": "draft one",
                                                "usage": {"input_tokens": 400,
                                                          "output_tokens": 100}}},
    {"match": {"model": "^editor$"}, "reply": "final text"},
]}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(SEQUENTIAL) as s:
        yield s


async def test_outputs_go_to_a_file_and_a_state_key(
        runtime: Runtime, job_id: str, server: LocalLLMServer, tmp_path: Path) -> None:
    spec = JobSpec.from_data(two_steps(server, outputs={"file": "out/result.json",
                                                        "format": "json",
                                                        "state_key": "job:result"}),
                             base_dir=str(tmp_path))
    result = await run(spec, {"topic": "Ray"}, runtime=runtime, job_id=job_id)
    assert result.ok and result.output == "final text"
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == "final text"
    edits = [r for r in server.requests if r.model == "editor"]
    assert "Edit: draft one" in json.dumps(edits[-1].body)


async def test_a_token_budget_stops_the_job_with_its_own_status(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    spec = JobSpec.from_data(two_steps(server, budgets={"max_tokens": 300}))
    result = await run(spec, {"topic": "Ray"}, runtime=runtime, job_id=job_id)
    assert result.status == JobStatus.budget_exceeded and result.exit_code == 3
    assert "budget" in result.reason
    events = await result.events(pattern="job.*")
    assert events[-1].topic == "job.failed"
    assert events[-1].payload["status"] == "budget_exceeded"


async def test_bad_inputs_fail_before_anything_starts(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    spec = JobSpec.from_data(two_steps(server))
    with pytest.raises(Exception, match=r"inputs\.topic: required"):
        await run(spec, {}, runtime=runtime, job_id=job_id)
    assert await runtime.replay(job_id) == []


MCP_SCENARIO = {"rules": [
    {"match": {"model": "^clock$", "after_tool_result": False},
     "reply": {"tool_calls": [{"name": "time__get_current_time",
                               "arguments": {"timezone": "UTC"}}]}},
    {"match": {"model": "^clock$", "after_tool_result": True}, "reply": "it is now"},
]}


def mcp_job(server: LocalLLMServer, tool: str) -> dict[str, Any]:
    import sys

    return {"name": "mcp-job",
            "models": {"providers": {"openai-chat": {"base_url": server.openai_base_url}}},
            "mcp_servers": [{"name": "time", "command": sys.executable,
                             "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}],
            "agents": [{"name": "clock", "model": "openai-chat:clock", "stream": False,
                        "tools": [tool]}],
            "pools": [{"name": "mcp", "tools": [tool]}]}


async def test_an_mcp_servers_tools_join_the_job_and_run_in_its_pool(
        runtime: Runtime, job_id: str) -> None:
    with LocalLLMServer(MCP_SCENARIO) as server:
        spec = JobSpec.from_data(mcp_job(server, "time__get_current_time"))
        result = await run(spec, {"input": "what time is it?"}, runtime=runtime, job_id=job_id)
        assert result.ok, result.reason
        events = await result.events()
        results = [e.payload for e in events if e.topic == "agent.tool.result"]
        assert results and not results[0]["is_error"] and "datetime" in results[0]["content"]
        ran = [e.sender for e in events if e.topic == "actor.message.handled"
               and e.payload["type"] == "pool.run"]
        assert ran and all(s.startswith(f"{job_id}/mcp/replica-") for s in ran)

        wrong = JobSpec.from_data(mcp_job(server, "time__get_current_tim"))  # a typo
        with pytest.raises(Exception) as info:
            await run(wrong, {"input": "x"}, runtime=runtime, job_id=f"{job_id}-b")
        assert "agents[0].tools[0]: unknown tool 'time__get_current_tim' (did you mean " \
               "'time__get_current_time'?)" in str(info.value)


WRITE_SCENARIO = {"rules": [
    {"match": {"model": "^scribe$", "after_tool_result": False},
     "reply": {"tool_calls": [{"name": "write_file",
                               "arguments": {"path": "note.txt", "content": "hello"}}]}},
    {"match": {"model": "^scribe$", "after_tool_result": True}, "reply": "tried"},
]}


@pytest.mark.parametrize("dispatch", ["routed", "direct"])
async def test_a_pools_own_sandbox_is_the_one_its_calls_run_under(
        runtime: Runtime, job_id: str, tmp_path: Path, dispatch: str) -> None:
    with LocalLLMServer(WRITE_SCENARIO) as server:
        spec = JobSpec.from_data({
            "name": "sandboxed",
            "models": {"providers": {"openai-chat": {"base_url": server.openai_base_url}}},
            "agents": [{"name": "scribe", "model": "openai-chat:scribe", "stream": False,
                        "tools": ["write_file"]}],
            "sandbox": {"root": str(tmp_path)},  # the job may write below tmp_path...
            "pools": [{"name": "files", "tools": ["write_file"],  # ...its file pool may not
                       "sandbox": {"root": str(tmp_path), "read_only": True},
                       "dispatch": dispatch}]})
        result = await run(spec, {"input": "write a note"}, runtime=runtime, job_id=job_id)
    assert result.ok and result.output == "tried"
    wrote = [r for r in payloads_of(await result.events(), "agent.tool.result")]
    assert wrote and wrote[0]["is_error"] and "read" in wrote[0]["content"].lower()
    assert not (tmp_path / "note.txt").exists()
    refused = payloads_of(await result.events(), "sandbox.refused")
    assert refused and refused[0]["tool"] == "write_file"


def payloads_of(events: list[Any], topic: str) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.topic == topic]


async def test_a_wall_time_budget_stops_a_slow_job_as_over_budget(
        runtime: Runtime, job_id: str) -> None:
    slow = {"rules": [{"match": {"model": "^slow$"}, "latency_ms": 20000, "reply": "late"}]}
    with LocalLLMServer(slow) as server:
        spec = JobSpec.from_data({
            "name": "slowpoke", "budgets": {"wall_time_s": 1.5},
            "models": {"providers": {"openai-chat": {"base_url": server.openai_base_url}}},
            "agents": [{"name": "slow", "model": "openai-chat:slow", "stream": False}]})
        started = time.monotonic()
        result = await run(spec, {"input": "take your time"}, runtime=runtime, job_id=job_id)
        took = time.monotonic() - started
    assert result.status == JobStatus.budget_exceeded and result.exit_code == 3
    assert result.reason == "wall time budget of 1.5 s exceeded"
    assert took < 15  # cut at the budget (plus closing), not after the 20 s answer
