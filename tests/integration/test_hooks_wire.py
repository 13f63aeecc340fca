"""Built-in hooks over real wires: the response cache in front of the local LLM server (through
the real openai SDK over HTTP), and a budget shared through the runtime's state service on a
real local Ray, and a tool rate limit shared by two actors through the limiter actor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from llmspell import Runtime
from llmspell.agents import Agent, AgentEnv, RunStatus
from llmspell.agents.hooks import (
    BudgetHook,
    RateLimitHook,
    ResponseCache,
    StateLedger,
    UsageHook,
    install,
)
from llmspell.llm.openai_provider import OpenAIProvider
from llmspell.llm.registry import ProviderRegistry
from llmspell.llm.scripted import ScriptedProvider
from llmspell.llm.server import LocalLLMServer
from llmspell.llm.types import ToolCall
from llmspell.runtime.hooks import HookRegistry
from llmspell.runtime.state_client import StateClient
from llmspell.tools import tool


def env_for(provider_name: str, provider: Any, job_id: str = "job-w") -> AgentEnv:
    providers = ProviderRegistry()
    providers.register(provider_name, provider)
    return AgentEnv(providers=providers, hooks=HookRegistry(), job_id=job_id)


def agent(env: AgentEnv, model: str, name: str = "a") -> Agent:
    return Agent(env=env, name=name, model=model, stream=False)


async def test_a_cache_hit_never_reaches_the_server(tmp_path: Path) -> None:
    with LocalLLMServer() as server:
        env = env_for("chat", OpenAIProvider(name="chat", api="chat", api_key="k",
                                             base_url=server.openai_base_url))
        cache = ResponseCache(path=str(tmp_path / "cache.db"))
        cache.register(env.hooks)
        usage = UsageHook()
        usage.register(env.hooks)

        first = await agent(env, "chat:m").run("what is an actor?")
        assert first.output == "echo: what is an actor?"
        assert len(server.requests) == 1
        second = await agent(env, "chat:m").run("what is an actor?")  # the same request
        assert second.output == first.output
        assert len(server.requests) == 1  # the server's record: no second call came
        third = await agent(env, "chat:m").run("what is a mailbox?")
        assert third.output == "echo: what is a mailbox?" and len(server.requests) == 2
        assert cache.hits == 1 and cache.misses == 2
        totals = usage.snapshot()["jobs"]["job-w"]
        assert totals["calls"] == 2 and totals["cached_calls"] == 1


async def test_a_cache_file_outlives_its_process(tmp_path: Path) -> None:
    """A second cache over the same file (another actor, or a later job) answers too."""
    path = str(tmp_path / "shared.db")
    with LocalLLMServer() as server:
        for _ in range(2):
            env = env_for("chat", OpenAIProvider(name="chat", api="chat", api_key="k",
                                                 base_url=server.openai_base_url))
            installed = install(env.hooks, [{"name": "cache", "options": {"path": path}}])
            assert (await agent(env, "chat:m").run("hello")).output == "echo: hello"
            assert isinstance(installed[0], ResponseCache)
            installed[0].close()
        assert len(server.requests) == 1


@pytest.mark.ray
async def test_a_budget_holds_across_actors_through_the_state_service(
        runtime: Runtime, job_id: str) -> None:
    # Each env stands for an actor: its own registry, hook and state client; the ledger
    # lives in the runtime's state service (a Ray actor owning the SQLite store).
    envs = [env_for("scripted", ScriptedProvider(), job_id=job_id) for _ in range(2)]
    for env in envs:
        ledger = StateLedger(StateClient(runtime.node, job_id=job_id))
        BudgetHook(max_tokens=10, ledger=ledger).register(env.hooks)
    first = await agent(envs[0], "scripted:m").run("spend the budget with a long question")
    assert first.ok and first.usage.total_tokens >= 10
    other = await agent(envs[1], "scripted:m", name="b").run("hi")
    assert other.status == RunStatus.cancelled and other.cancelled_by == "budget"
    assert f"token budget of 10 exceeded: used {first.usage.total_tokens}" in other.reason
    stored = await StateClient(runtime.node, job_id=job_id).get("job:llmspell.budget")
    assert stored["tokens"] == first.usage.total_tokens


@pytest.mark.ray
async def test_a_shared_tool_limit_holds_across_actors(runtime: Runtime, job_id: str) -> None:
    started: list[float] = []

    @tool
    async def ping() -> str:
        """Ping."""
        started.append(time.monotonic())
        return "pong"

    script = [[ToolCall(id=f"c{i}", name="ping") for i in range(2)], "done"]
    envs = [env_for("scripted", ScriptedProvider(list(script)), job_id=job_id)
            for _ in range(2)]
    for env in envs:  # two hooks, one window: the limiter actor's
        RateLimitHook(tools={"ping": 2}, window_s=0.5, shared_key=job_id).register(env.hooks)
    results = await asyncio.gather(*(Agent(env=env, name=f"a{i}", model="scripted:m",
                                           stream=False, tools=[ping]).run("go")
                                     for i, env in enumerate(envs)))
    assert all(r.ok for r in results) and len(started) == 4
    started.sort()
    assert started[2] - started[0] >= 0.45  # four calls at two per window need two windows


def shout_state(hooks: HookRegistry) -> None:
    """A host's hook (shipped to the actor): values written to state are upper-cased."""
    from llmspell.runtime.hooks import HookContext, HookPoint, Modify

    @hooks.on(HookPoint.before_state_write)
    def upper(ctx: HookContext) -> Modify | None:
        value = ctx.payload.get("value")
        return Modify({**ctx.payload, "value": value.upper()}) if isinstance(value, str) else None


async def test_an_agents_state_writes_run_its_hosts_state_write_hooks(
        runtime: Runtime, job_id: str) -> None:
    from llmspell.actors.agent_actor import HostSetup, spawn_host
    from llmspell.agents import AgentSpec
    from llmspell.tools.builtin import builtin_registry

    scenario = {"rules": [
        {"match": {"model": "^noter$", "after_tool_result": False},
         "reply": {"tool_calls": [{"name": "state_write",
                                   "arguments": {"key": "job:note", "value": "quiet"}}]}},
        {"match": {"model": "^noter$", "after_tool_result": True}, "reply": "noted"}]}
    with LocalLLMServer(scenario) as server:
        [noter] = spawn_host(runtime, "notes", HostSetup(
            [AgentSpec(name="noter", model="openai-chat:noter", stream=False,
                       tools=["state_write"])],
            providers={"openai-chat": {"base_url": server.openai_base_url, "api_key": "k"}},
            tools=[builtin_registry().get("state_write")], hooks=[shout_state]), job_id=job_id)
        result = await noter.run("note it")
    assert result.ok
    assert await StateClient(runtime.node, job_id=job_id).get("job:note") == "QUIET"
