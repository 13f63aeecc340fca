"""Promise 4, restart budgets and strategies: a child crashed again and again under each
strategy. Over the event log: every restart renewed exactly the processes its strategy names
(and kept the others), counts match, and the failure after the budget escalates (the job fails
with the chain of causes) instead of restarting."""

from __future__ import annotations

from typing import Any

import pytest
import ray

from llmspell import Runtime
from llmspell.supervisors.actor import SupervisorActor, ask_supervised
from llmspell.supervisors.supervisor import SupervisorSpec
from tests.integration.supervised import Worker
from tests.waiting import until

pytestmark = pytest.mark.ray

CHILDREN = ("a", "b", "c")
BUDGET = 2  # restarts allowed within the window
RENEWED = {"one_for_one": {"b"}, "one_for_all": {"a", "b", "c"}, "rest_for_one": {"b", "c"}}


@pytest.mark.parametrize("strategy", list(RENEWED))
async def test_restarts_follow_the_strategy_and_the_budget_escalates(
        runtime: Runtime, job_id: str, strategy: str) -> None:
    from llmspell.supervisors.actor import ChildStart

    spec = SupervisorSpec.model_validate({
        "name": "sup", "strategy": strategy, "health_interval_s": 0.2,
        "intensity": {"max_restarts": BUDGET, "within_s": 600},
        "children": [{"name": c} for c in CHILDREN]})
    sup = runtime.spawn(SupervisorActor, "sup", spec,
                        [ChildStart(c, Worker) for c in spec.children], None,
                        job_id=job_id, concurrency=16).address
    await runtime.lookup(sup).wait_ready()
    pids = [await _pids(runtime, sup)]
    for n in range(1, BUDGET + 1):
        _crash(runtime, f"{sup}.b")
        await until(lambda n=n: _restarts(runtime, job_id, n), 60, f"restart {n}")
        pids.append(await _pids(runtime, sup))
    _crash(runtime, f"{sup}.b")  # the budget's next failure
    await until(lambda: _events(runtime, job_id, "job.failed"), 60, "job.failed")

    restarts = await _events(runtime, job_id, "supervisor.restarted")
    assert len(restarts) == BUDGET
    for before, after, event in zip(pids, pids[1:], restarts, strict=False):
        renewed = {c for c in CHILDREN if before[c] != after[c]}
        assert renewed == RENEWED[strategy] == set(event.payload["restarted"])
        assert event.payload["pids"] == {c: after[c] for c in RENEWED[strategy]}
    decisions = [e.payload["decision"]
                 for e in await _events(runtime, job_id, "supervisor.child.failed")]
    assert decisions == ["restart"] * BUDGET + ["escalate"]
    [failed] = await _events(runtime, job_id, "job.failed")
    assert len(failed.payload["causes"]) == BUDGET + 1
    assert all(c.startswith("sup/b:") for c in failed.payload["causes"])
    status = await runtime.ask(sup, "supervisor.status", timeout=30)
    expected = {c: BUDGET if c in RENEWED[strategy] else 0 for c in CHILDREN}
    assert {c: v["restarts"] for c, v in status["children"].items()} == expected
    assert status["failed"]


def _crash(runtime: Runtime, address: str) -> None:
    ray.kill(ray.get_actor(address, namespace=runtime.settings.namespace), no_restart=False)


async def _pids(runtime: Runtime, sup: str) -> dict[str, int]:
    out = {}
    for c in CHILDREN:
        reply = await ask_supervised(runtime.node, f"{sup}.{c}", "get", idempotent=True)
        out[c] = int(reply["pid"])
    return out


async def _events(runtime: Runtime, job_id: str, pattern: str) -> list[Any]:
    await runtime.lookup(f"{job_id}/sup").flush()
    return await runtime.replay(job_id, pattern=pattern)


async def _restarts(runtime: Runtime, job_id: str, n: int) -> bool:
    return len(await _events(runtime, job_id, "supervisor.restarted")) >= n
