"""Tool pools on a real local Ray: dispatch, autoscaling, a replica killed mid-call, hung tools,
bad arguments, a full queue."""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import signal
import time
from pathlib import Path

import pytest

from llmspell import Runtime
from llmspell.actors.pool import PoolQueueFull, ToolPoolRef
from llmspell.runtime.events import Event
from llmspell.tools import (
    RoutedExecutor,
    ToolArgumentError,
    ToolContext,
    ToolNotFound,
    ToolTimeout,
    ToolUnavailable,
)
from tests.integration.pool_tools import charge, double, freeze, nap, order, pid
from tests.waiting import until

pytestmark = pytest.mark.ray


@pytest.fixture(params=["routed", "direct"])
def dispatch(request: pytest.FixtureRequest) -> str:
    """Each pool test runs with calls routed through the router and with leases."""
    return str(request.param)


async def replicas_ready(pool: ToolPoolRef, count: int) -> bool:
    stats = await pool.stats()
    return bool(stats["replicas"] == count and stats["starting"] == 0
                and stats["draining"] == 0)


async def test_pool_of_three_serves_calls_routed_from_an_executor(
        runtime: Runtime, job_id: str, dispatch: str) -> None:
    pool = runtime.spawn_pool("calc", [double], job_id=job_id, dispatch=dispatch,
                              min_replicas=3, max_replicas=3,
                              max_concurrency=2)
    await pool.wait_ready()
    # Calls to `double` go to the pool; `pid` (not routed) runs here, in the test process.
    executor = RoutedExecutor({"double": pool.executor()})
    results = await asyncio.gather(*(
        executor.execute(double, {"x": i, "seconds": 0.05}, ToolContext(idempotency_key=f"k{i}"))
        for i in range(30)))
    assert [r["value"] for r in results] == [2 * i for i in range(30)]
    used = collections.Counter(r["pid"] for r in results)
    assert len(used) == 3 and os.getpid() not in used
    assert min(used.values()) >= 5  # least-loaded spreads them (10 each when all run alike)
    assert await executor.execute(pid, {}, ToolContext()) == os.getpid()
    stats = await pool.stats()
    assert (stats["completed"], stats["failed"], stats["in_flight"]) == (30, 0, 0)
    assert stats["replicas"] == 3


async def test_pool_scales_up_under_a_backlog_and_down_when_idle(
        runtime: Runtime, job_id: str, dispatch: str) -> None:
    events = await runtime.subscribe("pool.scaled", job_id=job_id)
    pool = runtime.spawn_pool("burst", [double], job_id=job_id, dispatch=dispatch,
                              min_replicas=1, max_replicas=4,
                              max_concurrency=1, idle_timeout_s=1.0)
    await pool.wait_ready()
    executor = pool.executor()
    served: set[int] = set()
    stop = asyncio.Event()

    async def caller(n: int) -> None:  # 8 callers on a pool of cap 1: a standing backlog
        while not stop.is_set():
            result = await executor.execute(double, {"x": n, "seconds": 0.3}, ToolContext())
            assert result["value"] == 2 * n
            served.add(result["pid"])

    async def four_replicas_served() -> bool:
        stats = await pool.stats()
        return stats["replicas"] == 4 and all(
            r["completed"] > 0 for r in stats["replica_list"] if r["status"] == "ready")

    load = asyncio.ensure_future(asyncio.gather(*(caller(n) for n in range(8))))
    try:
        await until(four_replicas_served, 60, "4 replicas, each serving calls")
    finally:
        stop.set()
        await load
    assert len(served) == 4
    await until(lambda: replicas_ready(pool, 1), 30, "back to 1 replica after idling")

    seen: list[Event] = []

    async def scaled_back_to_one() -> bool:
        seen.extend(await events.get_batch(timeout=0.2))
        return bool(seen) and seen[-1].payload["to"] == 1 and any(
            e.payload["to"] == 4 for e in seen)

    await until(scaled_back_to_one, 10, "pool.scaled events up to 4 and back to 1")
    await events.close()
    moves = [(e.payload["from"], e.payload["to"]) for e in seen]
    assert moves[0] == (0, 1)  # the first replica, for the minimum
    assert all(a[1] == b[0] for a, b in itertools.pairwise(moves)), moves
    up = next(e for e in seen if e.payload["to"] == 4)
    assert "backlog" in up.payload["reason"]
    assert "idle" in seen[-1].payload["reason"]
    assert {e.payload["pool"] for e in seen} == {pool.address}


def read_effects(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(key, kind, int(pid)) for key, kind, pid in lines]


async def test_replica_killed_mid_call_retries_idempotent_calls_only(
        runtime: Runtime, job_id: str, dispatch: str, tmp_path: Path) -> None:
    log = tmp_path / "effects.log"
    pool = runtime.spawn_pool("payments", [double, charge], job_id=job_id, dispatch=dispatch,
                              min_replicas=2,
                              max_replicas=2, max_concurrency=8)
    await pool.wait_ready()
    executor = pool.executor()
    idempotent = {i: i % 4 in (0, 1) for i in range(16)}  # each replica gets both kinds
    calls = []
    for i in range(16):
        tool, args = (double, {"x": i}) if idempotent[i] else (charge, {"amount": i})
        args |= {"effect_log": str(log), "seconds": 3.0}  # still running at the kill
        calls.append(asyncio.ensure_future(
            executor.execute(tool, args, ToolContext(idempotency_key=f"call-{i}"))))
    await until(lambda: len(read_effects(log)) >= 16, 15, "all 16 calls running")
    first_run = {key: p for key, _, p in read_effects(log)}
    kinds = collections.defaultdict(set)
    for _, kind, p in read_effects(log):
        kinds[p].add(kind)
    victim = next(p for p, k in kinds.items() if k == {"idempotent", "charge"})
    os.kill(victim, signal.SIGKILL)

    results = await asyncio.gather(*calls, return_exceptions=True)
    on_victim = [i for i in range(16) if first_run[f"call-{i}"] == victim]
    assert len(on_victim) == 8
    for i, result in enumerate(results):
        if idempotent[i]:
            assert result["value"] == 2 * i, result
            assert result["pid"] != victim
        elif i in on_victim:
            assert isinstance(result, ToolUnavailable), result
            assert result.tool == "charge"
            assert "died during the call" in str(result)
            assert "not retried because tool 'charge' is not idempotent" in str(result)
        else:
            assert result["charged"] == i, result

    effects = read_effects(log)
    runs = collections.Counter(key for key, _, _ in effects)
    charges = [key for key, kind, _ in effects if kind == "charge"]
    assert len(charges) == len(set(charges)) == 8  # no non-idempotent call ran twice
    retried = [i for i in on_victim if idempotent[i]]
    assert retried and all(runs[f"call-{i}"] == 2 for i in retried)
    stats = await pool.stats()
    assert stats["retried"] == len(retried)
    assert stats["failed"] == len(on_victim) - len(retried)
    # The dead replica was replaced, back to the minimum.
    await until(lambda: replicas_ready(pool, 2), 20, "a replacement replica")
    pids = {r["pid"] for r in (await pool.stats())["replica_list"]}
    assert victim not in pids
    await pool.flush()
    failed = await runtime.replay(job_id, pattern="pool.replica_failed")
    assert [e.payload["pid"] for e in failed] == [victim]


async def test_hung_tools_time_out_and_a_frozen_replica_is_replaced(
        runtime: Runtime, job_id: str, dispatch: str) -> None:
    pool = runtime.spawn_pool("sleepy", [nap, freeze, pid], job_id=job_id, dispatch=dispatch,
                              min_replicas=1,
                              max_replicas=1, call_grace_s=1.0, health_interval_s=0.5,
                              health_timeout_s=0.5)
    await pool.wait_ready()
    executor = pool.executor()
    # An awaiting tool: stopped on the replica by its own 1 s timeout, or by what is left of
    # the call's budget (the tool's timeout) when its lease was slow to come (a loaded machine).
    started = time.monotonic()
    with pytest.raises(ToolTimeout) as polite:
        await executor.execute(nap, {"seconds": 30}, ToolContext())
    assert time.monotonic() - started < 1.0 + 5.0
    assert polite.value.tool == "nap" and 0.5 < polite.value.timeout <= 1.0
    assert f"within {round(polite.value.timeout, 3):g}s" in str(polite.value)

    # A tool that blocks its replica's event loop: the router gives up at timeout + grace.
    before = await executor.execute(pid, {}, ToolContext())
    started = time.monotonic()
    with pytest.raises(ToolTimeout) as frozen:
        await executor.execute(freeze, {"seconds": 60}, ToolContext())
    assert time.monotonic() - started < 1.0 + 1.0 + 5.0
    # The router gave up on the replica (missed health checks, or no answer by timeout + grace).
    assert frozen.value.tool == "freeze" and "within 1s" in str(frozen.value)
    # ...and the replica leaves rotation and is replaced: the next call runs elsewhere.
    after = await executor.execute(pid, {}, ToolContext(deadline=time.monotonic() + 30))
    assert after != before
    stats = await pool.stats()
    assert stats["timed_out"] == 2 and stats["replicas"] == 1
    assert stats["replicas_failed"] == 1


async def test_bad_arguments_and_unknown_tools_are_tool_errors(
        runtime: Runtime, job_id: str, dispatch: str) -> None:
    pool = runtime.spawn_pool("shop", [order], job_id=job_id, dispatch=dispatch)
    await pool.wait_ready()
    executor = pool.executor()
    with pytest.raises(ToolArgumentError) as bad:
        await executor.execute(order, {"item": "tea", "count": "many"}, ToolContext())
    assert bad.value.tool == "order"
    assert [e["path"] for e in bad.value.errors] == ["count"]
    assert "count" in str(bad.value)
    with pytest.raises(ToolArgumentError) as missing:
        await executor.execute(order, '{"count": 2', ToolContext())
    assert "not valid JSON" in str(missing.value)
    with pytest.raises(ToolNotFound) as unknown:
        await executor.execute(nap, {"seconds": 0}, ToolContext())
    assert unknown.value.tool == "nap" and "order" in str(unknown.value)
    assert await executor.execute(order, {"item": "tea", "count": 2}, ToolContext()) == "2 x tea"


async def test_a_full_queue_refuses_calls_naming_the_pool(
        runtime: Runtime, job_id: str, dispatch: str) -> None:
    pool = runtime.spawn_pool("narrow", [double], job_id=job_id, dispatch=dispatch,
                              min_replicas=1,
                              max_replicas=1, max_queue=1)
    await pool.wait_ready()
    executor = pool.executor()
    results = await asyncio.gather(*(
        executor.execute(double, {"x": i, "seconds": 1.0}, ToolContext()) for i in range(3)),
        return_exceptions=True)
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 1 and isinstance(refused[0], PoolQueueFull), results
    assert isinstance(refused[0], ToolUnavailable)
    assert pool.address in str(refused[0]) and "max_queue" in str(refused[0])
    assert (await pool.stats())["rejected"] == 1
