"""Promise 8, cancellation: a job (4 agents in a host, looping model call -> tool call in a
pool) is cancelled at a seeded random moment. No model call (the LLM server's record) and no
tool call (the tools' history) starts more than 1 s after the cancel, and no actor of the job
remains in Ray's state API.

The 1 s is the promise. Ray's state API reports a death a moment after it happened, so the
actors are looked up for up to 20 s (a settle margin, not part of the promise)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import ray

from llmspell import Runtime
from llmspell.actors.agent_actor import HostSetup, spawn_host
from llmspell.agents import AgentSpec
from llmspell.llm.server import LocalLLMServer
from tests.conformance.conftest import until
from tests.conformance.fakes import Work
from tests.conformance.history import rows

pytestmark = pytest.mark.ray

AGENTS, PROMISE_S, SETTLE_S = 4, 1.0, 20.0


def alive(job_id: str) -> list[str]:
    """Actors of the job in any state but DEAD (alive, restarting, pending creation, whatever
    they asked for), from the GCS actor table, which the state API serves (the session's Ray
    runs without the dashboard that the `ray.util.state` client talks to)."""
    table = ray._private.state.actors()
    return [a["Name"] for a in table.values()
            if a["State"] != "DEAD" and (a["Name"] or "").startswith(f"{job_id}/")]


async def test_a_cancelled_job_starts_no_call_after_a_second_and_leaves_no_actor(
        runtime: Runtime, job_id: str, history: str) -> None:
    call = {"name": "work", "arguments": {"history": history, "seconds": 0.05}}
    scenario = {"latency_ms": 20, "rules": [{"reply": {"tool_calls": [call]}}]}
    with LocalLLMServer(scenario) as server:
        pool = runtime.spawn_pool("tools", [Work()], job_id=job_id, min_replicas=2,
                                  max_replicas=2, max_concurrency=4)
        agents = spawn_host(runtime, "agents", HostSetup(
            [AgentSpec(name=f"agent{i}", model="openai-chat:m", stream=False, tools=["work"],
                       max_turns=1_000) for i in range(AGENTS)],
            providers={"openai-chat": {"base_url": server.openai_base_url, "api_key": "k"}},
            tools=[Work()], pools={"work": pool.address}), job_id=job_id)
        runs = [asyncio.ensure_future(a.run(f"loop {i}")) for i, a in enumerate(agents)]
        await until(lambda: len(rows(history, "call")) >= 10, 60, "the job at work")
        assert len(alive(job_id)) >= 4  # router, 2 replicas, host: the check sees them
        await asyncio.sleep(random.Random(8).uniform(0.0, 2.0))  # the random moment
        cancelled_at = time.time()
        runtime.kill_job(job_id)
        await asyncio.gather(*runs, return_exceptions=True)
        await asyncio.sleep(PROMISE_S + 1.0)  # anything that was going to start has started
        llm_starts = [r.wall_time for r in server.requests]

    tool_starts = [r.t for r in rows(history, "call")]
    assert max(tool_starts) <= cancelled_at + PROMISE_S
    assert max(llm_starts) <= cancelled_at + PROMISE_S
    assert await until(lambda: not alive(job_id), SETTLE_S, "no actor of the job alive",
                       every=0.5) is not None
