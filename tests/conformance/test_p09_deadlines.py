"""Promise 9, deadlines: a tool that hangs forever (it blocks its replica's event loop, so not
even the tool's own timeout can fire there). The caller gets ToolTimeout within the deadline
plus the pool's grace, and the hung replica leaves rotation: no later call runs on it.

The margin is part of the promise, not a speed measurement: deadline 1 s + grace 1 s, checked
against 1 + 1 + 5 s, because a loaded 2-core machine may be slow to answer at all."""

from __future__ import annotations

import time

import pytest

from llmspell import Runtime
from llmspell.tools import ToolContext, ToolTimeout
from tests.conformance.fakes import Hang, Work
from tests.conformance.history import rows
from tests.waiting import until

pytestmark = [pytest.mark.ray, pytest.mark.parametrize("dispatch", ["routed", "direct"])]

DEADLINE, GRACE, MARGIN = 1.0, 1.0, 5.0


async def test_a_hung_tool_times_out_and_its_replica_leaves_rotation(
        runtime: Runtime, job_id: str, history: str, dispatch: str) -> None:
    pool = runtime.spawn_pool("tools", [Hang(), Work()], job_id=job_id, dispatch=dispatch,
                              min_replicas=2,
                              max_replicas=2, max_concurrency=4, call_grace_s=GRACE)
    await pool.wait_ready()
    executor = pool.executor()
    started = time.monotonic()
    with pytest.raises(ToolTimeout) as timeout:
        await executor.execute(Hang(), {"history": history}, ToolContext(idempotency_key="h"))
    waited = time.monotonic() - started
    assert waited < DEADLINE + GRACE + MARGIN, waited
    assert timeout.value.tool == "hang" and "leaves rotation" in str(timeout.value)
    [hung] = rows(history, "call", "h")

    for i in range(20):
        await executor.execute(Work(), {"history": history, "n": i},
                               ToolContext(idempotency_key=f"w{i}"))
    ran_on = {r.pid for r in rows(history, "call") if r.key != "h"}
    assert hung.pid not in ran_on and ran_on  # the hung replica took no call after it hung
    await until(lambda: _replica_failed(runtime, job_id, hung.pid), 30, "pool.replica_failed")
    stats = await pool.stats()
    assert stats["timed_out"] == 1 and stats["replicas_failed"] == 1


async def _replica_failed(runtime: Runtime, job_id: str, pid: int) -> bool:
    await runtime.lookup(f"{job_id}/tools").flush()
    failed = await runtime.replay(job_id, pattern="pool.replica_failed")
    return any(e.payload.get("pid") == pid for e in failed)
