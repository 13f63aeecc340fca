"""ScriptedProvider answering from a scenario, the same rules the local LLM server reads.

The last tests run one scenario through the server (our providers on the real SDKs, over HTTP)
and through ScriptedProvider, and check that both give the same answers and the same errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from llmspell.llm.anthropic_provider import AnthropicProvider
from llmspell.llm.client import LLM, ModelConfig
from llmspell.llm.errors import (
    LLMConnectionError,
    LLMError,
    LLMServerError,
    MalformedResponse,
    RateLimited,
    StreamInterrupted,
)
from llmspell.llm.openai_provider import OpenAIProvider
from llmspell.llm.provider import Provider
from llmspell.llm.registry import ProviderRegistry, ProviderSettings
from llmspell.llm.scenario import Api, Scenario
from llmspell.llm.scripted import ScriptedProvider, prompt_of
from llmspell.llm.server import LocalLLMServer
from llmspell.llm.types import (
    LLMRequest,
    Message,
    OutputSchema,
    Response,
    ToolCall,
    ToolSpec,
)

WEATHER = ToolSpec(name="get_weather", description="Weather in a city", parameters={
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
SUMMARY = OutputSchema(name="summary", schema={
    "type": "object", "additionalProperties": False, "required": ["title", "count"],
    "properties": {"title": {"type": "string"}, "count": {"type": "integer"}}})
SCENARIO: dict[str, Any] = {"rules": [
    {"name": "weather", "match": {"contains": "weather", "tools": ["get_weather"],
                                  "after_tool_result": False},
     "reply": {"text": "Let me check.", "tool_calls": [
         {"id": "call_paris", "name": "get_weather", "arguments": {"city": "Paris"}},
         {"name": "get_weather", "arguments": {"city": "Berlin"}}]}},
    {"match": {"after_tool_result": True}, "reply": "Sunny in Paris, rain in Berlin."},
    {"match": {"structured": True, "contains": "summary"},
     "reply": {"json": {"title": "Weather", "count": 2}}},
    {"match": {"structured": True, "contains": "in words"}, "reply": "no JSON here"},
    {"match": {"contains": "counted"},
     "reply": {"text": "Counted.", "usage": {"input_tokens": 40, "output_tokens": 3,
                                             "cached_tokens": 16,
                                             "cache_creation_tokens": 4}}},
    {"match": {"contains": "once"}, "times": 1, "reply": "the first time"},
    {"match": {"contains": "which api", "api": "messages"}, "reply": "anthropic"},
    {"match": {"contains": "which api"}, "reply": "openai"},
    {"match": {"regex": "^bad args"}, "reply": {"tool_calls": [
        {"name": "get_weather", "arguments": "{not json"}]}},
    {"match": {"contains": "slow down"}, "fault": {"kind": "rate_limit", "retry_after": 0.25}},
    {"match": {"contains": "broken"},
     "fault": {"kind": "server_error", "status": 503, "message": "upstream is down"}},
    {"match": {"contains": "garbled"}, "fault": "malformed"},
    {"match": {"contains": "hang up"}, "fault": "drop"},
]}


def ask(text: str, **options: Any) -> LLMRequest:
    return LLMRequest(model="m", messages=[Message.user(text)], **options)


# --------------------------------------------------------------------------- offline behaviour


async def test_script_items_come_first_then_rules_then_the_echo() -> None:
    provider = ScriptedProvider(["scripted answer"], scenario=SCENARIO)
    assert (await provider.complete(ask("which api?"))).text == "scripted answer"
    assert (await provider.complete(ask("which api?"))).text == "openai"
    assert (await provider.complete(ask("just this"))).text == "echo: just this"
    assert len(provider.requests) == 3


async def test_rules_give_tool_calls_json_and_usage() -> None:
    provider = ScriptedProvider(scenario=SCENARIO)
    calls = await provider.complete(ask("weather in Paris and Berlin?", tools=[WEATHER]))
    assert calls.text == "Let me check." and calls.finish_reason == "tool_calls"
    assert [(c.id, c.arguments) for c in calls.tool_calls] == [
        ("call_paris", {"city": "Paris"}), ("call_000000000001", {"city": "Berlin"})]
    no_tools = await provider.complete(ask("weather?"))  # the rule needs the tool offered
    assert no_tools.text == "echo: weather?"
    follow = LLMRequest(model="m", messages=[
        Message.user("weather?"), calls.message,
        *(Message.tool(c.id, "20C") for c in calls.tool_calls)])
    assert (await provider.complete(follow)).text == "Sunny in Paris, rain in Berlin."
    summary = await provider.complete(ask("a summary please", output_schema=SUMMARY))
    assert summary.parsed() == {"title": "Weather", "count": 2}
    counted = await provider.complete(ask("counted words"))
    assert (counted.usage.input_tokens, counted.usage.output_tokens,
            counted.usage.cached_tokens) == (40, 3, 16)
    assert (await provider.complete(ask("once"))).text == "the first time"
    assert (await provider.complete(ask("once"))).text == "echo: once"  # times: 1 is used up
    bad = await provider.complete(ask("bad args here", tools=[WEATHER]))
    assert bad.tool_calls[0].invalid_arguments == "{not json"


async def test_an_unscripted_structured_request_gets_a_value_that_fits_the_schema() -> None:
    provider = ScriptedProvider()
    answer = await provider.complete(ask("anything", output_schema=SUMMARY))
    jsonschema.validate(answer.parsed(), SUMMARY.schema_)
    assert answer.parsed() == {"title": "echo: anything", "count": 0}


async def test_faults_raise_the_errors_real_providers_raise() -> None:
    provider = ScriptedProvider(scenario=SCENARIO, name="offline")
    with pytest.raises(RateLimited) as limited:
        await provider.complete(ask("slow down"))
    assert limited.value.retry_after == 0.25 and limited.value.status == 429
    with pytest.raises(LLMServerError, match=r"offline:m \(HTTP 503\): upstream is down"):
        await provider.complete(ask("broken"))
    with pytest.raises(MalformedResponse):
        await provider.complete(ask("garbled"))
    with pytest.raises(LLMConnectionError):
        await provider.complete(ask("hang up"))


async def test_the_llm_retries_and_falls_back_on_scripted_faults() -> None:
    scenario = {"rules": [{"match": {"model": "^primary$"}, "times": 1,
                           "fault": {"kind": "rate_limit", "retry_after": 0.01}},
                          {"match": {"model": "^primary$", "contains": "down"},
                           "fault": "server_error"}]}
    events: list[tuple[str, dict[str, Any]]] = []

    async def publish(topic: str, payload: dict[str, Any]) -> None:
        events.append((topic, payload))

    registry = ProviderRegistry()
    registry.register("scripted", ScriptedProvider(scenario=scenario))
    llm = LLM(registry=registry, publish=publish)
    retried = await llm.complete(ModelConfig(model="scripted:primary", base_delay=0.001),
                                 [Message.user("hi")])
    assert retried.text == "echo: hi"
    assert [t for t, _ in events].count("agent.llm.retry") == 1
    fallen = await llm.complete(ModelConfig(model="scripted:primary", fallbacks=["scripted:b"],
                                            max_attempts=2, base_delay=0.001),
                                [Message.user("down again")])
    assert fallen.text == "echo: down again" and fallen.model == "b"
    assert ("agent.llm.fallback", {"from": "scripted:primary", "to": "scripted:b"}) in [
        (t, {k: p[k] for k in ("from", "to")}) for t, p in events if t == "agent.llm.fallback"]


async def test_a_stream_cut_after_text_raises_rather_than_truncates() -> None:
    provider = ScriptedProvider(scenario={"rules": [
        {"match": {"contains": "cut"}, "fault": {"kind": "drop", "after_chunks": 3}}]})
    pieces = []
    with pytest.raises(LLMConnectionError):
        async for chunk in provider.stream(ask("cut me off now")):
            pieces.append(chunk.text)
    assert pieces == ["echo: ", "cut "]  # chat: the role chunk, then two words
    registry = ProviderRegistry()
    registry.register("scripted", provider)
    with pytest.raises(StreamInterrupted):
        async for _ in LLM(registry=registry).stream("scripted:m", [Message.user("cut it")]):
            pass


async def test_scenario_latency_paces_answers_and_chunks() -> None:
    scenario = {"chunk_latency_ms": 1, "rules": [{"latency_ms": 1, "reply": "one two three"}]}
    provider = ScriptedProvider(scenario=scenario)
    chunks = [c async for c in provider.stream(ask("x"))]
    assert [c.text for c in chunks if c.text] == ["one ", "two ", "three"]
    assert chunks[-1].response is not None and chunks[-1].response.text == "one two three"


async def test_the_registry_makes_scripted_from_a_scenario_file(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    registry = ProviderRegistry({"scripted": ProviderSettings(scenario=str(path))})
    llm = LLM(registry=registry)
    assert (await llm.complete("scripted:m", [Message.user("which api?")])).text == "openai"
    plain = LLM(registry=ProviderRegistry())
    assert (await plain.complete("scripted:m", [Message.user("which api?")])).text == \
        "echo: which api?"


def test_prompts_are_what_the_server_sees_for_each_api() -> None:
    call = ToolCall(id="c1", name="get_weather", arguments={"city": "Paris"})
    turns = [Message.system("be brief"), Message.user("weather?"),
             Message.assistant("", [call]), Message.tool("c1", "20C"),
             Message.user("and tomorrow?")]
    request = LLMRequest(model="m", messages=turns, tools=[WEATHER], output_schema=SUMMARY)
    chat, messages = prompt_of(request, "chat"), prompt_of(request, "messages")
    assert chat.last_user == messages.last_user == "and tomorrow?"
    assert not chat.after_tool_result  # the user spoke last
    assert messages.after_tool_result  # Anthropic merges the result and the question
    assert chat.tools == ("get_weather",) and messages.tools == ("get_weather", "summary")
    assert chat.structured and messages.api == "messages"


# --------------------------------------------------------------------------- offline == server


def wire_provider(api: Api, server: LocalLLMServer) -> Provider:
    if api == "messages":
        return AnthropicProvider(name="p", api_key="k", base_url=server.anthropic_base_url)
    return OpenAIProvider(name="p", api=api, api_key="k", base_url=server.openai_base_url)


def view(response: Response) -> tuple[Any, ...]:
    """What a caller acts on; ids only where the scenario named them (the rest are minted)."""
    calls = [(c.id if c.id == "call_paris" else "", c.name, c.arguments, c.invalid_arguments)
             for c in response.tool_calls]
    return (response.text, calls, response.finish_reason, response.usage.output_tokens)


def error_view(error: LLMError) -> tuple[Any, ...]:
    """The class; for the errors an HTTP status carries, the whole message and Retry-After."""
    if isinstance(error, (RateLimited, LLMServerError)):
        return (type(error).__name__, str(error), getattr(error, "retry_after", None))
    return (type(error).__name__,)


async def conversation(provider: Provider) -> list[Any]:
    out: list[Any] = []

    async def complete(request: LLMRequest) -> Response | None:
        try:
            response = await provider.complete(request)
        except LLMError as exc:
            out.append(error_view(exc))
            return None
        out.append(view(response))
        return response

    calls = await complete(ask("weather in Paris and Berlin?", tools=[WEATHER]))
    assert calls is not None
    await complete(LLMRequest(model="m", tools=[WEATHER], messages=[
        Message.user("weather in Paris and Berlin?"), calls.message,
        *(Message.tool(c.id, "20C") for c in calls.tool_calls)]))
    summary = await complete(ask("a summary please", output_schema=SUMMARY))
    assert summary is not None
    jsonschema.validate(summary.parsed(), SUMMARY.schema_)
    out.append(summary.parsed())
    unscripted = await complete(ask("anything structured", output_schema=SUMMARY))
    assert unscripted is not None
    out.append(unscripted.parsed())
    counted = await complete(ask("counted words"))
    assert counted is not None
    out.append(counted.usage)
    for text in ("hello there", "once", "once", "which api?", "slow down", "broken",
                 "garbled", "hang up"):
        await complete(ask(text))
    await complete(ask("bad args here", tools=[WEATHER]))
    for text, schema in (("stream these words", None), ("a summary please", SUMMARY),
                         ("answer in words", SUMMARY), ("garbled", None),
                         ("hang up on me now", None)):
        pieces: list[str] = []
        try:
            async for chunk in provider.stream(ask(text, output_schema=schema)):
                if chunk.text:
                    pieces.append(chunk.text)
                if chunk.response is not None:
                    pieces.append(f"final: {view(chunk.response)}")
        except LLMError as exc:
            pieces.append(type(exc).__name__)
        out.append(pieces)
    return out


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
async def test_offline_and_server_answer_a_scenario_the_same_way(api: Api) -> None:
    scenario = Scenario.parse(SCENARIO)
    with LocalLLMServer(scenario) as server:
        online = await conversation(wire_provider(api, server))
    offline = await conversation(ScriptedProvider(name="p", scenario=scenario, api=api))
    assert offline == online
    # and they are the answers the scenario gives, not two identical mistakes
    assert online[3] == {"title": "Weather", "count": 2}
    assert ("RateLimited", "p:m (HTTP 429): Rate limit reached (injected by the local LLM "
            "server).", 0.25) in online
    assert ("LLMServerError", "p:m (HTTP 503): upstream is down", None) in online
    assert online[-2] == ["MalformedResponse"] and online[-1][-1] == "LLMConnectionError"
