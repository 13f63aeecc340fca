"""Promises 2 and 3, exactly one effect per idempotency key when replicas die.

2. A replica SIGKILLed with 1,000 keyed calls in flight (about half of its calls had committed
   their effect, half had not): 1,000 results, and exactly one recorded effect per key.
3. A crash after a tool committed but before it acknowledged: the retry reconciles (finds the
   effect done, returns its result) instead of running it again; a tool that cannot reconcile
   fails clearly and is not run again.

The history (tests.conformance.history) holds every run, effect, reconciliation and crash, as
each happened, from every replica."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal

import pytest

from llmspell import Runtime
from llmspell.tools import ToolContext, ToolUnavailable
from tests.conformance.fakes import Pay, PayBlind
from tests.conformance.history import rows
from tests.waiting import until

pytestmark = [pytest.mark.ray, pytest.mark.parametrize("dispatch", ["routed", "direct"])]

CALLS = 1_000


async def test_a_replica_killed_with_1000_calls_in_flight(
        runtime: Runtime, job_id: str, history: str, dispatch: str) -> None:
    pool = runtime.spawn_pool("payments", [Pay()], job_id=job_id, dispatch=dispatch,
                              min_replicas=2,
                              max_replicas=2, max_concurrency=CALLS, max_queue=CALLS)
    await pool.wait_ready()
    executor = pool.executor()
    rng = random.Random(2)
    # Every call holds 3 s in all; the kill comes about 1.5 s in, so the victim has calls
    # both before and after their commit.
    calls = []
    for i in range(CALLS):
        before = rng.uniform(0, 3.0)
        args = {"amount": i, "history": history, "before_s": before, "after_s": 3.0 - before}
        calls.append(asyncio.ensure_future(
            executor.execute(Pay(), args, ToolContext(idempotency_key=f"key-{i}"))))
    await until(lambda: len(rows(history, "call")) >= CALLS, 60, "all calls running")
    await asyncio.sleep(1.5)
    victim = collections.Counter(r.pid for r in rows(history, "call")).most_common(1)[0][0]
    os.kill(victim, signal.SIGKILL)
    results = await asyncio.gather(*calls, return_exceptions=True)

    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert [r["paid"] for r in results] == list(range(CALLS))  # type: ignore[index]
    effects = collections.Counter(r.key for r in rows(history, "effect"))
    assert set(effects) == {f"key-{i}" for i in range(CALLS)}
    assert max(effects.values()) == 1, [k for k, n in effects.items() if n > 1][:5]
    # Both kinds of lost call happened: committed ones found by reconciling, the rest re-run.
    found = [r.data["found"] for r in rows(history, "reconcile")]
    assert found.count(True) > 0 and found.count(False) > 0, collections.Counter(found)
    on_victim = {r.key for r in rows(history, "call") if r.pid == victim}
    lost = on_victim - {r.key for r in rows(history, "done") if r.pid == victim}
    reconciled = [r.key for r in rows(history, "reconcile")]
    # Every call lost with the victim is reconciled once, and only calls of the victim are. A
    # call may finish on the victim with its reply still on the way when the kill lands: the
    # pool never got that reply, so it reconciles that call too (and finds its effect).
    assert len(reconciled) == len(set(reconciled)) == len(found)
    assert lost <= set(reconciled) <= on_victim, (lost - set(reconciled),
                                                  set(reconciled) - on_victim)
    assert (await pool.stats())["retried"] == len(reconciled)


async def test_a_crash_between_commit_and_ack_is_reconciled_not_rerun(
        runtime: Runtime, job_id: str, history: str, dispatch: str) -> None:
    pool = runtime.spawn_pool("payments", [Pay(), PayBlind()], job_id=job_id, dispatch=dispatch,
                              min_replicas=2,
                              max_replicas=2, max_concurrency=4)
    await pool.wait_ready()
    executor = pool.executor()
    args = {"amount": 42, "history": history, "crash_after_commit": True}
    result = await executor.execute(Pay(), args, ToolContext(idempotency_key="order-1"))
    [crash] = rows(history, "crash", "order-1")
    assert result == {"paid": 42, "pid": crash.pid}  # the first attempt's result, found
    assert len(rows(history, "call", "order-1")) == 1  # run once: the retry did not run it
    assert len(rows(history, "effect", "order-1")) == 1
    [reconciled] = rows(history, "reconcile", "order-1")
    assert reconciled.data["found"] and reconciled.pid != crash.pid
    await runtime.lookup(f"{job_id}/payments").flush()
    await until(lambda: _reconciled_events(runtime, job_id), 30, "a tool.reconciled event")

    # The same crash in a tool that cannot reconcile: a clear failure, and no second run.
    with pytest.raises(ToolUnavailable, match="not retried because tool 'pay_blind'"):
        await executor.execute(PayBlind(), args, ToolContext(idempotency_key="order-2"))
    assert len(rows(history, "call", "order-2")) == 1
    assert len(rows(history, "effect", "order-2")) == 1


async def _reconciled_events(runtime: Runtime, job_id: str) -> bool:
    events = await runtime.replay(job_id, pattern="tool.reconciled")
    return any(e.payload["key"] == "order-1" and e.payload["found"] for e in events)
