"""Promise 13, LLM fault storms: a 50-agent job against the local LLM server, which answers a
seeded third of all calls (25 of the 75 the job makes) with 429 + Retry-After or 500. The job
completes; every call is retried only as much as needed; after a 429 no retry comes before its
Retry-After; the client's own rate limit holds; and every retry is an `agent.llm.retry` event.

History: the server's request record (every call, its status and arrival time) and the job's
event log."""

from __future__ import annotations

import asyncio
import collections
import random

import pytest

from llmspell import Runtime
from llmspell.actors.agent_actor import HostSetup, spawn_host
from llmspell.agents import AgentSpec
from llmspell.llm.server import LocalLLMServer
from tests.waiting import until

pytestmark = pytest.mark.ray

AGENTS, FAULTED, RETRY_AFTER, RPM = 50, 25, 0.5, 600
JITTER = 0.05  # the retry is timed in the agent's process, its arrival at the server


def _task(i: int) -> str:
    return f"task-{i}"


async def test_a_50_agent_job_completes_through_a_fault_storm(runtime: Runtime, job_id: str
                                                              ) -> None:
    rng = random.Random(13)
    faulted = sorted(rng.sample(range(AGENTS), FAULTED))
    kinds = {i: ("rate_limit" if n % 2 else "server_error") for n, i in enumerate(faulted)}
    scenario = {"rules": [
        {"match": {"equals": _task(i)}, "times": 1,
         "fault": {"kind": kind, "retry_after": RETRY_AFTER}} for i, kind in kinds.items()]}
    with LocalLLMServer(scenario) as server:
        agents = spawn_host(runtime, "agents", HostSetup(
            [AgentSpec(name=f"agent{i}", model="openai-chat:m", stream=False)
             for i in range(AGENTS)],
            providers={"openai-chat": {"base_url": server.openai_base_url, "api_key": "k",
                                       "requests_per_minute": RPM}}), job_id=job_id)
        results = await asyncio.gather(*(a.run(_task(i)) for i, a in enumerate(agents)))
        record = list(server.requests)

    assert [str(r.status) for r in results] == ["completed"] * AGENTS
    assert [r.text for r in results] == [f"echo: {_task(i)}" for i in range(AGENTS)]
    by_task = collections.defaultdict(list)
    for r in record:
        by_task[r.body["messages"][-1]["content"]].append(r)
    assert len(record) == AGENTS + FAULTED
    assert sum(r.status != 200 for r in record) / len(record) >= 0.3
    for i in range(AGENTS):
        calls = by_task[_task(i)]
        if i not in kinds:
            assert [c.status for c in calls] == [200]
            continue
        assert [c.status for c in calls] == [429 if kinds[i] == "rate_limit" else 500, 200]
        if kinds[i] == "rate_limit":  # the server's limit: not called back before Retry-After
            assert calls[1].monotonic - calls[0].monotonic >= RETRY_AFTER - JITTER
    times = sorted(r.monotonic for r in record)  # the client's limit: no minute holds more
    assert all(len([t for t in times[n:] if t < start + 60]) <= RPM
               for n, start in enumerate(times))

    async def retries() -> list[object]:
        await agents[0].ref.flush()
        return await runtime.replay(job_id, pattern="agent.llm.retry")

    events = await until(lambda: _enough(retries, FAULTED), 30, "every retry as an event")
    assert collections.Counter(e.payload["status"] for e in events) == collections.Counter(
        429 if k == "rate_limit" else 500 for k in kinds.values())


async def _enough(fetch: object, n: int) -> list[object] | None:
    events = await fetch()  # type: ignore[operator]
    return events if len(events) >= n else None
