"""Promise 12, consensus quorum: five voters, each an agent in its own host process, answer
through the local LLM server; voters are killed (their processes ended) f at a time. A
decision comes only with a quorum of 3 votes; a vote whose model call was retried counts once;
the same seeds give the same result.

History: the server's request record (every call of every voter) and the job's consensus.vote
and consensus.decided events."""

from __future__ import annotations

import collections
import random
from typing import Any

import pytest

from llmspell import Runtime
from llmspell.actors.agent_actor import AgentHandle, HostSetup, spawn_host
from llmspell.agents import AgentSpec
from llmspell.llm.server import LocalLLMServer
from llmspell.runtime.state_client import StateClient
from llmspell.supervisors.consensus import Consensus
from llmspell.tools import ToolContext
from tests.waiting import until

pytestmark = pytest.mark.ray

VOTERS, QUORUM, SEED = 5, 3, 12
QUESTION = "What is the capital of France?"


def _answers(seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(["Paris", "Paris", "Paris", "Lyon"]) for _ in range(VOTERS)]


def _ctx(runtime: Runtime, job_id: str) -> ToolContext:
    return ToolContext(job_id=job_id, chain=(job_id,), state=StateClient(runtime.node,
                                                                         job_id=job_id),
                       emit=lambda t, p: runtime.node.publish_nowait(t, p, job_id=job_id))


async def test_a_decision_needs_a_quorum_and_a_retried_vote_counts_once(
        runtime: Runtime, job_id: str) -> None:
    answers = _answers(SEED)
    # Voter 0's first call fails (a 500): its client retries, and the vote must count once.
    scenario = {"rules": [
        {"match": {"model": "voter0$"}, "times": 1, "fault": "server_error"},
        *({"match": {"model": f"voter{i}$"}, "reply": a} for i, a in enumerate(answers))]}
    with LocalLLMServer(scenario) as server:
        voters: list[AgentHandle] = []
        for i in range(VOTERS):
            [voter] = spawn_host(runtime, f"host{i}", HostSetup(
                [AgentSpec(name=f"voter{i}", model=f"openai-chat:voter{i}", stream=False)],
                providers={"openai-chat": {"base_url": server.openai_base_url,
                                           "api_key": "k"}}), job_id=job_id)
            voters.append(voter)
        vote = Consensus("capital", voters, quorum=QUORUM)
        ctx = _ctx(runtime, job_id)

        first = await vote.run(QUESTION, ctx=ctx)
        again = await vote.run(QUESTION, ctx=ctx)  # the same seeds: the same result
        calls = collections.Counter(r.model for r in server.requests)
        killed = random.Random(SEED).sample(range(VOTERS), VOTERS - QUORUM + 1)
        for i in killed[:-1]:  # f = n - quorum: still a quorum
            voters[i].ref.kill(restart=False)
        with_quorum = await vote.run(QUESTION, ctx=ctx)
        voters[killed[-1]].ref.kill(restart=False)  # one more: no quorum
        without = await vote.run(QUESTION, ctx=ctx)

    majority = collections.Counter(answers).most_common(1)[0][0]
    assert first.ok and first.decision == majority
    assert _view(first) == _view(again)
    assert sorted(first.votes) == [f"voter{i}" for i in range(VOTERS)]  # each voter once
    assert calls["voter0"] == 3 and all(calls[f"voter{i}"] == 2 for i in range(1, VOTERS))

    alive = [i for i in range(VOTERS) if i not in killed[:-1]]
    assert with_quorum.ok and sorted(with_quorum.votes) == [f"voter{i}" for i in alive]
    assert with_quorum.decision == collections.Counter(
        answers[i] for i in alive).most_common(1)[0][0]
    assert sorted(with_quorum.abstained) == sorted(f"voter{i}" for i in killed[:-1])
    assert not without.ok and without.decision is None and "quorum" in without.reason
    assert len(without.votes) == QUORUM - 1

    async def events() -> Any:
        await runtime.flush()
        found = await runtime.replay(job_id, pattern="consensus.*")
        return found if len([e for e in found if e.topic == "consensus.decided"]) >= 3 else None

    logged = await until(events, 30, "consensus events")
    assert len([e for e in logged if e.topic == "consensus.decided"]) == 3  # none without quorum
    votes = [e for e in logged if e.topic == "consensus.vote"]
    per_run = collections.Counter(e.payload["agent"] for e in votes)
    assert per_run["voter0"] == 4  # once per run, its retry included


def _view(result: Any) -> tuple[Any, ...]:
    return (result.decision, result.agreement, sorted(result.dissent), dict(result.votes))
