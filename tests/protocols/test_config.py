"""Config models, names, argument checks and the auth rules: plain logic, no peers."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from mcp_types import Tool as MCPToolSpec
from mcp_types import ToolAnnotations
from pydantic import ValidationError

from llmspell.protocols.a2a_client import RemoteAgentConfig
from llmspell.protocols.auth import check_bind, is_loopback
from llmspell.protocols.mcp_config import MCPServerConfig
from llmspell.protocols.mcp_tools import MCPTool, tool_name
from llmspell.tools import SideEffects, ToolArgumentError

STDIO = {"name": "time", "command": "python", "args": ["-m", "mcp_server_time"]}


def error_of(model: type[Any], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return str(info.value)


def test_a_server_is_either_stdio_or_http() -> None:
    assert MCPServerConfig.model_validate(STDIO).transport == "stdio"
    http = MCPServerConfig(name="web", url="http://127.0.0.1:1/mcp", headers={"X": "1"})
    assert http.transport == "http"
    assert "either `command` (stdio) or `url`" in error_of(MCPServerConfig, {"name": "x"})
    assert "not both" in error_of(MCPServerConfig, {**STDIO, "url": "http://127.0.0.1/"})
    assert "`headers` only apply to a `url`" in error_of(MCPServerConfig,
                                                         {**STDIO, "headers": {"A": "b"}})
    assert "not an http:// or https:// URL" in error_of(MCPServerConfig,
                                                        {"name": "x", "url": "ftp://h/"})
    assert "use a letter" in error_of(MCPServerConfig, {**STDIO, "name": "9 lives"})
    assert "extra" in error_of(MCPServerConfig, {**STDIO, "comand": "typo"}).lower()
    assert "greater than 0" in error_of(MCPServerConfig, {**STDIO, "call_timeout": 0})


def test_secrets_stay_out_of_reprs_and_messages() -> None:
    config = MCPServerConfig(name="web", url="http://127.0.0.1:1/mcp",
                             headers={"Authorization": "Bearer hunter2"})
    assert "hunter2" not in repr(config) and "hunter2" not in config.describe()


def test_tool_names_are_prefixed_and_safe_for_model_apis() -> None:
    config = MCPServerConfig.model_validate(STDIO)
    assert tool_name(config, "get_current_time") == "time__get_current_time"
    assert tool_name(config, "files/read.v2") == "time__files_read_v2"
    assert len(tool_name(config, "x" * 100)) == 64
    bare = MCPServerConfig.model_validate({**STDIO, "prefix": ""})
    assert tool_name(bare, "get_current_time") == "get_current_time"


def spec(**fields: Any) -> MCPToolSpec:
    return MCPToolSpec.model_validate({"name": "convert", "input_schema": {
        "type": "object", "required": ["amount", "to"],
        "properties": {"amount": {"type": "number", "minimum": 0},
                       "to": {"type": "string", "enum": ["EUR", "USD"]}}}, **fields})


def test_an_mcp_tool_checks_arguments_against_the_servers_schema() -> None:
    tool = MCPTool(MCPServerConfig.model_validate(STDIO), spec())
    assert tool.validate({"amount": 3, "to": "EUR"}).model_dump() == {"amount": 3, "to": "EUR"}
    with pytest.raises(ToolArgumentError) as info:
        tool.validate({"amount": -1, "to": "GBP"})
    message = str(info.value)
    assert "time__convert" in message and "amount: -1 is less than the minimum of 0" in message
    assert "to: 'GBP' is not one of ['EUR', 'USD']" in message
    with pytest.raises(ToolArgumentError, match="'amount' is a required property"):
        tool.validate("{}")
    with pytest.raises(ToolArgumentError, match="not valid JSON"):
        tool.validate("{amount")
    assert tool.spec().parameters["required"] == ["amount", "to"]


def test_an_mcp_tool_pickles_and_reads_the_servers_hints() -> None:
    tool = MCPTool(MCPServerConfig.model_validate(STDIO), spec())
    tool.validate({"amount": 1, "to": "USD"})  # builds (and caches) the schema checker
    copy = pickle.loads(pickle.dumps(tool))
    assert copy.name == tool.name and copy.input_schema == tool.input_schema
    assert copy.side_effects == SideEffects.external and not copy.idempotent  # no hints
    read_only = MCPTool(tool.server, spec(annotations=ToolAnnotations(read_only_hint=True)))
    assert read_only.side_effects == SideEffects.none and read_only.idempotent


def test_a_remote_agent_config_names_what_is_wrong() -> None:
    ok = RemoteAgentConfig(name="researcher", url="http://127.0.0.1:9/researcher/",
                           token_env="TEAM_TOKEN")
    assert ok.url == "http://127.0.0.1:9/researcher"
    assert "not an http:// or https:// URL" in error_of(RemoteAgentConfig,
                                                        {"name": "r", "url": "127.0.0.1:9"})
    assert "not an environment variable name" in error_of(RemoteAgentConfig, {
        "name": "r", "url": "http://h", "token_env": "$TOKEN"})
    assert "use a letter" in error_of(RemoteAgentConfig, {"name": "", "url": "http://h"})


def test_servers_stay_on_loopback_unless_given_a_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "s3cret")
    with pytest.raises(ValueError, match=r"refusing to serve on '0\.0\.0\.0' without a bearer"):
        check_bind("0.0.0.0", None)
