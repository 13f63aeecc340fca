"""A2A with real peers on 127.0.0.1: agents of one job (in a Ray actor, answering from the local
LLM server) published by our A2A server; the official a2a-sdk client streams a task and
cancels one; our A2AAgent calls them from a different job, inside a delegation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.helpers import get_artifact_text, get_message_text
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    TaskState,
)

from llmspell import Runtime
from llmspell.actors.agent_actor import AgentHandle, HostSetup, spawn_host
from llmspell.agents import Agent, AgentEnv, AgentSpec
from llmspell.llm.registry import ProviderRegistry, ProviderSettings
from llmspell.llm.server import LocalLLMServer
from llmspell.protocols.a2a_client import A2AAgent, RemoteAgentConfig
from llmspell.protocols.a2a_server import a2a_app
from llmspell.protocols.http import HTTPServer
from llmspell.runtime.state_client import StateClient
from llmspell.supervisors.delegation import Delegation, DelegationResult
from llmspell.tools import ToolContext
from tests.protocols.helpers import TOKEN

pytestmark = pytest.mark.ray

SCENARIO = {"rules": [
    {"match": {"model": "^researcher$"}, "reply": "Ray runs actors across a cluster."},
    {"match": {"model": "^sleeper$"}, "reply": "too late", "latency_ms": 60_000},
    {"match": {"model": "^lead$", "after_tool_result": False},
     "reply": {"tool_calls": [{"name": "delegate_to_researcher",
                               "arguments": {"input": "find facts on Ray"}}]}},
    {"match": {"model": "^lead$", "after_tool_result": True},
     "reply": "Brief: Ray runs actors across a cluster."},
]}


@pytest.fixture(scope="module")
def llm() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(SCENARIO) as server:
        yield server


def providers(llm: LocalLLMServer) -> dict[str, Any]:
    return {"openai": {"base_url": llm.openai_base_url, "api_key": "sk-test"}}


def agents(runtime: Runtime, job_id: str, llm: LocalLLMServer) -> list[AgentHandle]:
    return spawn_host(runtime, "agents", HostSetup([
        AgentSpec(name="researcher", model="openai:researcher",
                  description="Finds facts about distributed systems."),
        AgentSpec(name="sleeper", model="openai:sleeper", description="Takes its time.")],
        providers=providers(llm)), job_id=job_id)


@asynccontextmanager
async def published(handles: list[AgentHandle]) -> AsyncIterator[str]:
    async with HTTPServer(a2a_app(handles, token=TOKEN), token=TOKEN) as http:
        yield http.url


def message(text: str) -> SendMessageRequest:
    return SendMessageRequest(message=Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()),
                                              parts=[Part(text=text)]))


def http(token: str | None = TOKEN) -> httpx.AsyncClient:
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"} if token else {},
                             timeout=30)


async def test_the_official_client_streams_a_task_and_reads_the_card(
        runtime: Runtime, job_id: str, llm: LocalLLMServer) -> None:
    async with published(agents(runtime, job_id, llm)) as url, http() as session:
        client = await create_client(f"{url}/researcher",
                                     client_config=ClientConfig(httpx_client=session))
        async with asyncio.timeout(30):
            events: list[StreamResponse] = [e async for e in client.send_message(
                message("What does Ray do?"))]
        kinds = [e.WhichOneof("payload") for e in events]
        assert kinds[0] == "task" and "artifact_update" in kinds
        states = [e.status_update.status.state for e in events
                  if e.HasField("status_update")]
        assert states[0] == TaskState.TASK_STATE_WORKING
        assert states[-1] == TaskState.TASK_STATE_COMPLETED
        artifact = next(e.artifact_update.artifact for e in events
                        if e.HasField("artifact_update"))
        assert get_artifact_text(artifact) == "Ray runs actors across a cluster."

        task = await client.get_task(GetTaskRequest(id=events[0].task.id))
        assert task.status.state == TaskState.TASK_STATE_COMPLETED

        card = (await session.get(f"{url}/researcher/.well-known/agent-card.json")).json()
        assert card["name"] == "researcher" and card["capabilities"]["streaming"] is True
        assert card["skills"][0]["description"] == "Finds facts about distributed systems."
        assert card["supportedInterfaces"][0]["url"] == f"{url}/researcher"
        assert "bearer" in card["securitySchemes"]
        root = (await session.get(f"{url}/.well-known/agent-card.json")).json()
        assert root["name"] == "researcher"  # the first step is the default


async def test_a_wrong_token_is_refused_but_the_card_is_public(
        runtime: Runtime, job_id: str, llm: LocalLLMServer) -> None:
    async with published(agents(runtime, job_id, llm)) as url, http("wrong") as session:
        card = await session.get(f"{url}/researcher/.well-known/agent-card.json")
        assert card.status_code == 200
        client = await create_client(f"{url}/researcher",
                                     client_config=ClientConfig(httpx_client=session))
        with pytest.raises(Exception, match="401"):
            async for _ in client.send_message(message("hi")):
                pass
        remote = A2AAgent(name="researcher", url=f"{url}/researcher")  # no token at all
        result = await remote.run("hi")
        assert result.status == "failed"
        assert f"remote agent 'researcher' at {url}/researcher" in result.reason
        assert "401" in result.reason and "set `token_env`" in result.reason


async def test_the_official_client_cancels_a_running_task(
        runtime: Runtime, job_id: str, llm: LocalLLMServer) -> None:
    async with published(agents(runtime, job_id, llm)) as url, http() as session:
        client = await create_client(f"{url}/sleeper",
                                     client_config=ClientConfig(httpx_client=session))
        stream = client.send_message(message("Take your time."))
        async with asyncio.timeout(30):
            first = await anext(stream)  # the task, submitted
            task_id = first.task.id
            while True:  # until it works: the agent's model call is under way
                event = await anext(stream)
                if event.HasField("status_update"):
                    assert event.status_update.status.state == TaskState.TASK_STATE_WORKING
                    break
            await asyncio.sleep(0.5)
            cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
            await stream.aclose()
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        assert "cancelled by the A2A client" in get_message_text(cancelled.status.message)

        async with asyncio.timeout(20):  # the cancel reached the agent in its actor
            while True:
                await agents_ref_flush(runtime, job_id)
                finished = [e for e in await runtime.replay(job_id, pattern="agent.run.finished")
                            if str(e.payload.get("branch", "")).endswith("sleeper")]
                if finished:
                    break
                await asyncio.sleep(0.2)
        assert finished[0].payload["status"] == "cancelled"


async def agents_ref_flush(runtime: Runtime, job_id: str) -> None:
    await runtime.lookup(f"{job_id}/agents").flush()


async def test_our_client_from_another_job_inside_a_delegation(
        runtime: Runtime, job_id: str, llm: LocalLLMServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESEARCH_TOKEN", TOKEN)
    async with published(agents(runtime, job_id, llm)) as url:
        other_job = f"{job_id}-caller"
        node = runtime.node

        def emit(topic: str, payload: dict[str, Any]) -> None:
            node.publish_nowait(topic, payload, job_id=other_job)

        state = StateClient(node, job_id=other_job)
        env = AgentEnv(providers=ProviderRegistry({"openai": ProviderSettings(
            base_url=llm.openai_base_url, api_key="sk-test")}), emit=emit, state=state,
            job_id=other_job)
        lead = Agent(env=env, name="lead", model="openai:lead", stream=False)
        remote = A2AAgent(RemoteAgentConfig(name="researcher", url=f"{url}/researcher",
                                            token_env="RESEARCH_TOKEN"))
        assert (await remote.card()).skills[0].id == "researcher"
        ctx = ToolContext(job_id=other_job, state=state, emit=emit)

        result = await Delegation("team", lead, [remote]).run("Write a brief on Ray", ctx=ctx)

        assert isinstance(result, DelegationResult) and result.ok, result.reason
        assert result.output == "Brief: Ray runs actors across a cluster."
        assert [(d.specialist, d.status) for d in result.delegations] == [
            ("researcher", "completed")]
        await agents_ref_flush(runtime, job_id)
        served = [e for e in await runtime.replay(job_id, pattern="agent.run.finished")
                  if str(e.payload.get("branch", "")).endswith("researcher")]
        assert served and served[-1].payload["status"] == "completed"  # it ran in job A
        called = await runtime.replay(other_job)  # the calling job's log: the call, the answer
        assert "agent.delegate" in [e.topic for e in called]
        answers = [e.payload for e in called if e.topic == "agent.tool.result"]
        assert "Ray runs actors across a cluster." in str(answers)

        tool = remote.as_tool()
        assert tool.name == "researcher"
        assert "distributed systems" in tool.description
        assert await tool.invoke({"input": "facts?"}, ToolContext()) == \
            "Ray runs actors across a cluster."
