"""The local LLM server, driven by the real openai and anthropic SDKs over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import typer
from typer.testing import CliRunner

from llmspell.cli.llm_server import llm_server
from llmspell.llm.scenario import Prompt, RuleBook, Scenario, ScenarioError
from llmspell.llm.server import LocalLLMServer, example_for, reply_from_sse

REPO = Path(__file__).resolve().parents[2]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather in a city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                "required": ["city"]}}}
RESPONSES_TOOL: Any = {"type": "function", "name": "get_weather",
                                  "parameters": WEATHER_TOOL["function"]["parameters"]}
ANTHROPIC_TOOL: Any = {"name": "get_weather", "description": "Weather in a city",
                                  "input_schema": WEATHER_TOOL["function"]["parameters"]}
TWO_CALLS: dict[str, Any] = {"tool_calls": [
    {"name": "get_weather", "arguments": {"city": "Paris"}},
    {"name": "get_weather", "arguments": {"city": "Berlin"}}]}
SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["title", "count"],
    "properties": {"title": {"type": "string"}, "count": {"type": "integer"}}}


@pytest.fixture
def llm() -> Iterator[LocalLLMServer]:
    with LocalLLMServer() as server:
        yield server


def oai(server: LocalLLMServer, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="test-key",
                         max_retries=retries, timeout=10)


def ant(server: LocalLLMServer, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test-key",
                               max_retries=retries, timeout=10)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- OpenAI chat


def test_chat_echoes_with_estimated_usage_and_records_the_request(llm: LocalLLMServer) -> None:
    reply = oai(llm).chat.completions.create(model="gpt-test", messages=user("hello world"))
    assert reply.choices[0].message.content == "echo: hello world"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 3  # len("hello world") / 4, rounded up
    assert reply.usage.completion_tokens == 5
    (seen,) = llm.requests
    assert (seen.path, seen.api, seen.model, seen.stream) == (
        "/v1/chat/completions", "chat", "gpt-test", False)
    assert seen.auth == "bearer" and seen.headers["authorization"] == "<redacted>"
    assert seen.body["messages"] == user("hello world")
    assert len(seen.body_sha256) == 64 and seen.rule is None and seen.status == 200


def test_chat_stream_sends_deltas_and_a_final_usage_chunk(llm: LocalLLMServer) -> None:
    llm.set_scenario({"rules": [{"reply": {"text": "one two three",
                                           "usage": {"input_tokens": 11, "output_tokens": 3}}}]})
    chunks = list(oai(llm).chat.completions.create(
        model="gpt-test", messages=user("count"), stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (11, 3)
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_single_tool_call(llm: LocalLLMServer) -> None:
    llm.set_scenario({"rules": [{"match": {"tools": ["get_weather"]}, "reply": {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}}]})
    reply = oai(llm).chat.completions.create(model="gpt-test", messages=user("weather?"),
                                             tools=[WEATHER_TOOL])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


@pytest.mark.parametrize("stream", [False, True])
def test_chat_parallel_tool_calls(llm: LocalLLMServer, stream: bool) -> None:
    llm.set_scenario({"rules": [{"reply": TWO_CALLS}]})
    client = oai(llm)
    if stream:
        with client.chat.completions.stream(model="gpt-test", messages=user("weather?"),
                                            tools=[WEATHER_TOOL]) as events:
            completion: Any = events.get_final_completion()
    else:
        completion = client.chat.completions.create(model="gpt-test", messages=user("w?"),
                                                    tools=[WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Berlin"]
    assert len({c.id for c in calls}) == 2


# --------------------------------------------------------------------------- OpenAI responses


def test_responses_text_with_cached_tokens(llm: LocalLLMServer) -> None:
    llm.set_scenario({"rules": [{"match": {"api": "responses"}, "reply": {
        "text": "Hi from responses.",
        "usage": {"input_tokens": 100, "output_tokens": 4, "cached_tokens": 64}}}]})
    response = oai(llm).responses.create(model="gpt-test", input="hello",
                                         instructions="be brief")
    assert response.output_text == "Hi from responses."
    assert response.status == "completed" and response.usage is not None
    assert response.usage.input_tokens == 100 and response.usage.output_tokens == 4
    assert response.usage.input_tokens_details.cached_tokens == 64
    assert llm.requests[0].api == "responses"


def test_responses_stream_sends_the_sdk_events(llm: LocalLLMServer) -> None:
    client = oai(llm)
    events = list(client.responses.create(model="gpt-test", input="stream me", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.output_text.delta",
                 "response.output_item.done"):
        assert kind in kinds
    deltas = "".join(getattr(e, "delta", "") for e in events
                     if e.type == "response.output_text.delta")
    assert deltas == "echo: stream me"
    final = events[-1].response  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.output_tokens > 0
    with client.responses.stream(model="gpt-test", input="helper") as stream:
        assert stream.get_final_response().output_text == "echo: helper"


@pytest.mark.parametrize("stream", [False, True])
def test_responses_function_calls(llm: LocalLLMServer, stream: bool) -> None:
    llm.set_scenario({"rules": [{"match": {"tools": ["get_weather"]}, "reply": TWO_CALLS}]})
    client = oai(llm)
    if stream:
        with client.responses.stream(model="gpt-test", input="weather?",
                                     tools=[RESPONSES_TOOL]) as events:
            kinds = [e.type for e in events]
            response: Any = events.get_final_response()
        assert "response.function_call_arguments.delta" in kinds
    else:
        response = client.responses.create(model="gpt-test", input="weather?",
                                           tools=[RESPONSES_TOOL])
    calls = [item for item in response.output if item.type == "function_call"]
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Berlin"}]
    assert all(c.call_id.startswith("call_") for c in calls)


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_text_with_cache_usage(llm: LocalLLMServer) -> None:
    llm.set_scenario({"rules": [{"match": {"api": "messages"}, "reply": {
        "text": "Bonjour.", "usage": {"input_tokens": 12, "output_tokens": 3,
                                      "cached_tokens": 900, "cache_creation_tokens": 40}}}]})
    message = ant(llm).messages.create(model="claude-test", max_tokens=64,
                                       system="You are terse.", messages=user("hi"))
    assert message.content[0].type == "text" and message.content[0].text == "Bonjour."
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (12, 3)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (900, 40)
    (seen,) = llm.requests
    assert seen.api == "messages" and seen.headers.get("anthropic-version")


def test_anthropic_stream_text_and_usage(llm: LocalLLMServer) -> None:
    llm.set_scenario({"rules": [{"reply": {"text": "a streamed answer",
                                           "usage": {"cached_tokens": 5}}}]})
    with ant(llm).messages.stream(model="claude-test", max_tokens=64,
                                  messages=user("go")) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["a ", "streamed ", "answer"]
    assert final.stop_reason == "end_turn" and final.usage.cache_read_input_tokens == 5
    assert final.usage.input_tokens == 1 and final.usage.output_tokens == 5


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_several_tool_use_blocks(llm: LocalLLMServer, stream: bool) -> None:
    llm.set_scenario({"rules": [{"reply": {"text": "Checking both.", **TWO_CALLS}}]})
    client = ant(llm)
    args: dict[str, Any] = {"model": "claude-test", "max_tokens": 64,
                            "messages": user("weather?"), "tools": [ANTHROPIC_TOOL]}
    if stream:
        with client.messages.stream(**args) as events:
            message: Any = events.get_final_message()
    else:
        message = client.messages.create(**args)
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    uses = message.content[1:]
    assert [b.input for b in uses] == [{"city": "Paris"}, {"city": "Berlin"}]
    assert all(b.id.startswith("toolu_") for b in uses)


# --------------------------------------------------------------------------- structured output


def test_structured_output_on_all_three_apis(llm: LocalLLMServer) -> None:
    value = {"title": "Weather", "count": 2}
    llm.set_scenario({"rules": [{"match": {"structured": True}, "reply": {"json": value}}]})
    chat = oai(llm).chat.completions.create(
        model="gpt-test", messages=user("summarize"),
        response_format={"type": "json_schema", "json_schema": {
            "name": "summary", "schema": SUMMARY_SCHEMA, "strict": True}})
    assert json.loads(chat.choices[0].message.content or "") == value
    response = oai(llm).responses.create(
        model="gpt-test", input="summarize",
        text={"format": {"type": "json_schema", "name": "summary", "schema": SUMMARY_SCHEMA}})
    assert json.loads(response.output_text) == value
    forced: Any = {"name": "summary", "input_schema": SUMMARY_SCHEMA}
    message = ant(llm).messages.create(model="claude-test", max_tokens=64,
                                       messages=user("summarize"), tools=[forced],
                                       tool_choice={"type": "tool", "name": "summary"})
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "summary" and block.input == value


def test_unscripted_structured_output_still_fits_the_schema(llm: LocalLLMServer) -> None:
    chat = oai(llm).chat.completions.create(
        model="gpt-test", messages=user("x"),
        response_format={"type": "json_schema", "json_schema": {
            "name": "summary", "schema": SUMMARY_SCHEMA}})
    assert json.loads(chat.choices[0].message.content or "") == {"title": "echo: x", "count": 0}
    schema = {"$defs": {"Item": {"type": "object", "properties": {"n": {"type": "number"}}}},
              "type": "object", "properties": {
                  "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1},
                  "kind": {"enum": ["a", "b"]}, "maybe": {"anyOf": [{"type": "null"},
                                                                    {"type": "boolean"}]}}}
    assert example_for(schema, "t") == {"items": [{"n": 0}], "kind": "a", "maybe": False}


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_rate_limit_retry_waits_at_least_retry_after(llm: LocalLLMServer, sdk: str) -> None:
    llm.set_scenario({"rules": [{"times": 1,
                                 "fault": {"kind": "rate_limit", "retry_after": 0.4}}]})
    if sdk == "openai":
        text = oai(llm, retries=2).chat.completions.create(
            model="gpt-test", messages=user("again")).choices[0].message.content
    else:
        block = ant(llm, retries=2).messages.create(
            model="claude-test", max_tokens=16, messages=user("again")).content[0]
        text = block.text if block.type == "text" else None
    assert text == "echo: again"
    first, second = llm.requests
    assert (first.status, first.fault, second.status, second.fault) == (429, "rate_limit",
                                                                          200, None)
    assert second.monotonic - first.monotonic >= 0.4
    assert second.headers.get("x-stainless-retry-count") == "1"


def test_rate_limit_body_and_headers_are_the_providers(llm: LocalLLMServer) -> None:
    llm.set_scenario({"rules": [{"fault": {"kind": "rate_limit", "retry_after": 2}}]})
    with pytest.raises(openai.RateLimitError) as oai_error:
        oai(llm).chat.completions.create(model="gpt-test", messages=user("x"))
    assert oai_error.value.code == "rate_limit_exceeded"
    assert oai_error.value.response.headers["retry-after"] == "2"
    with pytest.raises(anthropic.RateLimitError) as ant_error:
        ant(llm).messages.create(model="claude-test", max_tokens=8, messages=user("x"))
    assert ant_error.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_server_error_then_success_on_retry(llm: LocalLLMServer, sdk: str) -> None:
    llm.set_scenario({"rules": [{"times": 1, "fault": "server_error"}]})
    if sdk == "openai":
        oai(llm, retries=1).chat.completions.create(model="gpt-test", messages=user("x"))
    else:
        ant(llm, retries=1).messages.create(model="claude-test", max_tokens=8,
                                            messages=user("x"))
    assert [r.status for r in llm.requests] == [500, 200]
    llm.set_scenario({"rules": [{"fault": {"kind": "server_error", "status": 503}}]})
    with pytest.raises(openai.InternalServerError):
        oai(llm).chat.completions.create(model="gpt-test", messages=user("x"))


def test_dropped_chat_stream_raises_instead_of_truncating(llm: LocalLLMServer) -> None:
    llm.set_scenario({"rules": [{"fault": {"kind": "drop", "after_chunks": 3}}]})
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in oai(llm).chat.completions.create(
                model="gpt-test", messages=user("a long answer here"), stream=True):
            got.append(chunk.choices[0].delta.content or "")
    assert got and "".join(got) != "echo: a long answer here"
    assert llm.requests[0].fault == "drop"


def test_dropped_responses_and_anthropic_streams_raise(llm: LocalLLMServer) -> None:
    llm.set_scenario({"rules": [{"fault": {"kind": "drop", "after_chunks": 4}}]})
    with pytest.raises(openai.APIConnectionError), oai(llm).responses.stream(
            model="gpt-test", input="some words to say") as events:
        events.get_final_response()
    with pytest.raises((anthropic.APIConnectionError, httpx2.HTTPError)), ant(
            llm).messages.stream(model="claude-test", max_tokens=64,
                                 messages=user("some words")) as stream:
        stream.get_final_message()


def test_dropped_connection_without_response(llm: LocalLLMServer) -> None:
    llm.set_scenario({"rules": [{"fault": "drop"}]})
    with pytest.raises(openai.APIConnectionError):
        oai(llm).chat.completions.create(model="gpt-test", messages=user("x"))
    llm.set_scenario({"rules": [{"times": 1, "fault": "drop"}]})
    llm.clear_requests()
    reply = oai(llm, retries=1).chat.completions.create(model="gpt-test", messages=user("x"))
    assert reply.choices[0].message.content == "echo: x"
    assert [r.fault for r in llm.requests] == ["drop", None]


def test_malformed_output_makes_the_sdks_raise(llm: LocalLLMServer) -> None:
    llm.set_scenario({"rules": [{"fault": "malformed"}]})
    with pytest.raises((json.JSONDecodeError, openai.APIResponseValidationError)):
        oai(llm).chat.completions.create(model="gpt-test", messages=user("x"))
    with pytest.raises(json.JSONDecodeError):
        list(oai(llm).chat.completions.create(model="gpt-test", messages=user("x"),
                                              stream=True))
    with pytest.raises(json.JSONDecodeError), ant(llm).messages.stream(
            model="claude-test", max_tokens=8, messages=user("x")) as stream:
        stream.get_final_message()
    with pytest.raises((json.JSONDecodeError, anthropic.APIResponseValidationError)):
        ant(llm).messages.create(model="claude-test", max_tokens=8, messages=user("x"))


def test_missing_api_key_is_refused_like_the_real_apis(llm: LocalLLMServer) -> None:
    body = {"model": "m", "messages": user("x")}
    response = httpx2.post(f"{llm.openai_base_url}/chat/completions", json=body)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    response = httpx2.post(f"{llm.url}/v1/messages", json=body, headers={"x-api-key": "k"})
    assert response.status_code == 200 and llm.requests[-1].auth == "x-api-key"


# --------------------------------------------------------------------------- scenarios


def test_times_exhaustion_falls_through_to_the_next_rule(llm: LocalLLMServer) -> None:
    llm.set_scenario({"rules": [
        {"name": "first", "match": {"contains": "hi"}, "times": 2, "reply": "first"},
        {"name": "second", "match": {"regex": "^h"}, "reply": "second"}]})
    client = oai(llm)
    answers = [client.chat.completions.create(model="m", messages=user("hi")).choices[0]
               .message.content for _ in range(3)]
    assert answers == ["first", "first", "second"]
    assert [r.rule for r in llm.requests] == ["first", "first", "second"]


def test_rules_match_on_tools_model_api_and_tool_results() -> None:
    book = RuleBook(Scenario.parse({"rules": [
        {"name": "tool", "match": {"tools": ["get_weather"], "after_tool_result": False},
         "reply": "t"},
        {"name": "after", "match": {"after_tool_result": True}, "reply": "a"},
        {"name": "claude", "match": {"model": "^claude", "api": "messages"}, "reply": "c"},
    ]}))

    def pick(**kw: Any) -> str | None:
        hit = book.pick(Prompt(**{"api": "chat", "model": "gpt", "last_user": "q", **kw}))
        return hit.name if hit else None

    assert pick(tools=("get_weather", "other")) == "tool"
    assert pick(tools=("get_weather",), after_tool_result=True) == "after"
    assert pick(api="messages", model="claude-x") == "claude"
    assert pick(api="chat", model="claude-x") is None


def test_tool_result_turn_keeps_the_user_question_and_matches_after_tool(
        llm: LocalLLMServer) -> None:
    llm.set_scenario({"rules": [
        {"match": {"equals": "weather?", "after_tool_result": True}, "reply": "sunny"}]})
    messages: list[Any] = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                           "name": "get_weather", "input": {"city": "P"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "20C"}]}]
    message = ant(llm).messages.create(model="claude-test", max_tokens=8, messages=messages,
                                       tools=[ANTHROPIC_TOOL])
    assert message.content[0].type == "text" and message.content[0].text == "sunny"


def test_scenario_errors_name_the_file_and_the_field_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("rules:\n"
                    "  - reply: ok\n"
                    "  - match: {contians: x, regex: '('}\n"
                    "    reply: {tool_calls: [{arguments: {}}]}\n"
                    "  - reply: ok\n"
                    "    fault: drop\n"
                    "  - fault: {kind: explode}\n")
    with pytest.raises(ScenarioError) as error:
        Scenario.load(path)
    text = str(error.value)
    assert str(path) in text
    for where in ("rules[1].match.contians", "rules[1].match.regex",
                  "rules[1].reply.tool_calls[0].name", "rules[2]: ", "rules[3].fault.kind"):
        assert where in text, (where, text)
    path.write_text("rules: [unclosed\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml"):
        Scenario.load(path)
    with pytest.raises(ScenarioError, match=r"no-such\.yaml"):
        LocalLLMServer(tmp_path / "no-such.yaml")


def test_example_scenario_loads_and_answers() -> None:
    scenario = Scenario.load(REPO / "examples" / "scenarios" / "demo.yaml")
    assert [r.name for r in scenario.rules][:2] == ["ask-weather", "answer-weather"]
    with LocalLLMServer(scenario, latency_ms=1) as server:
        reply = oai(server).chat.completions.create(model="m", messages=user("weather?"),
                                                    tools=[WEATHER_TOOL])
        assert len(reply.choices[0].message.tool_calls or []) == 2
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        assert reply.usage.prompt_tokens_details.cached_tokens == 64


def test_latency_before_responses_and_between_chunks() -> None:
    scenario = {"latency_ms": 150, "chunk_latency_ms": 40,
                "rules": [{"match": {"contains": "slow"}, "latency_ms": 300, "reply": "a b c"}]}
    with LocalLLMServer(scenario) as server:
        client = oai(server)
        start = time.monotonic()
        client.chat.completions.create(model="m", messages=user("x"))
        assert time.monotonic() - start >= 0.15
        start = time.monotonic()
        client.chat.completions.create(model="m", messages=user("slow"))
        assert time.monotonic() - start >= 0.3
        start = time.monotonic()
        chunks = list(client.chat.completions.create(model="m", messages=user("x y"),
                                                     stream=True))
        # 5 chunks and [DONE]: the response latency, then 5 gaps between the 6 frames
        assert len(chunks) == 5 and time.monotonic() - start >= 0.15 + 5 * 0.04


def test_an_answer_never_comes_before_its_latency_even_under_load() -> None:
    """The latency counts from each request's arrival (the record's `monotonic`, this process's
    clock: the server runs in a thread here), for every one of many at once."""
    with LocalLLMServer({"latency_ms": 30, "rules": [{"reply": "ok"}]}) as server:
        client = oai(server)

        def one(i: int) -> float:
            client.chat.completions.create(model="m", messages=user(f"item {i}"))
            return time.monotonic()

        with ThreadPoolExecutor(8) as pool:
            answered = list(pool.map(one, range(24)))
        arrived = {r.body["messages"][0]["content"]: r.monotonic for r in server.requests}
        assert len(arrived) == 24
        for i, at in enumerate(answered):
            assert at >= arrived[f"item {i}"] + 0.03


def test_the_record_keeps_the_latest_requests_and_says_how_many_it_let_go() -> None:
    with LocalLLMServer({"rules": [{"reply": "ok"}]}, keep_requests=3) as server:
        client = oai(server)
        for i in range(5):
            client.chat.completions.create(model=f"model-{i}", messages=user(f"item {i}"))
        assert [r.seq for r in server.requests] == [3, 4, 5]
        assert server.requests_dropped == 2
        seen = httpx2.get(f"{server.url}/_llmspell/requests")
        assert [r["seq"] for r in seen.json()] == [3, 4, 5]
        assert seen.headers["x-llmspell-requests-dropped"] == "2"
        # /v1/models still names every model asked for, not only the kept requests'
        assert {f"model-{i}" for i in range(5)} <= {m.id for m in client.models.list().data}
        server.clear_requests()
        assert server.requests == [] and server.requests_dropped == 5
    with pytest.raises(ValueError, match="keep must be 0 or more"):
        LocalLLMServer(keep_requests=-1)


def test_requests_over_http_and_scenario_swaps(llm: LocalLLMServer) -> None:
    oai(llm).chat.completions.create(model="m", messages=user("one"))
    seen = httpx2.get(f"{llm.url}/_llmspell/requests").json()
    assert [r["body"]["messages"][0]["content"] for r in seen] == ["one"]
    assert httpx2.delete(f"{llm.url}/_llmspell/requests").status_code == 200
    assert llm.requests == []
    put = httpx2.put(f"{llm.url}/_llmspell/scenario", json={"rules": [{"reply": "swapped"}]})
    assert put.status_code == 200
    reply = oai(llm).chat.completions.create(model="m", messages=user("two"))
    assert reply.choices[0].message.content == "swapped"
    bad = httpx2.put(f"{llm.url}/_llmspell/scenario", json={"rules": [{"reply": 3}]})
    assert bad.status_code == 400 and "rules[0].reply" in bad.json()["error"]
    models = oai(llm).models.list()
    assert "m" in [m.id for m in models.data]


async def test_async_context_manager_and_async_clients() -> None:
    async with LocalLLMServer({"rules": [{"reply": "async"}]}) as server:
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0)
        reply = await client.chat.completions.create(model="m", messages=user("x"))
        assert reply.choices[0].message.content == "async"
        aclient = anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="k",
                                           max_retries=0)
        async with aclient.messages.stream(model="c", max_tokens=8,
                                           messages=user("x")) as stream:
            assert (await stream.get_final_text()) == "async"
    assert server._thread is None


# --------------------------------------------------------------------------- record and replay


def _conversation(server: LocalLLMServer) -> list[Any]:
    """One run over all three APIs, streamed and not, reduced to what a caller would see."""
    client, aclient = oai(server), ant(server)
    out: list[Any] = []
    chat = client.chat.completions.create(model="gpt-test", messages=user("hello"))
    out.append((chat.choices[0].message.content, chat.usage and chat.usage.prompt_tokens))
    with client.chat.completions.stream(model="gpt-test", messages=user("weather?"),
                                        tools=[WEATHER_TOOL],
                                        stream_options={"include_usage": True}) as events:
        final = events.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    out.append([(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls])
    out.append(final.usage and final.usage.completion_tokens)
    follow = [*user("weather?"), {"role": "assistant", "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.function.name,
                                                      "arguments": c.function.arguments}}
        for c in calls]}, *({"role": "tool", "tool_call_id": c.id, "content": "20C"}
                            for c in calls)]
    again = client.chat.completions.create(model="gpt-test", messages=follow)
    out.append(again.choices[0].message.content)
    response = client.responses.create(model="gpt-test", input="weather?",
                                       tools=[RESPONSES_TOOL])
    out.append([(i.type, getattr(i, "arguments", None)) for i in response.output])
    with aclient.messages.stream(model="claude-test", max_tokens=64,
                                 messages=user("hello")) as stream:
        message = stream.get_final_message()
    out.append((stream_text(message), message.usage.cache_read_input_tokens,
                message.usage.input_tokens, message.usage.output_tokens))
    return out


def stream_text(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def test_record_then_replay_gives_the_same_answers(tmp_path: Path) -> None:
    upstream_rules = {"rules": [
        {"match": {"contains": "weather", "after_tool_result": False}, "reply": TWO_CALLS},
        {"match": {"after_tool_result": True}, "reply": "Sunny and rainy."},
        {"match": {"api": "messages"},
         "reply": {"text": "Hello from Claude.", "usage": {"cached_tokens": 7}}},
        {"reply": {"text": "Hello.", "usage": {"input_tokens": 42}}}]}
    path = tmp_path / "recorded.yaml"
    with LocalLLMServer(upstream_rules) as upstream, LocalLLMServer(
            record=path, upstream=upstream.url) as recorder:
        recorded = _conversation(recorder)
        assert len(upstream.requests) == len(recorder.requests) == 5
        assert upstream.requests[0].auth == "bearer"  # the client's key went through
    assert recorded[0] == ("Hello.", 42)
    assert recorded[3] == "Sunny and rainy."
    assert recorded[5] == ("Hello from Claude.", 7, 2, 5)  # "hello": 5 chars, 2 tokens
    scenario = Scenario.load(path)
    assert len(scenario.rules) == 5 and scenario.rules[0].match.equals == "hello"
    with LocalLLMServer(path) as replay:
        assert _conversation(replay) == recorded
        assert [r.rule for r in replay.requests] == [f"recorded[{i}]" for i in range(5)]


def test_record_mode_parses_streams_it_relays() -> None:
    raw = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
           b'{"input_tokens":3,"output_tokens":1}}}\n\n'
           b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
           b'"content_block":{"type":"tool_use","id":"toolu_9","name":"f","input":{}}}\n\n'
           b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
           b'"delta":{"type":"input_json_delta","partial_json":"{\\"a\\": 1}"}}\n\n'
           b'event: message_delta\ndata: {"type":"message_delta","delta":{},'
           b'"usage":{"output_tokens":9}}\n\n')
    reply = reply_from_sse("messages", raw)
    assert reply is not None and reply.text is None
    (call,) = reply.tool_calls
    assert (call.id, call.name, call.arguments) == ("toolu_9", "f", {"a": 1})
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (3, 9)


# --------------------------------------------------------------------------- the command


def test_cli_refuses_half_a_record_mode_and_bad_scenarios(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(llm_server)
    runner = CliRunner()
    result = runner.invoke(app, ["--record", str(tmp_path / "out.yaml")])
    assert result.exit_code == 2 and "--upstream" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{reply: {}}]\n")
    result = runner.invoke(app, ["--scenario", str(bad)])
    assert result.exit_code == 2 and "rules[0].reply" in result.output
    result = runner.invoke(app, ["--keep-requests", "-1"])
    assert result.exit_code == 2 and "--keep-requests" in result.output
