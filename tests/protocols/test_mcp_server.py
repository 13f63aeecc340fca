"""Our MCP server, and our MCP tools in a tool pool: the official `mcp` client against our
server over stdio and streamable HTTP (list, call, wrong token, unknown tool, bad arguments),
our own client against it over HTTP, with an agent behind it answering from the local LLM
server, and `llmspell serve mcp` over stdio."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import mcp
import pytest
from mcp.client.streamable_http import streamable_http_client

from llmspell import Runtime
from llmspell.agents import Agent, AgentEnv
from llmspell.llm.registry import ProviderRegistry, ProviderSettings
from llmspell.llm.server import LocalLLMServer
from llmspell.protocols.http import HTTPServer
from llmspell.protocols.mcp_client import close_all
from llmspell.protocols.mcp_server import build_mcp_server, mcp_http_app
from llmspell.protocols.mcp_tools import load_mcp_tools
from llmspell.tools import ToolContext, ToolError
from llmspell.tools.builtin import builtin_tools
from tests.protocols.helpers import STDIO_SERVER, TOKEN, time_server
from tests.protocols.stdio_server import Greeter, nap, shout

SCENARIO = {"rules": [{"match": {"model": "^helper$"}, "reply": "Happy to help with that."}]}


@pytest.fixture(scope="module")
def llm() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(SCENARIO) as server:
        yield server


@pytest.fixture(autouse=True)
async def closed_connections() -> AsyncIterator[None]:
    yield
    await close_all()


def helper_agent(llm: LocalLLMServer) -> Agent:
    env = AgentEnv(providers=ProviderRegistry({"openai": ProviderSettings(
        base_url=llm.openai_base_url, api_key="sk-test")}))
    return Agent(env=env, name="helper", model="openai:helper", stream=False,
                 description="Answers questions politely.")


@asynccontextmanager
async def served(llm: LocalLLMServer, token: str | None = TOKEN) -> AsyncIterator[str]:
    server = build_mcp_server([shout, nap], [Greeter(), helper_agent(llm)])
    async with HTTPServer(mcp_http_app(server, token=token), token=token) as http:
        yield f"{http.url}/mcp"


@asynccontextmanager
async def official_client(url: str, token: str | None) -> AsyncIterator[mcp.Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with httpx2.AsyncClient(headers=headers) as http, \
            mcp.Client(streamable_http_client(url, http_client=http)) as client:
        yield client


def text(result: Any) -> str:
    return "\n".join(block.text for block in result.content)


async def test_the_official_client_over_http(llm: LocalLLMServer) -> None:
    async with served(llm) as url, official_client(url, TOKEN) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert set(listed) == {"shout", "nap", "greeter", "helper"}
        assert listed["shout"].input_schema["required"] == ["text"]
        assert listed["helper"].description == "Answers questions politely."
        assert listed["helper"].input_schema["required"] == ["input"]
        assert listed["shout"].annotations is not None
        assert listed["shout"].annotations.read_only_hint

        assert text(await client.call_tool("shout", {"text": "hi"})) == "HI"
        assert text(await client.call_tool("greeter", {"input": "Ada"})) == "Hello, Ada!"
        assert text(await client.call_tool("helper", {"input": "Help?"})) == \
            "Happy to help with that."

        bad = await client.call_tool("shout", {"txt": "hi"})
        assert bad.is_error and "tool 'shout': invalid arguments: text: Field required" \
            in text(bad)
        with pytest.raises(mcp.MCPError, match=r"unknown tool 'shoot' \(did you mean 'shout'"):
            await client.call_tool("shoot", {"text": "hi"})


@pytest.mark.parametrize("token", [None, "not-the-token"])
async def test_a_wrong_or_missing_token_is_refused(llm: LocalLLMServer,
                                                   token: str | None) -> None:
    why = "wrong bearer token" if token else "missing bearer token"
    async with served(llm) as url:
        with pytest.raises(Exception) as info:  # the SDK decides the type
            async with official_client(url, token) as client:
                await client.list_tools()
        assert why in repr(info.value) or why in str(info.value)
        async with httpx2.AsyncClient() as http:  # and plainly, at the HTTP level
            response = await http.post(url, json={}, headers={"Authorization": "Bearer x"})
        assert response.status_code == 401 and "wrong bearer token" in response.text


async def test_the_official_client_over_stdio() -> None:
    params = mcp.StdioServerParameters(command=sys.executable, args=[STDIO_SERVER])
    async with mcp.Client(params) as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        assert names == ["greeter", "nap", "shout"]
        assert text(await client.call_tool("shout", {"text": "quiet"})) == "QUIET"


async def test_llmspell_serve_mcp_offers_the_builtin_tools_over_stdio(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("from the sandbox")
    code = "from llmspell.cli.serve import serve_app; serve_app()"
    params = mcp.StdioServerParameters(
        command=sys.executable, cwd=str(tmp_path),
        args=["-c", code, "mcp", "tests.protocols.stdio_server:served", "--root", "."],
        env={"PYTHONPATH": str(Path(__file__).parents[2])})
    async with mcp.Client(params) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert len(names) == len(builtin_tools()) + 2
        assert {"read_file", "shout", "greeter"} <= names
        read = await client.call_tool("read_file", {"path": "notes.txt"})
        assert "from the sandbox" in text(read)
        escape = await client.call_tool("read_file", {"path": "../outside.txt"})
        assert escape.is_error


async def test_our_client_against_our_server_over_http(llm: LocalLLMServer) -> None:
    async with served(llm) as url:
        config = {"name": "team", "url": url, "headers": {"Authorization": f"Bearer {TOKEN}"}}
        tools = {t.name: t for t in await load_mcp_tools([config])}
        assert set(tools) == {"team__shout", "team__nap", "team__greeter", "team__helper"}
        ctx = ToolContext()
        assert await tools["team__shout"].invoke({"text": "ok"}, ctx) == "OK"
        assert await tools["team__helper"].invoke({"input": "?"}, ctx) == \
            "Happy to help with that."
        with pytest.raises(ToolError, match="text: 5 is not of type 'string'"):
            await tools["team__shout"].invoke('{"text": 5}', ctx)  # by the schema it listed


@pytest.mark.ray
async def test_mcp_tools_in_a_tool_pool(runtime: Runtime, job_id: str) -> None:
    tools = await load_mcp_tools([time_server()])
    await close_all()  # the replica opens its own session, in its own process
    pool = runtime.spawn_pool("clock", tools, job_id=job_id, min_replicas=1, max_replicas=1)
    await pool.wait_ready()
    executor = pool.executor()
    by_name = {t.name: t for t in tools}
    ctx = ToolContext(job_id=job_id)
    result = await executor.execute(by_name["time__get_current_time"], {"timezone": "UTC"}, ctx)
    assert result["timezone"] == "UTC"
    again = await executor.execute(by_name["time__convert_time"], {
        "source_timezone": "UTC", "time": "08:30", "target_timezone": "Asia/Kolkata"}, ctx)
    assert "14:00" in again["target"]["datetime"]
    with pytest.raises(ToolError, match="'timezone' is a required property"):
        await executor.execute(by_name["time__get_current_time"], {}, ctx)
