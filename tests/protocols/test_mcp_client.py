"""Our MCP client against real servers over stdio: mcp-server-time (third party, from PyPI)
and our own server, killed in the middle of a call."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmspell.protocols.errors import MCPConnectionLost, MCPServerError
from llmspell.protocols.mcp_client import close_all, connection_for
from llmspell.protocols.mcp_config import MCPServerConfig
from llmspell.protocols.mcp_tools import MCPTool, load_mcp_tools
from llmspell.tools import ToolArgumentError, ToolContext, ToolError
from tests.protocols.helpers import our_stdio_server, time_server


@pytest.fixture(autouse=True)
async def closed_connections() -> AsyncIterator[None]:
    yield
    await close_all()  # the servers' processes end with their sessions


def by_name(tools: list[MCPTool]) -> dict[str, MCPTool]:
    return {t.name: t for t in tools}


async def test_a_third_party_server_over_stdio() -> None:
    tools = by_name(await load_mcp_tools([time_server()]))
    assert set(tools) == {"time__get_current_time", "time__convert_time"}
    now = tools["time__get_current_time"]
    assert now.spec().parameters["required"] == ["timezone"]
    assert "IANA" in now.spec().parameters["properties"]["timezone"]["description"]

    result = await now.invoke({"timezone": "Asia/Tokyo"}, ToolContext())
    assert result["timezone"] == "Asia/Tokyo" and "+09:00" in result["datetime"]
    converted = await tools["time__convert_time"].invoke(
        {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"},
        ToolContext())
    assert converted["target"]["timezone"] == "Europe/Paris"

    with pytest.raises(ToolArgumentError, match="timezone: 7 is not of type 'string'"):
        await now.invoke({"timezone": 7}, ToolContext())  # refused before it is sent
    with pytest.raises(ToolError, match=r"MCP server 'time' reported an error: .*Nowhere/Land"):
        await now.invoke({"timezone": "Nowhere/Land"}, ToolContext())
    assert connection_for(time_server()).starts == 1  # every call shared one session


async def test_only_the_named_tools_and_a_prefix_of_ones_own() -> None:
    tools = await load_mcp_tools([time_server(tools=["convert_time"], prefix="clock_")])
    assert [t.name for t in tools] == ["clock_convert_time"]
    with pytest.raises(MCPServerError, match="has no tool 'tick' \\(it offers: convert_time, "
                                             "get_current_time\\)"):
        await load_mcp_tools([time_server(tools=["tick"])])


async def test_a_server_that_cannot_start_is_named() -> None:
    broken = MCPServerConfig(name="ghost", command="/nonexistent/mcp-server", connect_timeout=5)
    with pytest.raises(MCPServerError) as info:
        await load_mcp_tools([broken])
    assert "MCP server 'ghost': could not connect to 'ghost' (stdio: /nonexistent/mcp-server)" \
        in str(info.value)


async def test_a_server_killed_mid_call_is_restarted_and_the_next_call_succeeds(
        tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    config = our_stdio_server(pidfile)
    tools = by_name(await load_mcp_tools([config]))
    nap = tools["ours__nap"]
    call = asyncio.ensure_future(nap.invoke({"seconds": 30}, ToolContext()))
    for _ in range(200):  # the tool writes its server's pid once it runs
        if pidfile.exists() and pidfile.read_text():
            break
        await asyncio.sleep(0.05)
    first = int(pidfile.read_text())
    os.kill(first, signal.SIGKILL)

    with pytest.raises(MCPConnectionLost) as info:
        await asyncio.wait_for(call, timeout=20)
    message = str(info.value)
    assert "tool 'ours__nap'" in message and "MCP server 'ours'" in message
    assert "lost during the call of 'nap'" in message and "the server was restarted" in message

    assert await tools["ours__shout"].invoke({"text": "again"}, ToolContext()) == "AGAIN"
    pidfile.unlink()
    assert (await nap.invoke({"seconds": 0}, ToolContext())).startswith("slept 0s")
    assert int(pidfile.read_text()) != first
    assert connection_for(config).starts == 2
