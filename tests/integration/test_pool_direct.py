"""Direct dispatch (`dispatch="direct"`): callers run their calls on replicas under leases.

What a routed pool does is covered for both dispatches in test_pool.py; here is what leases
add: agents in a host discover the mode from the pool's address, a cancelled backlog leaves
nothing queued, a dead holder's lease is taken back, a stop lets running calls finish, and two
processes share one slot in turns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from llmspell import Runtime, spawn_agent
from llmspell.actors.pool import ToolPoolRef
from llmspell.llm.server import LocalLLMServer
from llmspell.tools import ToolContext
from tests.integration.actors import PoolCaller
from tests.integration.pool_tools import double, nap, pid
from tests.integration.test_pool import read_effects
from tests.waiting import until

pytestmark = pytest.mark.ray

SCENARIO = {"rules": [
    {"match": {"tools": ["pid"], "after_tool_result": False},
     "reply": {"tool_calls": [{"name": "pid", "arguments": {}}, {"name": "pid", "arguments": {}}]}},
    {"match": {"after_tool_result": True}, "reply": "done"},
]}


@pytest.fixture(scope="module")
def llm_server() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(SCENARIO) as s:
        yield s


async def quiet(pool: ToolPoolRef) -> bool:
    stats = await pool.stats()
    return bool(stats["leases"] == 0 and stats["in_flight"] == 0 and stats["queue_depth"] == 0)


async def test_agents_in_a_host_take_leases_knowing_only_the_pools_address(
        runtime: Runtime, job_id: str, llm_server: LocalLLMServer) -> None:
    pool = runtime.spawn_pool("pids", [pid], job_id=job_id, dispatch="direct", min_replicas=2,
                              max_replicas=2)
    await pool.wait_ready()
    providers = {"openai": {"base_url": llm_server.openai_base_url, "api_key": "sk-test"}}
    agent = spawn_agent(runtime, {"name": "pooled", "model": "openai:m", "tools": ["pid"],
                                  "stream": False},
                        job_id=job_id, tools=[pid], providers=providers,
                        pools={"pid": pool.address})
    result = await agent.run("call pid", timeout=60)
    assert result.ok, result.reason
    replica_pids = {r["pid"] for r in (await pool.stats())["replica_list"]}
    outputs = [r.content for m in result.messages for r in m.parts if r.kind == "tool_result"]
    assert outputs and all(int(o) in replica_pids for o in outputs)

    async def counted() -> bool:  # the host's lease (and its count) comes back after linger
        stats = await pool.stats()
        return bool(stats["completed"] == len(outputs) and stats["leases"] == 0)

    await until(counted, 10, "the host's lease back with its outcome")
    assert (await pool.stats())["dispatch"] == "direct"


async def test_a_cancelled_backlog_never_starts_and_leaves_nothing_queued(
        runtime: Runtime, job_id: str, tmp_path: Path) -> None:
    log = tmp_path / "effects.log"
    pool = runtime.spawn_pool("one", [double], job_id=job_id, dispatch="direct",
                              min_replicas=1, max_replicas=1)
    await pool.wait_ready()
    executor = pool.executor()
    calls = [asyncio.ensure_future(executor.execute(
        double, {"x": i, "seconds": 1.0, "effect_log": str(log)},
        ToolContext(idempotency_key=f"c{i}"))) for i in range(6)]
    await until(lambda: len(read_effects(log)) == 1, 10, "the first call running")
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(2.0)  # the running call ends; a queued one would have started by now
    assert [key for key, _, _ in read_effects(log)] == ["c0"]
    await until(lambda: quiet(pool), 10, "no lease, call or request left in the pool")
    # The pool serves the next caller.
    assert (await executor.execute(double, {"x": 4}, ToolContext()))["value"] == 8


async def test_a_dead_holders_lease_is_taken_back(runtime: Runtime, job_id: str) -> None:
    # nap's timeout is 1 s: a lease held 0.5 + 1 + 0.5 s past its grant has a dead holder.
    pool = runtime.spawn_pool("naps", [nap], job_id=job_id, dispatch="direct", min_replicas=1,
                              max_replicas=1, lease_term_s=0.5, lease_linger_s=60.0,
                              call_grace_s=0.5, health_interval_s=0.5)
    await pool.wait_ready()
    caller = runtime.spawn(PoolCaller, "holder", job_id=job_id)
    assert await caller.ask("call", {"pool": pool.address, "tool": "nap",
                                     "args": {"seconds": 0}}) == "rested"
    stats = await pool.stats()
    assert (stats["leases"], stats["in_flight"]) == (1, 1)  # idle in the caller, lingering
    ray.kill(runtime.node.handle(caller.address), no_restart=True)
    started = time.monotonic()
    await until(lambda: quiet(pool), 15, "the dead holder's lease taken back")
    assert time.monotonic() - started < 10
    await pool.flush()
    reclaimed = await runtime.replay(job_id, pattern="pool.lease_reclaimed")
    assert len(reclaimed) == 1 and reclaimed[0].payload["pool"] == pool.address
    assert await pool.executor().execute(nap, {"seconds": 0}, ToolContext()) == "rested"


async def test_stopping_a_direct_pool_lets_running_calls_finish(
        runtime: Runtime, job_id: str) -> None:
    pool = runtime.spawn_pool("finish", [double], job_id=job_id, dispatch="direct",
                              min_replicas=1, max_replicas=1, max_concurrency=2)
    await pool.wait_ready()
    executor = pool.executor()
    running = [asyncio.ensure_future(executor.execute(double, {"x": i, "seconds": 0.5},
                                                      ToolContext())) for i in range(2)]
    await asyncio.sleep(0.2)
    await pool.stop()
    assert [r["value"] for r in await asyncio.gather(*running)] == [0, 2]


async def test_two_processes_share_one_slot_in_turns(runtime: Runtime, job_id: str) -> None:
    pool = runtime.spawn_pool("shared", [double], job_id=job_id, dispatch="direct",
                              min_replicas=1, max_replicas=1, lease_term_s=0.2)
    await pool.wait_ready()
    caller = runtime.spawn(PoolCaller, "other", job_id=job_id)
    executor = pool.executor()

    async def mine(n: int) -> list[int]:
        return [(await executor.execute(double, {"x": i, "seconds": 0.05}, ToolContext()))
                ["value"] for i in range(n)]

    async def theirs(n: int) -> list[int]:
        return [(await caller.ask("call", {"pool": pool.address, "tool": "double",
                                           "args": {"x": i, "seconds": 0.05}}))["value"]
                for i in range(n)]

    # Both keep the one slot busy; each gets it back within a term of the other's.
    here, there = await asyncio.wait_for(asyncio.gather(mine(12), theirs(12)), 30)
    assert here == there == [2 * i for i in range(12)]

    async def all_counted() -> bool:
        return bool((await pool.stats())["completed"] == 24)

    await until(all_counted, 10, "both processes' outcomes counted")
