"""Promise 8, cancellation: a job (4 agents in a host, looping model call -> tool call in a
pool) is cancelled at a seeded random moment. No model call (the LLM server's record) and no
tool call (the tools' history) starts more than 1 s after the cancel, and no actor of the job
remains in Ray's state API.

Twice: with Runtime.kill_job (every actor of the job killed at once), and through the job layer
(a JobSpec run by JobRun, stopped with JobRun.cancel(), then closed), where the agents must
stop by themselves: the cancel reaches their host, their pool stops taking their calls, and
close() leaves nothing of the job behind.

The 1 s is the promise. Ray's state API reports a death a moment after it happened, so the
actors are looked up for up to 20 s (a settle margin, not part of the promise)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from llmspell import Runtime
from llmspell.actors.agent_actor import HostSetup, spawn_host
from llmspell.agents import AgentSpec
from llmspell.jobs import JobRun, JobStatus
from llmspell.llm.server import LocalLLMServer
from llmspell.runtime.cancel import CancelToken
from llmspell.runtime.errors import Cancelled
from llmspell.tools import ToolContext
from tests.conformance.fakes import Work
from tests.conformance.history import rows
from tests.conformance.jobs import SCENARIO, alive, job_spec
from tests.waiting import until

pytestmark = pytest.mark.ray

AGENTS, PROMISE_S, SETTLE_S = 4, 1.0, 20.0


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


@pytest.mark.parametrize("seed", [8, 80])
async def test_a_job_cancelled_with_jobrun_cancel_starts_no_call_after_a_second(
        runtime: Runtime, job_id: str, seed: int) -> None:
    with LocalLLMServer(SCENARIO) as server:
        spec = job_spec("cancel", server.openai_base_url, model=f"loop-{job_id}", agents=AGENTS)
        job = JobRun(spec, runtime, job_id=job_id)
        try:
            await job.start(save=False)
            running = asyncio.ensure_future(job.execute())
            await until(lambda: len(server.requests) >= 10, 60, "the job at work")
            await asyncio.sleep(random.Random(seed).uniform(0.0, 2.0))  # the random moment
            cancelled_at = time.time()
            job.cancel("cancelled by the test")
            result = await asyncio.wait_for(running, 30)
            await asyncio.sleep(PROMISE_S + 1.0)  # anything that was going to start has started
            llm_starts = [r.wall_time for r in server.requests]
            # The events of the calls (the agents' dispatches, the replicas' runs) are flushed
            # from the processes that hold them before those are stopped.
            for address in alive(job_id):
                await runtime.lookup(address).flush()
        finally:
            await job.close()
        assert result.status == JobStatus.cancelled, result.reason

    events = await runtime.replay(job_id)
    dispatched = [e.ts for e in events if e.topic == "agent.tool.call"]
    # A replica's run ends (its `handled` event) after it starts: a bound on its start.
    ran = [e.ts for e in events if e.topic == "actor.message.handled"
           and e.payload["type"] == "pool.run"]
    assert dispatched and ran  # the job was at work, and the record shows it
    assert max(llm_starts) <= cancelled_at + PROMISE_S
    assert max(dispatched) <= cancelled_at + PROMISE_S
    assert max(ran) <= cancelled_at + PROMISE_S
    assert await until(lambda: not alive(job_id), SETTLE_S, "no actor of the job alive",
                       every=0.5) is not None


@pytest.mark.parametrize("dispatch", ["routed", "direct"])
async def test_calls_queued_in_a_pool_do_not_start_after_their_caller_cancelled(
        runtime: Runtime, job_id: str, history: str, dispatch: str) -> None:
    """A backlog in a pool outlives no cancel: calls still waiting for a replica when their
    caller gives up are withdrawn, not run later (one replica, one call at a time, 0.4 s each:
    without that, the last of 8 calls would start ~2.8 s after the cancel)."""
    pool = runtime.spawn_pool("slow", [Work()], job_id=job_id, dispatch=dispatch,
                              min_replicas=1, max_replicas=1)
    await pool.wait_ready()
    executor, token = pool.executor(), CancelToken()
    calls = [asyncio.ensure_future(executor.execute(
        Work(), {"history": history, "n": n, "seconds": 0.4},
        ToolContext(job_id=job_id, cancel=token))) for n in range(8)]
    await until(lambda: rows(history, "call"), 30, "the first call running")
    cancelled_at = time.time()
    token.cancel("the caller gave up")
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(PROMISE_S + 2.0)  # the backlog would have started by now
    starts = [r.t for r in rows(history, "call")]
    assert all(isinstance(o, Cancelled) for o in outcomes), outcomes
    assert max(starts) <= cancelled_at + PROMISE_S, [round(t - cancelled_at, 2) for t in starts]
    stats = await pool.stats()
    assert stats["queue_depth"] == 0 and stats["in_flight"] == 0
    if dispatch == "direct":
        return  # a leased call waits in its caller's process: nothing at the router to overtake
    # A withdrawal may overtake its call (a tell against an ask): the call then never starts.
    await runtime.tell(pool.address, "pool.withdraw", f"{job_id}-late")
    await runtime.flush()
    late = ToolContext(job_id=job_id, idempotency_key=f"{job_id}-late")
    with pytest.raises(Cancelled):
        await executor.execute(Work(), {"history": history, "n": 99}, late)
    assert not [r for r in rows(history, "call") if r.data["n"] == 99]
