"""The paths of a model call through `LLM`, our providers and the real SDKs, against the local LLM
server over HTTP: fallback after a provider fails for good, a retried 500, malformed output,
structured output on each API, and a recorded run replayed. Nothing of ours is mocked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from llmspell.llm.anthropic_provider import AnthropicProvider
from llmspell.llm.client import LLM, ModelConfig
from llmspell.llm.errors import AllModelsFailed, LLMError, MalformedResponse
from llmspell.llm.openai_provider import OpenAIProvider
from llmspell.llm.registry import ProviderRegistry
from llmspell.llm.scenario import Scenario
from llmspell.llm.server import LocalLLMServer
from llmspell.llm.types import Message, OutputSchema, Response, ToolSpec

MODELS = ["chat:m", "resp:m", "claude:m"]
PATHS = {"chat": "/v1/chat/completions", "resp": "/v1/responses", "claude": "/v1/messages"}
WEATHER = ToolSpec(name="get_weather", description="Weather in a city", parameters={
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
SUMMARY = OutputSchema(name="summary", schema={
    "type": "object", "additionalProperties": False, "required": ["title", "cities", "count"],
    "properties": {"title": {"type": "string"}, "count": {"type": "integer"},
                   "cities": {"type": "array", "items": {"type": "string"}}}})
Events = list[tuple[str, dict[str, Any]]]


def llm_for(server: LocalLLMServer) -> tuple[LLM, Events]:
    """An LLM whose three providers reach `server` through the real SDKs, and its events."""
    events: Events = []

    async def publish(topic: str, payload: dict[str, Any]) -> None:
        events.append((topic, payload))

    registry = ProviderRegistry()
    registry.register("chat", OpenAIProvider(name="chat", api="chat", api_key="k",
                                             base_url=server.openai_base_url))
    registry.register("resp", OpenAIProvider(name="resp", api="responses", api_key="k",
                                             base_url=server.openai_base_url))
    registry.register("claude", AnthropicProvider(name="claude", api_key="k",
                                                  base_url=server.anthropic_base_url))
    return LLM(registry=registry, publish=publish), events


@pytest.fixture(scope="module")
def shared_server() -> Iterator[LocalLLMServer]:
    with LocalLLMServer() as server:
        yield server


@pytest.fixture
def server(shared_server: LocalLLMServer) -> LocalLLMServer:
    """The module's server with no rules and an empty record (each test sets its scenario)."""
    shared_server.set_scenario(None)
    shared_server.clear_requests()
    return shared_server


def quick(model: str, **fields: Any) -> ModelConfig:
    return ModelConfig(model=model, base_delay=0.001, **fields)


def topics(events: Events) -> list[str]:
    return [t for t, _ in events]


# --------------------------------------------------------------------------- fallback, retry


async def test_a_fallback_is_taken_after_the_first_model_fails_for_good(
        server: LocalLLMServer) -> None:
    server.set_scenario({"rules": [{"match": {"model": "^model-a$"}, "fault": "server_error"}]})
    llm, events = llm_for(server)
    config = quick("resp:model-a", fallbacks=["claude:model-b"], max_attempts=2)
    answer = await llm.complete(config, [Message.user("who answers?")])
    assert (answer.text, answer.provider, answer.model) == (
        "echo: who answers?", "claude", "model-b")
    seen = [(r.path, r.model, r.status) for r in server.requests]
    assert seen == [("/v1/responses", "model-a", 500), ("/v1/responses", "model-a", 500),
                    ("/v1/messages", "model-b", 200)]
    assert topics(events).count("agent.llm.retry") == 1
    (fallback,) = [p for t, p in events if t == "agent.llm.fallback"]
    assert (fallback["from"], fallback["to"]) == ("resp:model-a", "claude:model-b")
    assert "resp:model-a (HTTP 500)" in fallback["error"]
    last = [p for t, p in events if t == "agent.llm.response"][-1]
    assert last["model"] == "claude:model-b"

    server.clear_requests()
    chunks = [c async for c in llm.stream(config, [Message.user("and streamed?")])]
    assert "".join(c.text for c in chunks) == "echo: and streamed?"
    assert [(r.model, r.status) for r in server.requests] == [
        ("model-a", 500), ("model-a", 500), ("model-b", 200)]


@pytest.mark.parametrize("model", MODELS)
async def test_a_500_once_is_retried_and_the_answer_is_right(model: str,
                                                             server: LocalLLMServer) -> None:
    server.set_scenario({"rules": [{"times": 1, "fault": "server_error"}]})
    llm, events = llm_for(server)
    answer = await llm.complete(quick(model), [Message.user("try again")])
    assert answer.text == "echo: try again" and answer.usage.output_tokens > 0
    requests = server.requests
    assert [r.status for r in requests] == [500, 200]
    assert {r.path for r in requests} == {PATHS[model.split(":")[0]]}
    assert requests[0].body_sha256 == requests[1].body_sha256  # the same request again
    (retry,) = [p for t, p in events if t == "agent.llm.retry"]
    assert retry["status"] == 500 and retry["attempt"] == 1
    assert topics(events).count("agent.llm.response") == 1


# --------------------------------------------------------------------------- malformed output


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", MODELS)
async def test_malformed_output_is_a_clear_error_not_a_crash(model: str, stream: bool,
                                                             server: LocalLLMServer) -> None:
    server.set_scenario({"rules": [{"fault": "malformed"}]})
    llm, _ = llm_for(server)
    config = quick(model, max_attempts=2)
    text: list[str] = []
    with pytest.raises(LLMError) as info:
        if stream:
            async for chunk in llm.stream(config, [Message.user("say something")]):
                text.append(chunk.text)
        else:
            await llm.complete(config, [Message.user("say something")])
    assert "".join(text) == ""  # nothing given that could pass for an answer
    assert isinstance(info.value, AllModelsFailed)
    (cause,) = info.value.causes
    provider, name = model.split(":")
    assert isinstance(cause, MalformedResponse) and cause.retryable
    assert (cause.provider, cause.model) == (provider, name)
    assert f"{model}: malformed response" in str(info.value)
    assert [r.fault for r in server.requests] == ["malformed", "malformed"]  # retried once


# --------------------------------------------------------------------------- structured output


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", MODELS)
async def test_structured_output_parses_and_validates_on_each_api(
        model: str, stream: bool, server: LocalLLMServer) -> None:
    value = {"title": "Weather", "cities": ["Paris", "Berlin"], "count": 2}
    server.set_scenario({"rules": [{"match": {"structured": True, "contains": "summarize"},
                                    "reply": {"json": value}}]})
    llm, _ = llm_for(server)

    async def ask(text: str) -> Response:
        messages = [Message.user(text)]
        if not stream:
            return await llm.complete(model, messages, output_schema=SUMMARY)
        chunks = [c async for c in llm.stream(model, messages, output_schema=SUMMARY)]
        assert chunks[-1].response is not None
        return chunks[-1].response

    answer = await ask("summarize the weather")
    assert answer.parsed() == value and answer.finish_reason == "stop"
    assert answer.tool_calls == []
    jsonschema.validate(answer.parsed(), SUMMARY.schema_)
    unscripted = await ask("anything at all")  # no rule: the server's example of the schema
    jsonschema.validate(unscripted.parsed(), SUMMARY.schema_)
    body = server.requests[0].body
    if model.startswith("chat"):
        assert body["response_format"]["json_schema"]["schema"] == SUMMARY.schema_
    elif model.startswith("resp"):
        assert body["text"]["format"]["schema"] == SUMMARY.schema_
    else:
        assert body["tool_choice"] == {"type": "tool", "name": "summary"}


# --------------------------------------------------------------------------- record and replay


UPSTREAM = {"rules": [
    {"match": {"contains": "weather", "after_tool_result": False}, "reply": {
        "text": "Checking both.", "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_weather", "arguments": {"city": "Berlin"}}],
        "usage": {"input_tokens": 31, "output_tokens": 12}}},
    {"match": {"after_tool_result": True}, "reply": "Sunny in Paris, rain in Berlin."},
    {"match": {"api": "messages"}, "reply": {"text": "Hello from Claude.",
                                             "usage": {"cached_tokens": 7}}},
    {"reply": {"text": "Hello.", "usage": {"input_tokens": 42}}},
]}


async def conversation(llm: LLM) -> list[Any]:
    """Text and tool calls over the three APIs, streamed and not, as a caller sees them."""
    out: list[Any] = []

    def seen(r: Response) -> tuple[Any, ...]:
        return (r.text, [(c.id, c.name, c.arguments) for c in r.tool_calls], r.finish_reason,
                r.usage.input_tokens, r.usage.output_tokens, r.usage.cached_tokens)

    for model in MODELS:
        out.append(seen(await llm.complete(model, [Message.user("hello")])))
        question = [Message.user(f"weather in Paris and Berlin, {model}?")]
        chunks = [c async for c in llm.stream(model, question, tools=[WEATHER])]
        calls = chunks[-1].response
        assert calls is not None and len(calls.tool_calls) == 2
        out.append(seen(calls))
        out.append([c.text for c in chunks if c.text])
        follow = [*question, calls.message,
                  *(Message.tool(c.id, f"{c.arguments['city']}: 20C") for c in calls.tool_calls)]
        out.append(seen(await llm.complete(model, follow, tools=[WEATHER])))
    return out


async def test_a_recorded_run_replays_to_the_same_answers(tmp_path: Path) -> None:
    path = tmp_path / "recorded.yaml"
    with LocalLLMServer(UPSTREAM) as upstream, LocalLLMServer(
            record=path, upstream=upstream.url) as recorder:
        recorded = await conversation(llm_for(recorder)[0])
        assert len(upstream.requests) == len(recorder.requests) == 9
        assert {r.rule for r in recorder.requests} == {"record"}
    assert recorded[0][0] == "Hello." and recorded[0][3] == 42
    assert recorded[1][1][0][1:] == ("get_weather", {"city": "Paris"})
    assert recorded[3][0] == "Sunny in Paris, rain in Berlin."
    assert recorded[8][0] == "Hello from Claude." and recorded[8][5] == 7
    assert len(Scenario.load(path).rules) == 9
    with LocalLLMServer(path) as replay:
        assert await conversation(llm_for(replay)[0]) == recorded
        assert [r.rule for r in replay.requests] == [f"recorded[{i}]" for i in range(9)]
        assert not any(r.rule is None for r in replay.requests)  # nothing fell to the echo
