"""Promise 7, dead letters. A message to an agent that ran out of restarts, and a poison message
that crashes its agent every time: the sender gets an error, a dead letter is recorded (a
`deadletter` event in the job's log, `Runtime.dead_letters`), and later messages still run."""

from __future__ import annotations

from typing import Any

import pytest
import ray

from llmspell import ActorNotFound, ActorUnavailable, Runtime
from llmspell.supervisors.actor import (
    ChildStart,
    PoisonMessage,
    SupervisorActor,
    ask_supervised,
)
from llmspell.supervisors.supervisor import SupervisorSpec
from tests.conformance.fakes import Poisonable, Sink
from tests.waiting import until

pytestmark = pytest.mark.ray


def _tree(runtime: Runtime, job_id: str, max_restarts: int) -> str:
    spec = SupervisorSpec.model_validate({
        "name": "sup", "intensity": {"max_restarts": max_restarts, "within_s": 600},
        "children": [{"name": "agent"}]})
    starts = [ChildStart({"name": "agent"}, Poisonable)]
    return runtime.spawn(SupervisorActor, "sup", spec, starts, None, job_id=job_id,
                         concurrency=16).address


async def _dead_letters(runtime: Runtime, job_id: str) -> list[Any]:
    await runtime.flush()
    return await runtime.dead_letters(job_id)


async def test_messages_to_an_agent_out_of_restarts(runtime: Runtime, job_id: str) -> None:
    sup = _tree(runtime, job_id, max_restarts=0)
    await runtime.lookup(sup).wait_ready()
    agent = f"{sup}.agent"
    other = runtime.spawn(Sink, "other", job_id=job_id)
    assert await runtime.ask(agent, "add", 1, job_id=job_id) == 1
    ray.kill(ray.get_actor(agent, namespace=runtime.settings.namespace), no_restart=False)
    await until(lambda: _failed(runtime, sup), 60, "the supervisor gives up")

    with pytest.raises((ActorNotFound, ActorUnavailable)):
        await runtime.ask(agent, "add", 2, job_id=job_id)
    with pytest.raises(ActorNotFound):
        await runtime.tell(agent, "add", 3, job_id=job_id)
    letters = await until(lambda: _dead_letters(runtime, job_id), 30, "dead letters")
    assert [(e.payload["recipient"], e.payload["type"]) for e in letters] == [
        (agent, "add"), (agent, "add")]
    assert all(e.payload["reason"] for e in letters)
    assert await other.ask("later", timeout=30) == 1  # later work still runs


async def _failed(runtime: Runtime, sup: str) -> bool:
    return bool((await runtime.ask(sup, "supervisor.status", timeout=30))["failed"])


async def test_a_poison_message_is_dead_lettered_and_later_messages_run(
        runtime: Runtime, job_id: str) -> None:
    sup = _tree(runtime, job_id, max_restarts=3)
    await runtime.lookup(sup).wait_ready()
    agent = f"{sup}.agent"
    assert await runtime.ask(agent, "add", 5, job_id=job_id) == 5
    with pytest.raises(PoisonMessage, match="crashed it 2 times"):
        # Safe to resend as far as the sender knows: the runtime must stop resending it.
        await ask_supervised(runtime.node, agent, "poison", job_id=job_id, idempotent=True)
    [letter] = await until(lambda: _dead_letters(runtime, job_id), 30, "a dead letter")
    assert letter.payload["type"] == "poison" and letter.payload["poison"] is True
    # Later messages still run, on the restarted agent, with its state restored.
    reply = await ask_supervised(runtime.node, agent, "add", 1, idempotent=False)
    assert reply == 6
    status = await runtime.ask(sup, "supervisor.status", timeout=30)
    assert not status["failed"] and status["children"]["agent"]["restarts"] == 2
